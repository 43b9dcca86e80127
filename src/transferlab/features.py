"""Frozen-prefix feature caching: run the frozen blocks once per image (per augmented view), then
train only the rest of the network from the cached activations."""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from .models import BlockNet

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of cached activations kept in RAM


@torch.inference_mode()
def prefix_features(model: BlockNet, n: int, loader: DataLoader, device: torch.device, desc: str = "") -> torch.Tensor:
    """Outputs of blocks[:n] for every item of `loader` (in loader order), on the CPU."""
    was_training = model.training
    model.eval()
    chunks = []
    for x, _ in loader:
        chunks.append(model.forward_blocks(x.to(device, non_blocking=True), 0, n).float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


@torch.inference_mode()
def feature_bytes_per_item(model: BlockNet, n: int, input_size: int, device: torch.device) -> int:
    """Size of one cached activation at freeze point n, measured with a dummy forward pass."""
    model_was_training = model.training
    model.eval()
    out = model.forward_blocks(torch.zeros(1, 3, input_size, input_size, device=device), 0, n)
    model.train(model_was_training)
    return out.numel() * 4


def cache_fits(model: BlockNet, n: int, input_size: int, items: int, views: int, device: torch.device,
               budget: int = DEFAULT_MEMORY_BUDGET) -> bool:
    if n <= 0:
        return False
    return feature_bytes_per_item(model, n, input_size, device) * items * max(views, 1) <= budget


class TensorBatches:
    """Mini-batches from in-memory tensors: shuffled with a seeded generator, or drawn by class weight.

    With several processes each takes every world-th item of the same permutation, padded (like
    DistributedSampler) so that all processes run the same number of steps.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                 sample_weights: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 rank: int = 0, world: int = 1, pad: bool = True):
        self.features, self.labels = features, labels
        self.batch_size, self.shuffle = batch_size, shuffle
        self.sample_weights = sample_weights
        self.generator = generator if generator is not None else torch.Generator()
        self.rank, self.world, self.pad = rank, world, pad

    def _shard_size(self) -> int:
        n = len(self.labels)
        return math.ceil(n / self.world) if self.pad else len(range(self.rank, n, self.world))

    def __len__(self):
        return math.ceil(self._shard_size() / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.sample_weights is not None:
            order = torch.multinomial(self.sample_weights, n, replacement=True, generator=self.generator)
        elif self.shuffle:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        if self.world > 1:
            if self.pad:
                total = math.ceil(n / self.world) * self.world
                order = torch.cat([order, order[: total - n]])
            order = order[self.rank::self.world]
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.features[idx], self.labels[idx]
