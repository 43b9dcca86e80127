"""Export a run to TorchScript or ONNX, verified against the PyTorch model, with a preprocessing sidecar."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .classifier import Classifier, load
from .config import EXPORT_FORMATS
from .errors import TransferlabError
from .io import atomic_path, atomic_write_json
from .runtime import cpu_session, export_onnx


def export(run, format: str = "onnx", out=None, batch: int = 2, check: bool = True) -> dict:
    """Write the exported model (and a .json sidecar); returns {"path", "sidecar", "max_abs_diff"}."""
    if format not in EXPORT_FORMATS:
        raise TransferlabError(f"--format must be one of {', '.join(EXPORT_FORMATS)}")
    clf = run if isinstance(run, Classifier) else load(str(run))
    model = clf.model.cpu().eval()
    size = clf.preprocessing.input_size
    torch.manual_seed(0)
    example = torch.randn(batch, 3, size, size)
    suffix = ".pt" if format == "torchscript" else ".onnx"
    path = Path(out) if out else Path(str(run) if not isinstance(run, Classifier) else ".") / f"model{suffix}"
    with torch.inference_mode():
        reference = model(example)
    if format == "torchscript":
        diff = _export_torchscript(model, example, path, reference, check)
    else:
        diff = _export_onnx(model, example, path, reference, check)
    sidecar = path.with_suffix(path.suffix + ".json")
    atomic_write_json(sidecar, {
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
    })
    return {"path": str(path), "sidecar": str(sidecar), "max_abs_diff": diff}


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
