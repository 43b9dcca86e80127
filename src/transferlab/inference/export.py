"""Export a model to TorchScript or ONNX, verified against PyTorch, with a sidecar that says how to
feed it. One result type for every kind of model."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import TransferlabError
from ..core.io import atomic_path, atomic_write_json
from ..core.options import EXPORT_FORMATS
from .classifier import Classifier
from .quantize import quantize_classifier
from .runtime import cpu_session, export_onnx


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


def export_classifier(clf: Classifier, format: str = "onnx", out=None, batch: int = 2,
                      check: bool = True, quantize: str | None = None, **quantize_options) -> ExportResult:
    """Write the exported classifier and its .json sidecar (input, output, preprocessing, classes).

    quantize: "int8" or "fp16" (ONNX only), measured on the run's validation split and refused above
    max_drop accuracy points; options: max_drop, calibration, calibration_method, data (see quantize.py).
    """
    check_format(format)
    if quantize is not None:
        if format != "onnx":
            raise TransferlabError("--quantize applies to --format onnx")
        path, sidecar, report = quantize_classifier(clf, quantize, out, sidecar=sidecar_dict(clf, format, None),
                                                    **quantize_options)
        return ExportResult(path, sidecar, format, None, report)
    if quantize_options:
        raise TransferlabError(f"{', '.join(sorted(quantize_options))} appl{'ies' if len(quantize_options) == 1 else 'y'}"
                               " only with --quantize")
    model = clf.model.cpu().eval()
    size = clf.preprocessing.input_size
    torch.manual_seed(0)
    example = torch.randn(batch, 3, size, size)
    path = Path(out) if out else default_export_path(clf.name.replace(":", "_") or "model", format)
    with torch.inference_mode():
        reference = model(example)
    if format == "torchscript":
        diff = _export_torchscript(model, example, path, reference, check)
    else:
        diff = _export_onnx(model, example, path, reference, check)
    sidecar = path.with_suffix(path.suffix + ".json")
    atomic_write_json(sidecar, sidecar_dict(clf, format, diff))
    return ExportResult(path, sidecar, format, diff)


def sidecar_dict(clf: Classifier, format: str, diff: float | None) -> dict:
    """The sidecar's content: how to feed the exported model and read its output."""
    size = clf.preprocessing.input_size
    return {
        "format": format,
        "input": {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW RGB"},
        "output": {"name": "logits", "shape": ["batch", len(clf.classes)], "apply": "softmax for probabilities"},
        "preprocessing": {
            **clf.preprocessing.to_dict(),
            "steps": ["decode to RGB, apply EXIF orientation",
                      f"resize shorter side to {clf.preprocessing.resize} ({clf.preprocessing.interpolation})",
                      f"centre-crop {size}x{size}", "scale to [0,1]",
                      f"normalise with mean {list(clf.preprocessing.mean)} and std {list(clf.preprocessing.std)}"],
        },
        "classes": list(clf.classes),
        "max_abs_diff_vs_pytorch": diff,
    }


def _export_torchscript(model, example, path: Path, reference, check: bool) -> float | None:
    # TorchScript is deprecated upstream in favour of torch.export, but it is still what C++/mobile
    # runtimes load; the warnings are noise for the user here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(model, example)
        with atomic_path(path) as tmp:
            traced.save(str(tmp))
        if not check:
            return None
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return float((loaded(example) - reference).abs().max())


def _export_onnx(model, example, path: Path, reference, check: bool) -> float | None:
    with atomic_path(path) as tmp:
        export_onnx(model, example, tmp)
    if not check:
        return None
    out = cpu_session(path).run(["logits"], {"image": example.numpy()})[0]
    return float((torch.from_numpy(out) - reference).abs().max())
