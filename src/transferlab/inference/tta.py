"""Test-time augmentation: a forward averaged over the image and its mirror. One home for every engine
(PyTorch, ONNX Runtime, int8) and every verb (evaluate, predict, serve), so they give the same records."""
from __future__ import annotations

import torch


def mirrored(forward):
    """`forward` averaged over a normalised batch and its horizontal mirror (the logits, so a softmax or
    a sigmoid of the result stays a classifier's output). Twice the engine's work per image."""
    def both(batch: torch.Tensor) -> torch.Tensor:
        return (forward(batch).float() + forward(torch.flip(batch, dims=[-1])).float()) / 2
    return both
