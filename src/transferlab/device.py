"""Pick the compute device and the loader settings that suit this machine."""
from __future__ import annotations

import os
from contextlib import contextmanager

# OpenMP threads that finish a parallel region spin-wait for the next one by default. When anything
# else wants the cores (our own decoding workers, another job), the spinning steals them: on a shared
# 2-core machine a forward pass measured ~20x slower with 2 spinning threads than with 1. Passive
# waiting costs little when the machine is idle. Only effective before torch is first imported;
# a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

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


@contextmanager
def inference_threads(device: torch.device, workers: int):
    """Intra-op threads for CPU inference while `workers` decoding processes share the cores.

    The workers need a core each to keep the model fed; giving torch the rest avoids
    oversubscription (threads waiting on each other's preempted work). Restored afterwards.
    """
    before = torch.get_num_threads()
    if device.type == "cpu" and workers > 0:
        torch.set_num_threads(max(1, min(before, available_cpus() - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
