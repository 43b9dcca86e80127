"""Pick the compute device and the loader settings that suit this machine."""
from __future__ import annotations

import os

import torch

from .errors import TransferlabError


def pick_device(requested: str | None = None) -> torch.device:
    """'auto'/None: CUDA, then Apple MPS, then CPU. An explicit device that is absent is an error."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TransferlabError(f"--device {requested}: no CUDA GPU is visible; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TransferlabError(f"--device {requested}: Apple MPS is not available; use --device cpu or auto")
    return device


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(num_items: int, batch_size: int) -> int:
    """Decoding workers: none for a handful of images (start-up costs more), else up to cores-1, max 8."""
    if num_items <= 2 * batch_size:
        return 0
    return max(1, min(8, available_cpus() - 1))
