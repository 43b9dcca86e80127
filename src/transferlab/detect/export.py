"""ONNX export of the raw BlazeFace heads, checked against onnxruntime.

The graph outputs regressors (N, A, 16) and logits (N, A); decoding and weighted NMS stay outside,
as in MediaPipe, with the anchor settings recorded in the run's model.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path
from ..runtime import cpu_session, export_onnx as export_graph
from .detector import Detector


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float


def export_onnx(detector: Detector, path: str | Path, opset: int = 17, check: bool = True) -> ExportResult:
    model = detector.model.eval().cpu()
    size = detector.input_size
    path = Path(path)
    with atomic_path(path) as tmp:
        export_graph(model, torch.zeros(1, 3, size, size), tmp, outputs=("regressors", "logits"), opset=opset)
    diff = parity(model, path, size) if check else float("nan")
    return ExportResult(path, diff)


def parity(model: torch.nn.Module, path: Path, size: int, batch: int = 2, seed: int = 0) -> float:
    """Max |torch - onnxruntime| over both outputs on random inputs in the model's [-1, 1] range."""
    x = torch.empty(batch, 3, size, size).uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = [t.numpy() for t in model(x)]
    got = cpu_session(path).run(None, {"image": x.numpy()})
    return float(max(np.abs(e - g).max() for e, g in zip(expected, got)))
