"""Frozen-prefix feature caching: run the frozen blocks once per image (per augmented view), then
train only the rest of the network from the cached activations."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from ..core.device import channels_last_on_cpu, forward_in_passes
from ..core.io import atomic_path
from ..models import BlockNet

CACHE_FORMAT = 2  # 2: the decode side in the key, no seed for the eval view

# Near duplicates (shared by `transferlab audit` and train's leakage check): a pair is one when one image
# is among the other's NEAR_DUPLICATE_NEIGHBOURS nearest (in penultimate features; the audit also looks
# at thumbnails), their features' cosine is >= NEAR_DUPLICATE_COSINE, and their thumbnail signatures
# (data.images) correlate at or above a threshold calibrated on the data (pixel_threshold).
# Measured with efficientnet_lite0 at 224 px, `python bench/audit.py --calibrate --per-class 20`
# (copies: re-encoded at JPEG quality 55-75, resized to 60-125%, cropped by a few pixels):
#   feature cosine         copies min (p1)   nearest distinct same-class photo p99 / max
#     flowers  (100)       0.797 (0.802)     0.893 / 0.893
#     clothing (200)       0.843 (0.848)     0.788 / 0.790
#     eurosat  (200)       0.426 (0.535)     0.995 / 0.995   (64 px tiles; much water and field)
#   thumbnail correlation  copies min / p3   5 nearest distinct same-class photos p99 / max
#     flowers              0.962 / 0.978     0.539 / 0.589   (calibrated threshold 0.937)
#     clothing             0.974 / 0.985     0.763 / 0.934   (0.960)
#     eurosat              0.000 / 0.690     0.380 / 0.595   (0.887; featureless water scores 0)
# No feature threshold separates copies from distinct images, so the features (cached anyway) propose
# candidates and the thumbnails decide.
NEAR_DUPLICATE_COSINE = 0.5
NEAR_DUPLICATE_PIXELS = 0.96  # the most the calibrated threshold asks (see pixel_threshold)
NEAR_DUPLICATE_NEIGHBOURS = 5

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
    for name in model.block_names[:n]:
        for key, tensor in model.blocks[name].state_dict().items():
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for path in paths:
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:32]


def normalized_rows(features: torch.Tensor) -> torch.Tensor:
    """Features flattened per image and scaled to unit length (for cosine similarity)."""
    f = features.flatten(1).float()
    return f / f.norm(dim=1, keepdim=True).clamp(min=1e-12)


def nearest_pairs(a: torch.Tensor, b: torch.Tensor | None, threshold: float, k: int,
                  chunk: int = 1024) -> list[tuple[int, int, float]]:
    """(i, j, cosine) for each row i of `a` and its k most similar rows j of `b` (unit-length) at or
    above `threshold`; with b None, within `a` (no self pairs; each unordered pair once, i < j)."""
    same = b is None
    b = a if same else b
    k = min(k, len(b) - (1 if same else 0))
    found: dict[tuple[int, int], float] = {}
    if k <= 0:
        return []
    for start in range(0, len(a), chunk):
        sims = a[start:start + chunk] @ b.T
        if same:
            idx = torch.arange(start, start + len(sims))
            sims[torch.arange(len(sims)), idx] = -2.0
        values, cols = sims.topk(k, dim=1)
        for r, (vs, cs) in enumerate(zip(values.tolist(), cols.tolist())):
            for v, c in zip(vs, cs):
                if v >= threshold:
                    i, j = start + r, c
                    found[(min(i, j), max(i, j)) if same else (i, j)] = v
    return [(i, j, v) for (i, j), v in sorted(found.items())]


def near_duplicate_pairs(a: torch.Tensor, paths_a, b: torch.Tensor | None = None, paths_b=None,
                         cosine: float = NEAR_DUPLICATE_COSINE, pixels: float | None = None,
                         k: int = NEAR_DUPLICATE_NEIGHBOURS,
                         pixel_candidates: bool = False) -> tuple[list[tuple[int, int, float, float]], float]:
    """(i, j, feature cosine, thumbnail correlation) of near-duplicate images, and the correlation used:
    candidates are each image's k nearest in features (and, with pixel_candidates, in thumbnails too:
    every image's signature is computed), confirmed by their thumbnails (data.images.thumbnail_signature)
    at or above `pixels`; None: calibrated on this data (pixel_threshold)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..core.device import available_cpus
    from ..data.images import signature_correlation, thumbnail_signature

    paths_b = paths_a if b is None else paths_b
    signatures: dict[str, object] = {}

    def signature(path):
        key = str(path)
        if key not in signatures:
            signatures[key] = thumbnail_signature(path)
        return signatures[key]

    candidates = {(i, j) for i, j, _ in nearest_pairs(a, b, cosine, k)}
    if pixel_candidates:
        everything = list(dict.fromkeys(map(str, list(paths_a) + (list(paths_b) if b is not None else []))))
        with ThreadPoolExecutor(max_workers=available_cpus()) as pool:
            signatures.update(zip(everything, pool.map(thumbnail_signature, everything)))

        def whole(paths):
            rows = [signature(p) for p in paths]
            width = next((r[0].shape[1] for r in rows if r is not None), 1)
            return torch.from_numpy(np.stack([r[0][0] if r is not None else np.zeros(width, np.float32)
                                              for r in rows]))

        candidates |= {(i, j) for i, j, _ in nearest_pairs(whole(paths_a), None if b is None else whole(paths_b),
                                                            0.8, k)}
    scored = []
    bb = a if b is None else b
    for i, j in sorted(candidates):
        sa, sb = signature(paths_a[i]), signature(paths_b[j])
        v = float(a[i] @ bb[j])
        # a pixel neighbour must look alike to the model too, which keeps out what merely correlates in
        # grey levels (a dark object on a light floor)
        if sa is not None and sb is not None and v >= cosine:
            scored.append((i, j, v, signature_correlation(sa, sb)))
    if pixels is None:
        pixels = pixel_threshold(list(paths_a) + (list(paths_b) if b is not None else []), [c for *_, c in scored])
    return [p for p in scored if p[3] >= pixels], pixels


def pixel_threshold(paths, candidates) -> float:
    """The thumbnail correlation that makes a candidate pair a near duplicate, measured on the data:
    the 3rd percentile of what copies made of its own images score (data.images.copy_correlations),
    never below the 99.5th percentile of the candidate pairs (nearly all distinct images), and at
    most NEAR_DUPLICATE_PIXELS. Small, textured images (EuroSAT's 64 px tiles) need it far lower than
    photos: measured copies p5 0.79-0.90 vs distinct neighbours up to 0.68 there, copies >= 0.977 vs
    distinct up to 0.934 on the clothing photos."""
    import numpy as np

    from ..data.images import copy_correlations

    copies = copy_correlations(paths)
    if len(copies) == 0:
        return NEAR_DUPLICATE_PIXELS
    low = float(np.quantile(copies, 0.03))
    distinct = float(np.quantile(candidates, 0.995)) if len(candidates) else 0.0
    return min(NEAR_DUPLICATE_PIXELS, max(low, distinct + 0.02))


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
