"""int8 BlazeFace: static QDQ quantization calibrated on the run's training faces, judged by AP@0.5
on its validation split before and after; refused (nothing written) above max_drop AP points."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import DatasetError, TransferlabError
from ..deploy.quantize import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_CALIBRATION_METHOD, DEFAULT_MAX_DROP,
                               ImageCalibrationReader, check_options, images_per_second, int8_model, publish,
                               static_float_model)
from ..deploy.runtime import cpu_session, weights_fingerprint
from ..runs.folder import read_meta
from .detector import Detector
from .evaluate import evaluate_detector
from .image import letterbox, to_tensor


class OnnxHeads(nn.Module):
    """BlazeFace's raw heads run by ONNX Runtime, in the network's place inside a Detector."""

    def __init__(self, path, config):
        super().__init__()
        self.config = config
        self.session = cpu_session(path)
        self._device = nn.Parameter(torch.zeros(0), requires_grad=False)  # detect_arrays asks for a device

    def forward(self, x: torch.Tensor):
        """(regressors, logits) for a [-1, 1] NCHW batch."""
        reg, logits = self.session.run(["regressors", "logits"], {"image": x.contiguous().numpy()})
        return torch.from_numpy(reg), torch.from_numpy(logits)


def head_nodes(graph) -> set[str]:
    """The score and box heads and everything after them (reshapes, concatenations), kept float:
    box offsets in pixels and logits share nothing with the backbone's activation ranges."""
    heads = {n.name for n in graph.graph.node if n.op_type == "Conv"
             and any(k in n.name for k in ("classifier", "regressor"))}
    produced = {o for n in graph.graph.node if n.name in heads for o in n.output}
    changed = True
    while changed:
        changed = False
        for n in graph.graph.node:
            if n.name not in heads and any(i in produced for i in n.input):
                heads.add(n.name)
                produced.update(n.output)
                changed = True
    return heads


def face_split(detector: Detector, data=None, fmt: str = "auto"):
    """(training samples, validation FaceDataset, source) of a detector run's own data (model.json
    'data', split as training split it), or of `data` split the same way."""
    from .data import FaceDataset, load_faces
    from .training import split_dataset

    meta = read_meta(detector.source, kind="detector") if Path(detector.source).is_dir() else {}
    source = data or meta.get("data", {}).get("source")
    if not source:
        raise TransferlabError("quantizing a pretrained detector needs annotated faces: give --data PATH")
    if not Path(source).exists():
        raise DatasetError(f"the run's training data {source} is not on this machine; give --data PATH")
    dataset = load_faces(source, fmt if data else meta.get("data", {}).get("format", fmt))
    cfg = meta.get("config", {})
    train, val = split_dataset(dataset, cfg.get("val_split", 0.2), cfg.get("seed", 0))
    if not val:
        raise DatasetError(f"{source}: too few images for a validation split to measure AP on")
    return train, FaceDataset(val, dataset.skipped, dataset.format), str(source)


def quantize_detector(detector: Detector, out=None, max_drop: float = DEFAULT_MAX_DROP,
                      calibration: int = DEFAULT_CALIBRATION_IMAGES,
                      calibration_method: str = DEFAULT_CALIBRATION_METHOD, data=None, format: str = "auto",
                      speed_seconds: float = 1.0, sidecar: dict | None = None) -> tuple[Path, Path, dict]:
    """int8 export of a detector with AP@0.5 before/after; raises (writing nothing) above max_drop
    AP points. Returns (model path, sidecar path, report)."""
    check_options("int8", calibration_method, max_drop, calibration)
    train, val_set, source = face_split(detector, data, format)
    size = detector.input_size
    model = detector.model.eval().cpu()
    path = Path(out) if out else (Path(detector.source) / "model-int8.onnx" if Path(detector.source).is_dir()
                                  else Path(f"{detector.source}-int8.onnx"))
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".quantize-", dir=path.parent))
    try:
        float_path, quant_path = work / "float.onnx", work / "quantized.onnx"
        static_float_model(model, size, float_path, outputs=("regressors", "logits"))
        picks = [s.image for s in np.random.default_rng(0).permutation(np.array(train, dtype=object))[:calibration]]
        reader = ImageCalibrationReader(picks, lambda img: to_tensor(letterbox(np.asarray(img), size)[0]))
        started = time.perf_counter()
        if not reader.used:
            raise DatasetError("no calibration image could be read: "
                               + "; ".join(f"{p}: {why}" for p, why in reader.skipped[:3]))
        int8_model(float_path, quant_path, reader, calibration_method, keep_float=head_nodes)
        convert_s = time.perf_counter() - started
        x = torch.stack([to_tensor(letterbox(np.zeros((size, size, 3), np.uint8), size)[0])]).numpy()
        numbers = {}
        for name, p in (("float", float_path), ("quantized", quant_path)):
            heads = OnnxHeads(p, model.config)
            curve = evaluate_detector(Detector(heads, detector.score_threshold, detector.iou_threshold), val_set)
            numbers[name] = {"ap50": curve.ap, "size_bytes": p.stat().st_size,
                             "images_per_s": {str(b): round(images_per_second(heads.session, x, b, speed_seconds), 1)
                                              for b in (1, 32)}}
        drop = round(100 * (numbers["float"]["ap50"] - numbers["quantized"]["ap50"]), 4)
        report = {
            "mode": "int8", "model": path.name, "metric": "ap50",
            "calibration": {"method": calibration_method, "images": reader.used,
                            "skipped": [list(s) for s in reader.skipped],
                            "scheme": "QDQ, per-channel int8 weights, uint8 activations", "seconds": round(convert_s, 2)},
            "validation": {"source": source, "images": len(val_set.samples), "faces": val_set.num_faces},
            **numbers, "drop_points": drop, "max_drop_points": max_drop,
            "weights_sha256": weights_fingerprint(model), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if drop > max_drop:
            raise TransferlabError(
                f"int8 quantization would cost {drop:.2f} AP@0.5 points (float {numbers['float']['ap50']:.4f}, int8 "
                f"{numbers['quantized']['ap50']:.4f} on {len(val_set.samples)} validation images), above --max-drop "
                f"{max_drop:g}; nothing was written (raise --max-drop, or try another --calibration-method)")
        sidecar_path, report = publish(work, quant_path, path, sidecar, "int8", report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path, sidecar_path, report
