"""ONNX export of the raw BlazeFace heads, checked against onnxruntime.

The graph outputs regressors (N, A, 16) and logits (N, A); decoding and weighted NMS stay outside,
as in MediaPipe, with the anchor settings recorded in the run's model.json.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.errors import TransferlabError
from ..core.io import atomic_path, atomic_write_json
from ..deploy.export import ExportResult, check_format, default_export_path
from ..deploy.runtime import cpu_session, export_onnx as export_graph
from .detector import Detector


def export_onnx(detector: Detector, path: str | Path | None = None, opset: int = 17, check: bool = True,
                format: str = "onnx", quantize: str | None = None, **quantize_options) -> ExportResult:
    """Write the detector's raw heads as ONNX, a sidecar with anchors and thresholds, and check parity.

    quantize="int8": calibrated on the run's training faces, AP@0.5 before and after on its
    validation split, refused above max_drop AP points (options: see detect/quantize.py)."""
    check_format(format, ("onnx",))
    if quantize is not None:
        if quantize != "int8":
            raise TransferlabError("a face detector quantizes to int8 only (--quantize int8)")
        from .quantize import quantize_detector

        out, sidecar, report = quantize_detector(detector, path, sidecar=sidecar_dict(detector, None),
                                                 **quantize_options)
        return ExportResult(out, sidecar, "onnx", None, report)
    if quantize_options:
        raise TransferlabError(f"{', '.join(sorted(quantize_options))}: only with --quantize")
    model = detector.model.eval().cpu()
    size = detector.input_size
    path = Path(path) if path else default_export_path(detector.source, "onnx")
    with atomic_path(path) as tmp:
        export_graph(model, torch.zeros(1, 3, size, size), tmp, outputs=("regressors", "logits"), opset=opset)
    diff = parity(model, path, size) if check else None
    sidecar = path.with_suffix(path.suffix + ".json")
    atomic_write_json(sidecar, sidecar_dict(detector, diff))
    return ExportResult(path, sidecar, "onnx", diff)


def sidecar_dict(detector: Detector, diff: float | None) -> dict:
    """How to feed the exported heads and decode their output."""
    size = detector.input_size
    return {
        "format": "onnx",
        "input": {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32",
                  "layout": "NCHW RGB in [-1, 1], letterboxed with a zero border"},
        "output": {"regressors": ["batch", "anchors", 16], "logits": ["batch", "anchors"],
                   "apply": "sigmoid(clip(logit, -100, 100)), decode against the anchors, weighted NMS"},
        "anchors": detector.model.config.anchors.to_dict(),
        "thresholds": {"score": detector.score_threshold, "iou": detector.iou_threshold},
        "max_abs_diff_vs_pytorch": diff,
    }


def parity(model: torch.nn.Module, path: Path, size: int, batch: int = 2, seed: int = 0) -> float:
    """Max |torch - onnxruntime| over both outputs on random inputs in the model's [-1, 1] range."""
    x = torch.empty(batch, 3, size, size).uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = [t.numpy() for t in model(x)]
    got = cpu_session(path).run(None, {"image": x.numpy()})
    return float(max(np.abs(e - g).max() for e, g in zip(expected, got)))
