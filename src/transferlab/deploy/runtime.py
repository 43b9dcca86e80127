"""Inference engines for a trained or pretrained network: PyTorch itself, or ONNX Runtime on CPU.

On CPU, ONNX Runtime runs the same graph about twice as fast as PyTorch eager (measured on 2 cores
with efficientnet_lite0: ~110 vs ~50 images/s; convolution+BN fusion and better depthwise kernels).
The network is exported in memory (about a second), so no file is written and the weights in use
are always the ones in the model. The engine is rebuilt when the weights change.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core.errors import OutputWriteError, TransferlabError
from ..core.io import atomic_path
from ..core.options import BACKENDS
from ..core.paths import cache_dir

# a quantized export's measurements, one report per mode, beside the exported model (see quantize.py)
QUANTIZATION_REPORT = "quantization.json"
ONNX_OPSET = 17
# ONNX Runtime's CPU kernels ran best at 8 images per call on 2 cores (1: 108, 8: 112, 32: 94 img/s).
ONNX_CHUNK = 8
# The export costs about a second, which the faster engine earns back (~8 ms/image) from ~150 images.
ONNX_MIN_IMAGES = 128
# An export cached on disk opens in ~50 ms: earned back from a handful of images.
ONNX_CACHED_MIN_IMAGES = 8

_INSTALL_HINT = "pip install onnx onnxruntime"


def onnxruntime_available() -> bool:
    """True when onnxruntime imports."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def require_onnxruntime(purpose: str) -> None:
    """Raise a one-line install hint when onnx or onnxruntime is missing."""
    if not onnxruntime_available():
        raise TransferlabError(f"{purpose} needs onnx and onnxruntime: {_INSTALL_HINT}")


def cpu_session(model, threads: int | None = None):
    """An ONNX Runtime CPU session for a path or serialized model; `threads` None lets it choose."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads would steal the cores our decoding workers need (see device.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(model) if isinstance(model, os.PathLike) else model, options,
                                providers=["CPUExecutionProvider"])


def resolve_backend(backend: str, device: torch.device, num_images: int, engine_ready: bool = False,
                    export_cached: bool = False) -> str:
    """'auto' is ONNX Runtime on CPU when installed and worth its export (an engine already built for
    these weights, their export cached and a few images, or enough images to pay for the export),
    otherwise PyTorch."""
    if backend not in BACKENDS:
        raise TransferlabError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "auto":
        worth_it = (engine_ready or num_images >= ONNX_MIN_IMAGES
                    or (export_cached and num_images >= ONNX_CACHED_MIN_IMAGES))
        return "onnxruntime" if device.type == "cpu" and worth_it and onnxruntime_available() else "torch"
    if backend in ("onnxruntime", "onnxruntime-int8"):
        if device.type != "cpu":
            raise TransferlabError(f"--backend {backend} runs on the CPU; use --device cpu or --backend torch")
        require_onnxruntime(f"--backend {backend}")
    return backend


def choose_engine(backend: str, device: torch.device, num_images: int, int8, max_drop: float | None = None,
                  engine_ready: bool = False, export_cached: bool = False) -> tuple[str, object | None]:
    """The engine of predict and serve: (backend, the int8 engine or None). The run's int8 export runs
    when asked for ("onnxruntime-int8") or, with "auto" on CPU and a max_drop, when its recorded drop
    is within it; otherwise resolve_backend decides (float ONNX Runtime for a model without int8 export).
    int8(required) -> that engine or None."""
    if backend == "onnxruntime-int8" or (backend == "auto" and max_drop is not None and device.type == "cpu"):
        engine = int8(backend == "onnxruntime-int8")
        if engine is not None:
            return resolve_backend("onnxruntime-int8", device, num_images), engine
    float_backend = "onnxruntime" if backend == "onnxruntime-int8" else backend
    return resolve_backend(float_backend, device, num_images, engine_ready, export_cached), None


def export_onnx(model: nn.Module, example: torch.Tensor, f, outputs: tuple[str, ...] = ("logits",),
                opset: int = ONNX_OPSET, dynamic_batch: bool = True) -> None:
    """Export with input 'image', the named outputs and a dynamic batch axis (or the example's shapes
    fixed: dynamic_batch=False); `f` is a path or a binary file.

    The TorchScript-based exporter: the dynamo one needs onnxscript and gains nothing for these graphs.
    """
    require_onnxruntime("ONNX export")
    f = str(f) if isinstance(f, os.PathLike) else f
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation, tracer and folding warnings are not the user's
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(model, (example,), f, input_names=["image"], output_names=list(outputs),
                              dynamic_axes={name: {0: "batch"} for name in ("image", *outputs)} if dynamic_batch
                              else None,
                              opset_version=opset, dynamo=False)


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer (tens of milliseconds for a mobile network)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def onnx_cache_path(fingerprint: str, input_size: int) -> Path:
    """Where the in-memory export of weights with this fingerprint is kept between processes."""
    return cache_dir() / "onnx" / f"{fingerprint[:40]}-{input_size}px-opset{ONNX_OPSET}-torch{torch.__version__}.onnx"


class OnnxRuntimeForward:
    """Callable like the model (NCHW float batch -> logits) but runs an ONNX export of it, made in memory
    or read from `cache` (written there after an export: the export costs ~1-2 s, reading ~50 ms).

    Use it in the process that built it: an ONNX Runtime session does not survive fork().
    """

    def __init__(self, model: nn.Module, input_size: int, threads: int, cache: Path | None = None):
        graph = cache.read_bytes() if cache is not None and cache.is_file() else self._export(model, input_size)
        if cache is not None and not cache.is_file():
            try:
                with atomic_path(cache) as tmp:
                    Path(tmp).write_bytes(graph)
            except OutputWriteError:
                pass  # a read-only or full cache only costs the export next time
        self.session = cpu_session(graph, threads)

    @staticmethod
    def _export(model: nn.Module, input_size: int) -> bytes:
        buffer = io.BytesIO()
        try:
            export_onnx(model.cpu().eval(), torch.zeros(1, 3, input_size, input_size), buffer)
        except TransferlabError:
            raise
        except Exception as e:  # noqa: BLE001  (any exporter failure: say which and how to avoid it)
            raise TransferlabError(f"this model does not export to ONNX ({str(e).splitlines()[0][:160]}); "
                                   "use --backend torch") from None
        return buffer.getvalue()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        chunks = [torch.from_numpy(self.session.run(["logits"], {"image": c.contiguous().numpy()})[0])
                  for c in batch.split(ONNX_CHUNK)]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def read_quantization_report(folder, mode: str = "int8") -> dict | None:
    """The recorded report of a quantized export in `folder` (a run folder), or None."""
    import json

    path = Path(folder) / QUANTIZATION_REPORT
    try:
        report = json.loads(path.read_text(encoding="utf-8")).get(mode) if path.is_file() else None
    except (json.JSONDecodeError, OSError, AttributeError):
        return None
    return report if isinstance(report, dict) and "model" in report else None


class QuantizedForward:
    """Callable like the model (NCHW float batch -> logits), running a quantized export from disk."""

    def __init__(self, path, threads: int):
        require_onnxruntime("--backend onnxruntime-int8")
        self.path = path
        self.session = cpu_session(path, threads)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        chunks = [torch.from_numpy(self.session.run(["logits"], {"image": c.contiguous().numpy()})[0])
                  for c in batch.split(ONNX_CHUNK)]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]
