"""The recipe's ingredients that act on batches, weights and epochs rather than on single images: mixup/cutmix
(torchvision's v2 MixUp and CutMix), an exponential moving average of the weights (timm's ModelEmaV3) and
progressive resizing (fastai's, with FFCV's linear ramp). Per-image augmentation lives with the
preprocessing (data/transforms.py)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class BatchMixer:
    """Mixup and/or cutmix of an image batch and its targets (one of the two per batch when both are on).

    Targets come out as probabilities: class indices are one-hot encoded first, multi-label 0/1 vectors
    are mixed as they are. Uses torch's global generator, which the Trainer seeds per epoch (a resumed
    run mixes the same pairs)."""

    def __init__(self, mixup: float, cutmix: float, num_classes: int):
        from torchvision.transforms import v2 as T

        ops = ([T.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + \
              ([T.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
        self.op = ops[0] if len(ops) == 1 else T.RandomChoice(ops)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft = y.float() if y.dim() == 2 else y  # multi-label targets are 0/1 floats already
        return self.op(x, soft)


def create_mixer(cfg, num_classes: int) -> BatchMixer | None:
    """The run's BatchMixer, or None when --mixup and --cutmix are both 0."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return BatchMixer(cfg.mixup, cfg.cutmix, num_classes)


def progressive_side(size: int, scale: float, epoch_in_phase: int, phase_epochs: int) -> int:
    """The side of the training images in an epoch of a phase (0-based) under --progressive SCALE.

    FFCV's linear ramp: the first epoch at scale * size, growing linearly to the full size at the start of
    the phase's last third (at least one epoch), which trains at the full size; rounded to a multiple of 32
    (at least 32, at most size). scale 0, or a phase of one epoch: the full size. A pure function of the
    epoch, so a resumed phase trains at the sides it would have."""
    full_from = phase_epochs - max(1, phase_epochs // 3)
    if scale <= 0 or epoch_in_phase >= full_from:
        return size
    side = size * (scale + (1 - scale) * epoch_in_phase / full_from)
    return min(size, max(32, round(side / 32) * 32))


class WeightAverage:
    """An exponential moving average of a model's weights, updated after every optimizer step and used to
    validate and to keep the best epoch. The decay warms up (timm's 1 - (1 + step)^-2/3, capped at
    `decay`): short transfer-learning runs take a few hundred steps, where a fixed 0.9999 would average
    little more than the starting weights."""

    def __init__(self, model: nn.Module, decay: float):
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True)
        self.steps = 0

    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (after an optimizer step)."""
        self.steps += 1
        self.ema.update(model, step=self.steps)

    def state_dict(self) -> dict:
        """The averaged weights, as the model's state_dict (what the best checkpoint keeps)."""
        return self.ema.module.state_dict()

    def checkpoint(self) -> dict:
        """What a resumable checkpoint keeps of the average."""
        return {"weights": self.state_dict(), "steps": self.steps}

    def restore(self, state: dict) -> None:
        """The average as checkpoint() kept it (a resumed phase goes on averaging)."""
        self.ema.module.load_state_dict(state["weights"])
        self.steps = state["steps"]

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """The model with the averaged weights inside the block, its own weights back after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state_dict())
        try:
            yield model
        finally:
            model.load_state_dict(own)
