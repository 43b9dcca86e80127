"""Where training batches come from: image loaders over a split, or cached frozen-prefix features.

A TrainingCache holds what several runs on the same data can share: decoded images and the prefix
features of each freeze point. The freeze-depth search hands one cache to all its runs (valid because
every run starts from the same pretrained weights and the prefix stays frozen).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset, WeightedRandomSampler
from tqdm.auto import tqdm

from ..core.device import default_workers
from ..core.distributed import gather_shards
from ..data.folders import DecodedImages, ImageSamples, class_weights, drop_failed
from .features import CleanFeatures, FeatureStore, TensorBatches, cache_fits, feature_cache_key, prefix_features

DECODE_BUDGET_PIXELS = 400_000_000  # ~1.2 GB of RGB: above this, images are decoded per epoch


@dataclass
class TrainingCache:
    """Decoded images (per split) and prefix features (per freeze point), shared by runs on one dataset;
    clean: features the advisor computed before training (CleanFeatures)."""

    decoded: dict | None = None
    features: dict = field(default_factory=dict)
    clean: CleanFeatures = field(default_factory=CleanFeatures)

    def keep_only(self, freeze_points) -> None:
        """Free the features of freeze points no longer needed."""
        for n in [n for n in self.features if n not in set(freeze_points)]:
            del self.features[n]


class BatchSource:
    """Batches of one dataset scan for a trainer: loaders, sample weights, cached features."""

    def __init__(self, scan, preprocessing, cfg, device, dist, log, progress: bool,
                 cache: TrainingCache | None = None):
        self.scan, self.pre, self.cfg, self.device, self.dist = scan, preprocessing, cfg, device, dist
        self.log, self.progress = log, progress
        self.cache = cache if cache is not None else TrainingCache()
        self.features_computed = 0  # images run through a frozen prefix (not reused), for the pacer
        if self.cache.decoded is None:
            self.cache.decoded = self._decode_once()
        else:
            for images in set(self.cache.decoded.values()):
                drop_failed(self.scan, images)

    @property
    def decoded(self) -> dict:
        """Split -> DecodedImages (empty when the images would not fit the memory budget)."""
        return self.cache.decoded

    def _decode_once(self) -> dict[str, DecodedImages]:
        """Each split decoded once, at the resolution its transform needs (Preprocessing.decode_side):
        validation exactly as from the files, training with the pixels augmentation crops need."""
        sides = {"train": self.pre.decode_side(self.cfg.augment), "val": self.pre.decode_side("none")}
        pixels = sum(len(self.scan.splits[split]) * side * side * 1.5 for split, side in sides.items())
        if pixels > DECODE_BUDGET_PIXELS:
            return {}
        decoded = {}
        for side in sorted(set(sides.values())):
            splits = [split for split in sides if sides[split] == side]
            images = DecodedImages([s.path for split in splits for s in self.scan.splits[split]], max_side=side,
                                   cache_dir=self.cfg.cache_dir, interpolation=self.pre.interpolation)
            drop_failed(self.scan, images)
            if images.failed:
                self.log(f"skipped {len(images.failed)} image(s) that failed to decode")
            decoded.update({split: images for split in splits})
        return decoded

    # --- labels and weights ------------------------------------------------------------------
    def labels(self, split: str) -> torch.Tensor:
        """The targets of a split, in sample order: class indices, or multi-hot rows for multi-label data."""
        if self.scan.multilabel:
            return self.scan.targets(split)
        return torch.tensor([s.label for s in self.scan.splits[split]])

    def sample_weights(self) -> torch.Tensor | None:
        """Per-image sampling weights for --balance sampler (inverse class frequency), else None."""
        if self.cfg.balance != "sampler":
            return None
        labels = self.labels("train")
        return class_weights(labels.tolist(), len(self.scan.classes))[labels]

    # --- image batches -----------------------------------------------------------------------
    def image_loader(self, split: str, train: bool, generator: torch.Generator | None = None,
                     epoch: int = 0, side: int | None = None) -> DataLoader:
        """Decoded, transformed images of a split (augmented when `train`, at `side` when given: --progressive),
        sharded across processes."""
        pre = self.pre.resized(side) if side else self.pre
        transform = pre.train_transform(self.cfg.augment, self.cfg.augment_policy) if train else self.pre.eval_transform()
        targets = self.labels(split) if self.scan.multilabel else None
        dataset = ImageSamples(self.scan.splits[split], transform, self.decoded.get(split), targets)
        weights = self.sample_weights() if train else None
        sampler = WeightedRandomSampler(weights, len(weights), generator=generator) if weights is not None else None
        if self.dist.enabled:
            if train:
                sampler = DistributedSampler(dataset, self.dist.world_size, self.dist.rank, shuffle=True,
                                             seed=self.cfg.seed)
                sampler.set_epoch(epoch)
            else:  # an exact shard (no padding) so that summed metrics count each image once
                dataset = Subset(dataset, range(self.dist.rank, len(dataset), self.dist.world_size))
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=train and sampler is None,
                          sampler=sampler, generator=generator, num_workers=self.workers(len(dataset)),
                          pin_memory=self.device.type == "cuda")

    def workers(self, items: int) -> int:
        """Loader processes: the user's number, else from the machine and the job size."""
        # Measured on 2 shared cores (fine-tune, images decoded in memory): no worker process was ~20%
        # slower than one, so the transform stays in a worker even when decoding is already done.
        if self.cfg.workers is not None:
            return self.cfg.workers
        return default_workers(items, self.cfg.batch_size)

    # --- cached prefix features --------------------------------------------------------------
    def features_fit(self, model, prefix: int) -> bool:
        """Whether the prefix features of every view fit the memory budget (and caching is wanted)."""
        if prefix == 0 or self.cfg.cache_features == "off":
            return False
        views = 1 if self.cfg.augment == "none" else self.cfg.cache_views
        items = len(self.scan.splits["train"]) * views + len(self.scan.splits["val"])
        fits = cache_fits(model, prefix, self.pre.input_size, items, 1, self.device)
        if self.cfg.cache_features == "on" and not fits:
            self.log("feature cache does not fit in memory; training without it")
        return fits

    def cached_features(self, model, prefix: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Train views and val features of blocks[:prefix], computed once (per shared cache)."""
        if prefix not in self.cache.features:
            # With augmentation, view 0 is the un-augmented image (what validation and prediction see);
            # the others are random augmentations, cycled over the epochs.
            count = self.cfg.cache_views if self.cfg.augment != "none" else 1
            policy = self.cfg.augment_policy
            augment = self.cfg.augment if policy == "auto" else f"{self.cfg.augment}+{policy}"  # the store's key
            names = ["eval"] + [f"{augment}-{v}" for v in range(1, count)]
            views = [self._cached_prefix(model, "train", prefix, name, v)
                     for v, name in enumerate(tqdm(names, desc="caching features", disable=not self.progress,
                                                   leave=False))]
            self.cache.features[prefix] = (views, self._cached_prefix(model, "val", prefix, "eval", 0))
        return self.cache.features[prefix]

    def feature_batches(self, features: torch.Tensor, shuffle: bool, generator=None, batch_size=None,
                        split: str = "train", passes: int = 1) -> TensorBatches:
        """Batches over cached features of a split, sharded across processes, `passes` times per epoch."""
        train = split == "train"
        return TensorBatches(features, self.labels(split), batch_size or self.cfg.batch_size, shuffle=shuffle,
                             sample_weights=self.sample_weights() if train else None, generator=generator,
                             rank=self.dist.rank, world=self.dist.world_size, pad=train, passes=passes)

    def _cached_prefix(self, model, split: str, n: int, view: str, view_index: int) -> torch.Tensor:
        """Prefix features of a split for one view, from the on-disk store when --cache-dir has them; the
        clean view reuses what the advisor already computed (TrainingCache.clean) and computes the rest."""
        store = FeatureStore(self.cfg.cache_dir) if self.cfg.cache_dir else None
        paths = [s.path for s in self.scan.splits[split]]
        key = None
        if store is not None:
            decoded = self.decoded.get(split)
            key = feature_cache_key(model, n, self.pre, paths, view, self.cfg.seed,
                                    decoded.max_side if decoded is not None else None)
            hit = store.get(key)
            if hit is not None and len(hit) == len(paths):
                return hit
        known = self.cache.clean.rows(model, n, self.pre, paths) if view == "eval" else {}
        missing = [i for i in range(len(paths)) if i not in known]
        torch.manual_seed(self.cfg.seed * 7919 + view_index)  # each view reproducible on its own
        computed = self._prefix_features_sharded(model, split, n, view != "eval", missing) if missing else None
        if not known:
            if store is not None and self.dist.is_main:
                store.put(key, computed)
            return computed
        # not stored: the advisor's rows were decoded from the files, the store's key says otherwise
        self.log(f"{split}: reused the advisor's features of {len(known)} of {len(paths)} images")
        first = next(iter(known.values()))
        features = torch.empty((len(paths), *first.shape), dtype=first.dtype)
        features[list(known)] = torch.stack(list(known.values()))
        if computed is not None:
            features[missing] = computed
        return features

    def _prefix_features_sharded(self, model, split: str, n: int, augmented: bool, indices: list[int]) -> torch.Tensor:
        """blocks[:n] over the split's samples at `indices`: each process computes the rows i = rank (mod
        world); all processes get every row."""
        samples = self.scan.splits[split]
        transform = self.pre.train_transform(self.cfg.augment, self.cfg.augment_policy) if augmented else self.pre.eval_transform()
        rows = indices[self.dist.rank::self.dist.world_size]
        dataset = Subset(ImageSamples(samples, transform, self.decoded.get(split)), rows)
        loader = DataLoader(dataset, batch_size=self.cfg.batch_size, num_workers=self.workers(len(rows)),
                            pin_memory=self.device.type == "cuda")
        self.features_computed += len(indices)
        positions = list(range(self.dist.rank, len(indices), self.dist.world_size))  # this rank's rows, in `indices`
        return gather_shards(prefix_features(model, n, loader, self.device), positions, len(indices), self.dist)
