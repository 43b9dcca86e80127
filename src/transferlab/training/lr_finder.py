"""Learning-rate range test (Smith 2015, as in fastai's lr_find): raise the lr exponentially over up
to a hundred steps, watch the smoothed loss, suggest an lr safely below where it bottoms out."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch



@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]
    suggestion: float


def lr_range_test(model, groups: list[dict], fallback: float, batches, batch_loss, start_lr: float = 1e-7,
                  end_lr: float = 1.0, max_steps: int = 100) -> LRFinderResult:
    """Run the test on a copy of the weights (the model is restored afterwards) with the optimizer
    groups of a phase; batch_loss(x, y) is the task's loss of a batch (already on the device)."""
    saved = copy.deepcopy(model.state_dict())
    base = [g["lr"] for g in groups]
    head_lr = max(base)
    optimizer = torch.optim.AdamW(groups)
    steps = max(10, min(max_steps, len(batches) * 5))
    gamma = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, smooth, best = [], [], None, math.inf
    model.train()
    step = 0
    while step < steps:
        for x, y in batches:
            lr = start_lr * gamma**step
            for g, b in zip(optimizer.param_groups, base):
                g["lr"] = lr * b / head_lr  # keep the phase's discriminative ratios
            loss = batch_loss(x, y)
            if not torch.isfinite(loss):
                step = steps
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            smooth = loss.item() if smooth is None else 0.9 * smooth + 0.1 * loss.item()
            debiased = smooth / (1 - 0.9 ** (step + 1))
            lrs.append(lr)
            losses.append(debiased)
            best = min(best, debiased)
            step += 1
            if debiased > 4 * best or step >= steps:
                step = steps
                break
    model.load_state_dict(saved)
    return LRFinderResult(lrs, losses, suggest_lr(lrs, losses, fallback))


def suggest_lr(lrs: list[float], losses: list[float], fallback: float) -> float:
    """fastai's "minimum" rule: a tenth of the lr at which the smoothed loss is lowest.

    The steepest-slope rule is noisier on the short tests that small datasets allow.
    """
    if len(losses) < 5:
        return fallback
    i = min(range(len(losses)), key=losses.__getitem__)
    return float(lrs[i]) / 10
