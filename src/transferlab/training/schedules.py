"""Learning-rate schedules as step -> factor functions (LambdaLR), warm-up included."""
from __future__ import annotations

import math

import torch


def lr_factor(kind: str, total: int, warmup: int):
    """step -> multiplier of the base lr: linear warm-up then cosine, constant, or one-cycle."""

    def factor(step: int) -> float:
        if kind == "onecycle":
            peak = max(1, int(0.3 * total))
            if step < peak:
                return 0.04 + 0.96 * step / peak
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - peak) / max(1, total - peak))))
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def build_scheduler(optimizer, kind: str, epochs: int, steps_per_epoch: int, warmup_epochs: float,
                    max_warmup_share: float):
    """The schedule of one phase; warm-up is capped at a share of the phase (the task's: Task.max_warmup_share)."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(int(max_warmup_share * total), int(warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(kind, total, warmup))
