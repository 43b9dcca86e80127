"""Frozen-prefix feature caching: run the frozen blocks once per image (per augmented view), then
train only the rest of the network from the cached activations."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from ..core.device import channels_last_on_cpu, forward_in_passes
from ..core.io import atomic_path
from ..models import BlockNet

CACHE_FORMAT = 2  # 2: the decode side in the key, no seed for the eval view

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes of cached activations kept in RAM


@torch.inference_mode()
def prefix_features(model: BlockNet, n: int, loader: DataLoader, device: torch.device, desc: str = "") -> torch.Tensor:
    """Outputs of blocks[:n] for every item of `loader` (in loader order), on the CPU."""
    was_training = model.training
    model.eval()
    chunks = []
    with channels_last_on_cpu(model, device):
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            chunks.append(forward_in_passes(lambda part: model.forward_blocks(part, 0, n), x, device).float().cpu())
    model.train(was_training)
    return torch.cat(chunks).contiguous()


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
    """Whether the prefix features of `items` images fit the memory budget."""
    if n <= 0:
        return False
    return feature_bytes_per_item(model, n, input_size, device) * items * max(views, 1) <= budget


def _hash_prefix(h, model: BlockNet, n: int) -> None:
    """Feed the weights of blocks[:n] into the digest `h`."""
    for name in model.block_names[:n]:
        for key, tensor in model.blocks[name].state_dict().items():
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def feature_cache_key(model: BlockNet, n: int, preprocessing, paths, view: str, seed: int,
                      decode_side: int | None = None) -> str:
    """A digest of everything the cached activations depend on, so a stale cache is never used:
    architecture, the frozen blocks' weights, the freeze point, preprocessing, augmentation view and
    seed (augmented views only: the clean "eval" view is the same under every seed, so `transferlab
    audit` and a later `train` share it), the side images were first decoded at (None: from the file),
    and the content (not the name or date) of every image file, in order."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "arch": getattr(model, "arch", type(model).__name__), "freeze": n,
                         "preprocessing": preprocessing.to_dict(), "view": view,
                         "seed": None if view == "eval" else seed, "decode_side": decode_side}).encode())
    _hash_prefix(h, model, n)
    for path in paths:
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:32]


class CleanFeatures:
    """Prefix features of un-augmented images already computed in this process, by image file: the
    advisor's measuring pass runs the same pretrained blocks with the same eval transform as the head's
    feature cache, which then computes only the images it lacks (`train --strategy auto`)."""

    def __init__(self):
        self._by_model: dict[str, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _fingerprint(model: BlockNet, n: int, preprocessing) -> str:
        h = hashlib.sha256(json.dumps({"arch": getattr(model, "arch", type(model).__name__), "freeze": n,
                                       "preprocessing": preprocessing.to_dict()}).encode())
        _hash_prefix(h, model, n)
        return h.hexdigest()

    def add(self, model: BlockNet, n: int, preprocessing, paths, features: torch.Tensor) -> None:
        """Keep the outputs of blocks[:n] (one row per path) for a later lookup."""
        rows = self._by_model.setdefault(self._fingerprint(model, n, preprocessing), {})
        rows.update({str(p): f for p, f in zip(paths, features.float().cpu())})

    def rows(self, model: BlockNet, n: int, preprocessing, paths) -> dict[int, torch.Tensor]:
        """index in `paths` -> its kept features, for the paths this model's blocks[:n] have seen."""
        if not self._by_model:
            return {}
        rows = self._by_model.get(self._fingerprint(model, n, preprocessing), {})
        return {i: rows[str(p)] for i, p in enumerate(paths) if str(p) in rows}


class FeatureStore:
    """Cached activations on disk (safetensors), one file per key, reused across epochs and runs."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """Where an entry lives on disk."""
        return self.root / f"features-{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached features, or None (a corrupt entry counts as missing)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["features"]
        except Exception:  # a damaged cache file is recomputed, never trusted
            return None

    def put(self, key: str, features: torch.Tensor) -> None:
        """Store features atomically as safetensors."""
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(key)) as tmp:
            save_file({"features": features.contiguous()}, str(tmp))


class TensorBatches:
    """Mini-batches from in-memory tensors: shuffled with a seeded generator, or drawn by class weight;
    `passes` times over them (each in a fresh order) per iteration.

    With several processes each takes every world-th item of the same permutation, padded (like
    DistributedSampler) so that all processes run the same number of steps.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                 sample_weights: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 rank: int = 0, world: int = 1, pad: bool = True, passes: int = 1):
        self.features, self.labels, self.passes = features, labels, passes
        self.batch_size, self.shuffle = batch_size, shuffle
        self.sample_weights = sample_weights
        self.generator = generator if generator is not None else torch.Generator()
        self.rank, self.world, self.pad = rank, world, pad

    def _shard_size(self) -> int:
        n = len(self.labels)
        return math.ceil(n / self.world) if self.pad else len(range(self.rank, n, self.world))

    def __len__(self):
        return self.passes * math.ceil(self._shard_size() / self.batch_size)

    def __iter__(self):
        for _ in range(self.passes):
            yield from self._one_pass()

    def _one_pass(self):
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
