"""ONNX export of the raw BlazeFace heads, checked against onnxruntime.

The graph outputs regressors (N, A, 16) and logits (N, A); decoding and weighted NMS stay outside,
as in MediaPipe, with the anchor settings recorded in the run's model.json.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TransferlabError
from ..io import atomic_path
from .detector import Detector

_INSTALL_HINT = "pip install 'transferlab[export]' (onnx, onnxruntime)"


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float


def export_onnx(detector: Detector, path: str | Path, opset: int = 17, check: bool = True) -> ExportResult:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it; fail with an install hint instead)
    except ImportError:
        raise TransferlabError(f"ONNX export needs onnx: {_INSTALL_HINT}") from None
    model = detector.model.eval().cpu()
    size = detector.input_size
    example = torch.zeros(1, 3, size, size)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # harmless for this graph and confusing to users: the channel zero-padding is not folded
        warnings.filterwarnings("ignore", message="Constant folding")
        # the TorchScript exporter: the dynamo one needs onnxscript and gains nothing for this graph
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["regressors", "logits"],
                          dynamic_axes={"image": {0: "batch"}, "regressors": {0: "batch"}, "logits": {0: "batch"}})
    diff = parity(model, path, size) if check else float("nan")
    return ExportResult(path, diff)


def parity(model: torch.nn.Module, path: Path, size: int, batch: int = 2, seed: int = 0) -> float:
    """Max |torch - onnxruntime| over both outputs on random inputs in the model's [-1, 1] range."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise TransferlabError(f"the ONNX parity check needs onnxruntime: {_INSTALL_HINT}") from None
    x = torch.empty(batch, 3, size, size).uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = [t.numpy() for t in model(x)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    return float(max(np.abs(e - g).max() for e, g in zip(expected, got)))
