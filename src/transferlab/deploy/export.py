"""What every export returns and where it goes by default, for every kind of model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import TransferlabError
from ..core.options import EXPORT_FORMATS


@dataclass
class ExportResult:
    """Where an export went and how closely it reproduces PyTorch (max |difference| on random inputs);
    a quantized export carries its measured report (accuracy before/after, agreement, size, speed)."""

    path: Path
    sidecar: Path
    format: str
    max_abs_diff: float | None
    quantization: dict | None = None


def default_export_path(model_name: str, format: str) -> Path:
    """RUN/model.onnx (or .pt) for a run folder, NAME.onnx in the working folder for a registry name."""
    suffix = ".pt" if format == "torchscript" else ".onnx"
    return Path(model_name) / f"model{suffix}" if Path(model_name).is_dir() else Path(f"{model_name}{suffix}")


def check_format(format: str, allowed=EXPORT_FORMATS) -> None:
    """One line naming the formats this kind of model exports to."""
    if format not in allowed:
        raise TransferlabError(f"--format must be one of {', '.join(allowed)}")
