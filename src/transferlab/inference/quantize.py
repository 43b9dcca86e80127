"""Quantized ONNX exports (int8 for CPUs and phones, fp16 for GPUs), measured before they are kept.

int8 is ONNX Runtime's static quantization: QDQ format, per-channel int8 weights, uint8 activations
(U8S8, the pair x86 VNNI kernels run fastest: measured 1.7-2x float at batch 8-32 on lite0, while
S8S8 ran no faster than float), calibrated on a sample of the run's own training images read
through the run's preprocessing. fp16 is onnxconverter-common's conversion with float inputs and
outputs kept; the shape arithmetic of TF-style "same" padding stays float32.

Before anything is written, the float and the quantized model predict the run's validation split:
accuracy of both, top-1 agreement, size and images/s go to RUN/quantization.json and the sidecar.
An accuracy drop above `max_drop` points raises with the numbers and leaves no file behind.
"""
from __future__ import annotations

import contextlib
import io
import logging
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DatasetError, ImageReadError, TransferlabError
from ..core.io import atomic_write_json
from ..core.options import CALIBRATION_METHODS, QUANTIZE_MODES
from ..data.folders import Sample, scan_dataset
from ..data.images import open_image
from ..data.transforms import EvalTransform
from .classifier import Classifier
from .runtime import QUANTIZATION_REPORT, cpu_session, export_onnx, weights_fingerprint

# Chosen by measurement (bench/quantize.py --methods): see DEFAULT_CALIBRATION_WHY.
# lite0 feature-extracted on MNIST at 224 px, 128 calibration images, 250 validation images:
# percentile 84.4% (float 84.0%, agreement 97.6%), minmax and entropy 82.4% (-1.6 points, 94.8%);
# minmax calibrates fastest (25 s vs 69 s) but its ranges follow outliers.
DEFAULT_CALIBRATION_METHOD = "percentile"
DEFAULT_CALIBRATION_IMAGES = 128
DEFAULT_MAX_DROP = 1.0  # accuracy points
CALIBRATION_BATCH = 8
# ONNX inputs whose values are shapes or indices, not activations (kept float32 in fp16 models)
_SHAPE_INPUTS = {"Pad": (1,), "Reshape": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,), "Tile": (1,),
                 "Resize": (1, 2, 3), "ConstantOfShape": (0,)}


@dataclass
class Split:
    """The images a quantized export is calibrated and judged on, and the files that could not be read."""

    calibration: list[Path]
    validation: list[Sample]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


class ImageCalibrationReader:
    """ONNX Runtime's CalibrationDataReader over image files, through the model's eval transform.

    The images are decoded once, up front (128 at 224 px: 77 MB); an unreadable one is skipped and
    kept in `skipped` as (path, reason). Batches all have the same size (the largest divisor of the
    readable count up to `batch`): the histogram calibrators stack them. len() and set_range() (in
    batches) let the calibrator collect a few batches at a time.
    """

    def __init__(self, paths, transform, batch: int = CALIBRATION_BATCH, min_size: int | None = None):
        self.skipped: list[tuple[str, str]] = []
        tensors = []
        for p in paths:
            try:
                tensors.append(transform(open_image(p, min_size=min_size)))
            except ImageReadError as e:
                self.skipped.append((str(p), e.reason))
        self.used = len(tensors)
        self.images = torch.stack(tensors).numpy() if tensors else np.zeros((0, 3, 1, 1), np.float32)
        self.batch = next((d for d in range(min(batch, self.used), 0, -1) if self.used % d == 0), 1)
        self._next, self._end = 0, len(self)

    def __len__(self) -> int:
        return self.used // self.batch

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve batches start_index..end_index-1 next."""
        self._next, self._end = start_index, min(end_index, len(self))

    def get_next(self) -> dict | None:
        """The next {'image': float32 NCHW batch}, or None when the range is used up."""
        if self._next >= self._end:
            return None
        self._next += 1
        return {"image": self.images[(self._next - 1) * self.batch:self._next * self.batch]}

    def stride(self, most: int = 4) -> int:
        """Batches per collection: the largest divisor of len() up to `most` (ONNX Runtime's strided
        calibration needs a divisor)."""
        return next(d for d in range(min(most, len(self)), 0, -1) if len(self) % d == 0)


def run_split(clf: Classifier, data=None, calibration: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0) -> Split:
    """Calibration images (a class-stratified sample of the training split) and the validation split,
    of the run's own dataset (reproduced from model.json: root, val_split, seed) or of `data`."""
    cfg = clf.meta.get("config", {})
    root = data or clf.meta.get("dataset", {}).get("root")
    if not root:
        raise TransferlabError("quantization calibrates on a run's training images: export a run folder, "
                               "or give --data FOLDER (one sub-folder of images per class)")
    if not Path(root).is_dir():
        raise DatasetError(f"the run's training data {root} is not on this machine; give --data FOLDER with the "
                           "same class sub-folders")
    scan = scan_dataset(root, val_split=cfg.get("val_split", 0.2), seed=cfg.get("seed", 0))
    unknown = [c for c in scan.classes if c not in clf.classes]
    if unknown:
        raise DatasetError(f"{root} has class folder(s) the model does not know: {', '.join(unknown)}")
    remap = [clf.classes.index(c) for c in scan.classes]
    validation = [Sample(s.path, remap[s.label]) for s in (scan.splits.get("val") or [])]
    if not validation:
        raise DatasetError(f"no validation images in {root} to measure the quantized model on")
    train = sorted(scan.splits["train"], key=lambda s: str(s.path))
    by_class: dict[int, list[Path]] = {}
    for s in random.Random(seed).sample(train, len(train)):
        by_class.setdefault(s.label, []).append(s.path)
    picked: list[Path] = []
    while len(picked) < min(calibration, len(train)):  # round robin over classes: every class calibrates
        for paths in by_class.values():
            if paths and len(picked) < calibration:
                picked.append(paths.pop())
    return Split(picked, validation, f"{root} ({scan.split_source})", list(scan.skipped))


def static_float_model(model: torch.nn.Module, size: int, out: Path, outputs: tuple[str, ...] = ("logits",)) -> None:
    """The float graph with its shape arithmetic folded away, batch axis still free.

    Exported at batch 1 with fixed shapes, ONNX Runtime's basic optimizations fold the dynamic "same"
    padding to constant Pads and BatchNorm into the convolutions; the batch axis is then renamed
    back to a symbol. Quantizing the graph with the shape arithmetic left in cost 12% top-1
    agreement on a 48-px lite0 (logits off by up to 8); folded, 100%. Reshapes to a leading 1 copy
    the batch instead; a graph that still differs from PyTorch at batch 2 is exported as is.
    """
    import onnx
    import onnxruntime as ort

    raw = out.with_name("raw.onnx")
    export_onnx(model, torch.zeros(1, 3, size, size), raw, outputs=outputs, dynamic_batch=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(out))
    for value in list(graph.graph.input) + list(graph.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    initializers = {t.name: t for t in graph.graph.initializer}
    for node in graph.graph.node:  # a Reshape to (1, ...) traced at batch 1: 0 copies the batch instead
        shape = initializers.get(node.input[1]) if node.op_type == "Reshape" else None
        if shape is not None and not any(a.name == "allowzero" and a.i for a in node.attribute):
            values = onnx.numpy_helper.to_array(shape).copy()
            if values.size and values[0] == 1:
                values[0] = 0
                shape.CopyFrom(onnx.numpy_helper.from_array(values, shape.name))
    del graph.graph.value_info[:]  # inferred shapes with batch 1
    onnx.save(graph, str(out))
    raw.unlink(missing_ok=True)
    check = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(check)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    got = cpu_session(out).run(list(outputs), {"image": check.numpy()})
    if any(g.shape != tuple(e.shape) or np.abs(g - e.numpy()).max() > 1e-3 for g, e in zip(got, expected)):
        export_onnx(model, torch.zeros(1, 3, size, size), out, outputs=outputs)  # not foldable: as exported


def float16_model(model_path: Path, out: Path) -> None:
    """fp16 weights and activations, float32 inputs/outputs and shape arithmetic."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(model_path))
    producer = {o: n for n in model.graph.node for o in n.output}
    stack = [n.input[i] for n in model.graph.node for i in _SHAPE_INPUTS.get(n.op_type, ())
             if i < len(n.input) and n.input[i]]
    block: set[str] = set()
    while stack:  # every node computing a shape, back to (and including) the Shape nodes
        node = producer.get(stack.pop())
        if node is None or node.name in block:
            continue
        block.add(node.name)
        if node.op_type != "Shape":
            stack.extend(i for i in node.input if i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(block))
    onnx.save(half, str(out))


def int8_model(model_path: Path, out: Path, reader: ImageCalibrationReader, method: str,
               keep_float=None) -> None:
    """Static QDQ int8: per-channel int8 weights, uint8 activations, ranges from `reader`;
    keep_float(onnx model) -> names of nodes left in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name("prepared.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the calibrators' progress lines and pre-processing advice
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quant_pre_process(str(model_path), str(prepared))
            exclude = None
            if keep_float is not None:
                import onnx

                exclude = sorted(keep_float(onnx.load(str(prepared))))
            quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method={"minmax": CalibrationMethod.MinMax,
                                              "entropy": CalibrationMethod.Entropy,
                                              "percentile": CalibrationMethod.Percentile}[method],
                            nodes_to_exclude=exclude,
                            # a few batches per collection, merged: entropy and percentile (histograms)
                            # otherwise hold every activation of every calibration image until the end,
                            # ~60 MB per 224-px image for lite0 (7.9 GB peak measured for 128 images)
                            extra_options={"CalibMovingAverage": False, "CalibStridedMinMax": reader.stride()})
    finally:
        root.setLevel(level)
        prepared.unlink(missing_ok=True)


def load_tensors(samples: list[Sample], transform, min_size: int | None) -> tuple[torch.Tensor, list[int], list]:
    """The validation images preprocessed once: (N,3,S,S) batch, labels, (path, reason) for unreadable ones."""
    tensors, labels, skipped = [], [], []
    for s in samples:
        try:
            tensors.append(transform(open_image(s.path, min_size=min_size)))
            labels.append(s.label)
        except ImageReadError as e:
            skipped.append((str(s.path), e.reason))
    if not tensors:
        raise DatasetError("no readable validation image to measure the quantized model on")
    return torch.stack(tensors), labels, skipped


def session_logits(session, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits for every row of x, `batch` rows per call."""
    return np.concatenate([session.run(["logits"], {"image": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def images_per_second(session, x: np.ndarray, batch: int, seconds: float = 1.0, min_images: int = 32) -> float:
    """Forward throughput at a batch size: after one warm-up call, repeat calls for about `seconds`."""
    x = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    session.run(["logits"], {"image": x})
    done, start = 0, time.perf_counter()
    while done < min_images or time.perf_counter() - start < seconds:
        session.run(["logits"], {"image": x})
        done += batch
    return done / (time.perf_counter() - start)


def measure(float_path: Path, quant_path: Path, x: np.ndarray, labels: list[int], threads: int | None,
            speed_seconds: float = 1.0) -> dict:
    """Accuracy of both models, their top-1 agreement, file sizes and forward images/s (batch 1 and 32)."""
    y = np.asarray(labels)
    result = {}
    preds = {}
    for name, path in (("float", float_path), ("quantized", quant_path)):
        session = cpu_session(path, threads)
        preds[name] = session_logits(session, x).argmax(1)
        result[name] = {
            "accuracy": float((preds[name] == y).mean()),
            "size_bytes": path.stat().st_size,
            "images_per_s": {str(b): round(images_per_second(session, x, b, speed_seconds), 1) for b in (1, 32)},
        }
    result["agreement"] = float((preds["float"] == preds["quantized"]).mean())
    result["accuracy_drop_points"] = round(100 * (result["float"]["accuracy"] - result["quantized"]["accuracy"]), 4)
    return result


def check_options(mode: str, method: str, max_drop: float, calibration: int) -> None:
    """One line for each option out of range."""
    if mode not in QUANTIZE_MODES:
        raise TransferlabError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, not {mode!r}")
    if method not in CALIBRATION_METHODS:
        raise TransferlabError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, not {method!r}")
    if max_drop is None or not max_drop >= 0:
        raise TransferlabError(f"--max-drop is accuracy points and must be >= 0, not {max_drop}")
    if calibration < 1:
        raise TransferlabError(f"--calibration must be a positive number of images, not {calibration}")


def default_quantized_path(clf: Classifier, mode: str) -> Path:
    """RUN/model-int8.onnx for a run folder, NAME-int8.onnx otherwise."""
    name = clf.name.replace(":", "_") or "model"
    return Path(name) / f"model-{mode}.onnx" if Path(name).is_dir() else Path(f"{name}-{mode}.onnx")


def quantize_classifier(clf: Classifier, mode: str = "int8", out=None, max_drop: float = DEFAULT_MAX_DROP,
                        calibration: int = DEFAULT_CALIBRATION_IMAGES,
                        calibration_method: str = DEFAULT_CALIBRATION_METHOD, data=None, threads: int | None = None, speed_seconds: float = 1.0,
                        sidecar: dict | None = None) -> tuple[Path, Path, dict]:
    """Export `clf` quantized (mode int8 or fp16), measured on the validation split; refuse (raise,
    write nothing) when accuracy drops more than `max_drop` points. Returns (model path, sidecar
    path, report); the report also goes to the output folder's quantization.json and the sidecar
    (`sidecar`: the float export's sidecar content to extend)."""
    method = calibration_method
    check_options(mode, method, max_drop, calibration)
    split = run_split(clf, data, calibration)
    path = Path(out) if out else default_quantized_path(clf, mode)
    model = clf.model.cpu().eval()
    size = clf.preprocessing.input_size
    transform = EvalTransform(clf.preprocessing)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".quantize-", dir=path.parent))
    try:
        float_path, quant_path = work / "float.onnx", work / "quantized.onnx"
        static_float_model(model, size, float_path)
        reader = None
        started = time.perf_counter()
        if mode == "int8":
            reader = ImageCalibrationReader(split.calibration, transform, min_size=clf.preprocessing.resize)
            if not reader.used:
                raise DatasetError("no calibration image could be read: "
                                   + "; ".join(f"{p}: {why}" for p, why in reader.skipped[:3]))
            int8_model(float_path, quant_path, reader, method)
        else:
            float16_model(float_path, quant_path)
        convert_s = time.perf_counter() - started
        x, labels, unreadable = load_tensors(split.validation, transform, clf.preprocessing.resize)
        numbers = measure(float_path, quant_path, x.numpy(), labels, threads, speed_seconds)
        report = {
            "mode": mode,
            "model": path.name,
            "calibration": {"method": method if mode == "int8" else None,
                            "images": reader.used if reader else 0,
                            "skipped": [list(s) for s in reader.skipped] if reader else [],
                            "scheme": "QDQ, per-channel int8 weights, uint8 activations" if mode == "int8"
                            else "float16 weights and activations, float32 inputs/outputs",
                            "seconds": round(convert_s, 2)},
            "validation": {"source": split.source, "images": len(labels), "unreadable": [list(s) for s in unreadable]},
            "dataset_skipped": [list(s) for s in split.skipped],
            **numbers,
            "max_drop_points": max_drop,
            "weights_sha256": weights_fingerprint(model),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        drop = numbers["accuracy_drop_points"]
        if drop > max_drop:
            raise TransferlabError(
                f"{mode} quantization would cost {drop:.2f} accuracy points (float {numbers['float']['accuracy']:.4f}, "
                f"{mode} {numbers['quantized']['accuracy']:.4f}, top-1 agreement {numbers['agreement']:.1%} on "
                f"{len(labels)} validation images), above --max-drop {max_drop:g}; nothing was written "
                f"(raise --max-drop, or try another --calibration-method or more --calibration images)")
        sidecar_path, report = publish(work, quant_path, path, sidecar, mode, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path, sidecar_path, report


def publish(work: Path, quant_path: Path, path: Path, sidecar: dict | None, mode: str,
            report: dict) -> tuple[Path, dict]:
    """Move a measured, accepted export from its work folder into place: the model, its sidecar (with
    the report) and the run's quantization.json entry. Returns the sidecar path and the report."""
    sidecar_path = path.with_suffix(path.suffix + ".json")
    atomic_write_json(work / "sidecar.json", {**(sidecar or {}), "quantization": report})
    # everything is measured and written beside the targets: now move them in
    shutil.move(str(quant_path), str(path))
    shutil.move(str(work / "sidecar.json"), str(sidecar_path))
    write_report(path.parent / QUANTIZATION_REPORT, mode, report)
    return sidecar_path, {**report, "report": str(path.parent / QUANTIZATION_REPORT)}


def write_report(path: Path, mode: str, report: dict) -> None:
    """quantization.json holds one report per mode ({"int8": ..., "fp16": ...}); others are kept."""
    import json

    reports = {}
    if path.is_file():
        try:
            reports = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            reports = {}
    reports[mode] = report
    atomic_write_json(path, reports)
