"""The training loop: phases of a strategy, schedules, mixed precision, checkpoints, resume, early stopping."""
from __future__ import annotations

import contextlib
import csv
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, WeightedRandomSampler
from tqdm.auto import tqdm

from . import artifact
from .data import DecodedImages, ImageSamples, class_weights, drop_failed, scan_dataset
from .device import (CPU_PASS_IMAGES, channels_last_on_cpu, cpu_layout, default_workers, forward_in_passes,
                     pick_device)
from .distributed import (all_reduce_sums, barrier, broadcast_object, gather_shards, init_distributed,
                          process_device, shutdown)
from .config import TrainConfig
from .errors import TransferlabError
from .features import FeatureStore, TensorBatches, cache_fits, feature_cache_key, prefix_features
from .io import atomic_torch_save, safe_torch_load, save_weights
from .models import BlockNet, create_model
from .strategies import Phase, effective_bn_policy, param_groups, plan_phases

DECODE_BUDGET_PIXELS = 400_000_000  # ~1.2 GB of RGB: above this, images are decoded per epoch


@dataclass
class Run:
    """What train() returns: where the run lives, its metrics, and the trained model."""

    path: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    classifier: object = None

    @property
    def model(self):
        return self.classifier.model


class NonFiniteLoss(TransferlabError):
    pass


class TrainForward(nn.Module):
    """The training forward from block `start` on; a frozen prefix (not cached) runs without autograd.

    Wrapped in DistributedDataParallel when several processes train, so DDP sees every call.
    """

    def __init__(self, model: BlockNet, start: int):
        super().__init__()
        self.model, self.start = model, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model, start, n = self.model, self.start, self.model.frozen_blocks
        if start == 0 and n > 0:
            with torch.no_grad():
                x = model.forward_blocks(x, 0, n)
            start = n
        return model.forward_blocks(x, start, len(model.block_names))


class Trainer:
    def __init__(self, data, config: TrainConfig, out=None, resume: bool = False, progress: bool = True,
                 callbacks=()):
        config.validate()
        self.cfg = config
        device = pick_device(config.device)
        self.dist = init_distributed(device)
        self.device = process_device(device, self.dist)
        self.progress = progress and self.dist.is_main
        self.callbacks = list(callbacks)
        self.amp_dtype = self._amp_dtype()
        # rank 0 alone names and creates the run folder; the others follow its answer
        self.out = Path(broadcast_object(str(out) if out else str(default_run_dir(data, config)), self.dist))
        self.resume = resume
        if not resume:
            self._on_main(artifact.prepare_run_dir, self.out)
        elif self.dist.is_main:
            artifact.remove_stale_temp_files(self.out)
        if self.dist.enabled and config.balance == "sampler":
            raise TransferlabError("--balance sampler is not supported with several processes; use --balance weights")
        self.scan = scan_dataset(data, config.val_split, config.seed)
        self.log(self.scan.summary())
        torch.manual_seed(config.seed)
        weights = "none" if config.strategy == "scratch" else config.weights
        self.model: BlockNet = create_model(config.model, num_classes=len(self.scan.classes), weights=weights)
        if config.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise TransferlabError("--sync-bn needs GPUs (nccl); drop it for CPU processes")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        if config.image_size:
            self.model.preprocessing = self.model.preprocessing.resized(config.image_size)
        self.pre = self.model.preprocessing
        self.decoded = self._decode_once()
        self.history: list[dict] = []
        self.best = {"val_loss": math.inf, "val_acc": -1.0, "epoch": 0}
        self.phases: list[Phase] = []

    # --- set-up ------------------------------------------------------------------------------
    def _on_main(self, fn, *args):
        """Run fn on rank 0 only; a user error there is raised on every rank (none is left waiting)."""
        error = None
        if self.dist.is_main:
            try:
                fn(*args)
            except TransferlabError as e:
                error = str(e)
        error = broadcast_object(error, self.dist)
        if error:
            raise TransferlabError(error)

    def _amp_dtype(self):
        if self.cfg.amp == "off" or (self.cfg.amp == "auto" and self.device.type != "cuda"):
            return None
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16

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

    def log(self, message: str) -> None:
        if self.progress:
            tqdm.write(message, file=sys.stderr)

    # --- data --------------------------------------------------------------------------------
    def _labels(self, split: str) -> torch.Tensor:
        return torch.tensor([s.label for s in self.scan.splits[split]])

    def _sample_weights(self) -> torch.Tensor | None:
        if self.cfg.balance != "sampler":
            return None
        labels = self._labels("train")
        return class_weights(labels.tolist(), len(self.scan.classes))[labels]

    def image_loader(self, split: str, train: bool, generator: torch.Generator | None = None,
                     epoch: int = 0) -> DataLoader:
        transform = self.pre.train_transform(self.cfg.augment) if train else self.pre.eval_transform()
        dataset = ImageSamples(self.scan.splits[split], transform, self.decoded.get(split))
        weights = self._sample_weights() if train else None
        sampler = WeightedRandomSampler(weights, len(weights), generator=generator) if weights is not None else None
        if self.dist.enabled:
            if train:
                sampler = DistributedSampler(dataset, self.dist.world_size, self.dist.rank, shuffle=True,
                                             seed=self.cfg.seed)
                sampler.set_epoch(epoch)
            else:  # an exact shard (no padding) so that summed metrics count each image once
                dataset = Subset(dataset, range(self.dist.rank, len(dataset), self.dist.world_size))
        workers = self._workers(len(dataset))
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=train and sampler is None,
                          sampler=sampler, generator=generator, num_workers=workers,
                          pin_memory=self.device.type == "cuda")

    def _workers(self, items: int) -> int:
        # Measured on 2 shared cores (fine-tune, images decoded in memory): no worker process was ~20%
        # slower than one, so the transform stays in a worker even when decoding is already done.
        if self.cfg.workers is not None:
            return self.cfg.workers
        return default_workers(items, self.cfg.batch_size)

    def _use_feature_cache(self, phase: Phase) -> bool:
        if phase.freeze == 0 or self.cfg.cache_features == "off":
            return False
        views = 1 if self.cfg.augment == "none" else self.cfg.cache_views
        items = len(self.scan.splits["train"]) * views + len(self.scan.splits["val"])
        fits = cache_fits(self.model, phase.freeze, self.pre.input_size, items, 1, self.device)
        if self.cfg.cache_features == "on" and not fits:
            self.log("feature cache does not fit in memory; training without it")
        return fits

    def _cached_batches(self, phase: Phase):
        """Train views and val features of the frozen prefix, computed once for this phase."""
        n = phase.freeze
        # With augmentation, view 0 is the un-augmented image (what validation and prediction see);
        # the others are random augmentations, cycled over the epochs.
        count = self.cfg.cache_views if self.cfg.augment != "none" else 1
        names = ["eval"] + [f"{self.cfg.augment}-{v}" for v in range(1, count)]
        views = [self._cached_prefix("train", n, name, v)
                 for v, name in enumerate(tqdm(names, desc="caching features", disable=not self.progress, leave=False))]
        return views, self._cached_prefix("val", n, "eval", 0)

    def _cached_prefix(self, split: str, n: int, view: str, view_index: int) -> torch.Tensor:
        """Prefix features of a split for one view, from the on-disk store when --cache-dir has them."""
        store = FeatureStore(self.cfg.cache_dir) if self.cfg.cache_dir else None
        key = None
        if store is not None:
            paths = [s.path for s in self.scan.splits[split]]
            key = feature_cache_key(self.model, n, self.pre, paths, view, self.cfg.seed)
            hit = store.get(key)
            if hit is not None and len(hit) == len(paths):
                return hit
        torch.manual_seed(self.cfg.seed * 7919 + view_index)  # each view reproducible on its own
        features = self._prefix_features_sharded(split, n, augmented=view != "eval")
        if store is not None and self.dist.is_main:
            store.put(key, features)
        return features

    def _prefix_features_sharded(self, split: str, n: int, augmented: bool) -> torch.Tensor:
        """Each process computes the rows i = rank (mod world); all processes get every row."""
        samples = self.scan.splits[split]
        transform = self.pre.train_transform(self.cfg.augment) if augmented else self.pre.eval_transform()
        rows = list(range(self.dist.rank, len(samples), self.dist.world_size))
        dataset = Subset(ImageSamples(samples, transform, self.decoded.get(split)), rows)
        loader = DataLoader(dataset, batch_size=self.cfg.batch_size, num_workers=self._workers(len(rows)),
                            pin_memory=self.device.type == "cuda")
        return gather_shards(prefix_features(self.model, n, loader, self.device), rows, len(samples), self.dist)

    # --- optimisation ------------------------------------------------------------------------
    def _optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        return torch.optim.AdamW(param_groups(self.model, phase, self.cfg.weight_decay))

    def _scheduler(self, optimizer, phase: Phase, steps_per_epoch: int):
        total = max(1, phase.epochs * steps_per_epoch)
        warmup = min(int(0.2 * total), int(self.cfg.warmup_epochs * steps_per_epoch))
        kind = self.cfg.schedule

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

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _loss_fn(self) -> nn.Module:
        weight = None
        if self.cfg.balance == "weights":
            weight = class_weights(self._labels("train").tolist(), len(self.scan.classes)).to(self.device)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=self.cfg.label_smoothing)

    def _forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return net(x)

    def _training_net(self, start: int) -> nn.Module:
        net = TrainForward(self.model, start)
        if not self.dist.enabled:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)

    # --- epochs ------------------------------------------------------------------------------
    def _batch_statistics_computed(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.model.modules())

    def _micro_batch(self, x: torch.Tensor) -> int:
        """Images per forward/backward pass. Splitting a batch leaves its gradient unchanged only while no
        BatchNorm layer computes batch statistics; flat cached features are too small to gain from it."""
        value = str(self.cfg.micro_batch)
        if value.isdigit():
            return int(value)
        if value == "off" or self.device.type != "cpu" or x.dim() < 4 or self._batch_statistics_computed():
            return len(x)
        # also a quarter of the activation memory of a batch of 32 (lite0: 3.6 -> 1.6 GiB)
        return CPU_PASS_IMAGES

    def _checkpointed_blocks(self, micro_batch: int) -> int:
        """Recomputation costs time, so by default it is the fallback for CPU batches that stay whole."""
        value = str(self.cfg.grad_checkpointing)
        if value.isdigit():
            return int(value)
        if value == "off" or self.device.type != "cpu" or micro_batch < self.cfg.batch_size:
            return 0
        return self.model.high_resolution_blocks(self.pre.input_size)

    def _backward(self, net, x, y, loss_fn, scaler, scale: float, sync_last: bool, chunk: int):
        """Forward and backward over x in passes of `chunk` images; the gradients add up to those of one
        pass over the batch. Returns the summed per-image loss, the correct count and whether the loss
        was finite (a non-finite pass stops the batch)."""
        weight = getattr(loss_fn, "weight", None)  # class weights make the loss a weighted mean
        batch_weight = weight[y].sum() if weight is not None else len(y)
        total_loss, correct = 0.0, 0
        passes = list(zip(x.split(chunk), y.split(chunk)))
        for k, (xs, ys) in enumerate(passes):
            # DDP all-reduces the gradients once per optimizer step, in the backward of its last pass
            reduce_now = sync_last and k == len(passes) - 1
            sync = net.no_sync() if (self.dist.enabled and not reduce_now) else contextlib.nullcontext()
            with sync:
                logits = self._forward(net, cpu_layout(xs) if self.device.type == "cpu" else xs)
                loss = loss_fn(logits.float(), ys)
                if not torch.isfinite(loss):
                    return total_loss, correct, False
                share = (weight[ys].sum() if weight is not None else len(ys)) / batch_weight
                scaler.scale(loss * (share * scale)).backward()
            total_loss += loss.item() * len(ys)
            correct += (logits.argmax(1) == ys).sum().item()
        return total_loss, correct, True

    def _train_epoch(self, batches, net, optimizer, scheduler, loss_fn, scaler, desc: str) -> dict:
        self.model.train()
        total_loss, correct, seen, bad = 0.0, 0, 0, 0
        accum = self.cfg.accum_steps
        bar = tqdm(batches, desc=desc, leave=False, disable=not self.progress, unit="batch")
        optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(bar):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if i == 0:  # the same for every batch of the epoch: decided once, off the per-batch path
                chunk = self._micro_batch(x)
                self.model.checkpointed_blocks = self._checkpointed_blocks(chunk)
            step_now = (i + 1) % accum == 0 or i + 1 == len(batches)
            batch_loss, batch_correct, finite = self._backward(net, x, y, loss_fn, scaler, 1 / accum, step_now,
                                                               chunk)
            if not finite:
                bad += 1
                optimizer.zero_grad(set_to_none=True)
                if bad >= self.cfg.max_bad_steps:
                    raise NonFiniteLoss(
                        f"the loss was NaN/inf for {bad} consecutive steps: the learning rate is probably too "
                        f"high (current {optimizer.param_groups[-1]['lr']:.2g}); retry with a lower --lr or --lr find. "
                        f"The last good checkpoint is kept in {self.out / 'checkpoints'}"
                    )
                continue
            bad = 0
            if step_now:
                if self.cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            total_loss += batch_loss
            correct += batch_correct
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
        total_loss, correct, seen = all_reduce_sums([total_loss, correct, seen], self.dist, self.device)
        if seen == 0:
            raise NonFiniteLoss("no finite training step in this epoch; lower --lr")
        return {"train_loss": total_loss / seen, "train_acc": correct / seen}

    @torch.inference_mode()
    def _validate(self, batches, start: int, loss_fn) -> dict:
        self.model.eval()
        net = TrainForward(self.model, start)
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in batches:
            x, y = x.to(self.device), y.to(self.device)
            logits = forward_in_passes(lambda part: self._forward(net, part), x, self.device)
            total_loss += loss_fn(logits.float(), y).item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        total_loss, correct, seen = all_reduce_sums([total_loss, correct, seen], self.dist, self.device)
        return {"val_loss": total_loss / max(seen, 1), "val_acc": correct / max(seen, 1)}

    # --- the run -----------------------------------------------------------------------------
    def fit(self) -> Run:
        cfg = self.cfg
        state = self._load_checkpoint() if self.resume else None
        if state is None:
            self.phases = plan_phases(cfg.strategy, self.model, cfg.epochs, None if cfg.lr == "find" else cfg.lr,
                                      cfg.freeze, cfg.head_epochs, cfg.lr_mult)
            start_phase, start_epoch = 0, 0
        else:
            start_phase, start_epoch = state["phase"], state["phase_epoch"]
        loss_fn = self._loss_fn()
        epoch_offset = sum(p.epochs for p in self.phases[:start_phase])
        try:
            with channels_last_on_cpu(self.model, self.device):
                for pi in range(start_phase, len(self.phases)):
                    resumed = state if (state is not None and pi == start_phase and start_epoch > 0) else None
                    self._run_phase(pi, start_epoch if resumed else 0, epoch_offset, loss_fn, resumed)
                    epoch_offset += self.phases[pi].epochs
        except KeyboardInterrupt:
            self.log(f"interrupted: the last completed epoch is saved; resume with "
                     f"`transferlab train {self.scan.root} --resume {self.out}`")
            raise
        return self._finish()

    def _run_phase(self, pi: int, first_epoch: int, epoch_offset: int, loss_fn, state: dict | None) -> None:
        cfg = self.cfg
        phase = self.phases[pi]
        self.model.freeze(phase.freeze, effective_bn_policy(cfg.strategy, cfg.bn))
        cached = self._use_feature_cache(phase)
        if cached:
            views, val_features = self._cached_batches(phase)
            train_labels, sample_weights = self._labels("train"), self._sample_weights()
            val_batches = TensorBatches(val_features, self._labels("val"), cfg.batch_size * 4, shuffle=False,
                                        rank=self.dist.rank, world=self.dist.world_size, pad=False)
            start = phase.freeze

            def epoch_batches(epoch, generator):
                return TensorBatches(views[(epoch - 1) % len(views)], train_labels, cfg.batch_size, shuffle=True,
                                     sample_weights=sample_weights, generator=generator, rank=self.dist.rank,
                                     world=self.dist.world_size)
        else:
            val_batches = self.image_loader("val", train=False)
            start = 0

            def epoch_batches(epoch, generator):
                return self.image_loader("train", train=True, generator=generator, epoch=epoch)
        steps = math.ceil(len(epoch_batches(1, None)) / cfg.accum_steps)
        net = self._training_net(start)
        if cfg.lr == "find" and state is None:
            torch.manual_seed(cfg.seed)
            phase = self._find_lr(pi, phase, views[0] if cached else None, start, loss_fn)
        optimizer = self._optimizer(phase)
        scheduler = self._scheduler(optimizer, phase, steps)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        patience_left = cfg.patience
        phase_best = math.inf
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            patience_left, phase_best = state["patience_left"], state["phase_best"]
        for e in range(first_epoch, phase.epochs):
            epoch = epoch_offset + e + 1
            if cfg.patience and patience_left <= 0:
                break
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # same augmentations and dropout after a resume
            train_batches = epoch_batches(epoch, torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
            t0 = time.perf_counter()
            desc = f"epoch {epoch}/{sum(p.epochs for p in self.phases)} [{phase.name}]"
            row = {"epoch": epoch, "phase": phase.name, "lr": optimizer.param_groups[-1]["lr"]}
            row.update(self._train_epoch(train_batches, net, optimizer, scheduler, loss_fn, scaler, desc))
            row.update(self._validate(val_batches, start, loss_fn))
            self._check_divergence(row)
            row["time_s"] = round(time.perf_counter() - t0, 3)
            self.history.append(row)
            improved = row["val_loss"] < phase_best - 1e-4
            phase_best = min(phase_best, row["val_loss"])
            patience_left = cfg.patience if improved else patience_left - 1
            if (row["val_acc"], -row["val_loss"]) > (self.best["val_acc"], -self.best["val_loss"]):
                self.best = {"val_loss": row["val_loss"], "val_acc": row["val_acc"], "epoch": epoch}
                if self.dist.is_main:
                    save_weights(self.model.state_dict(), self.out / "checkpoints" / "best.safetensors")
            if self.dist.is_main:
                self._save_checkpoint(pi, e + 1, optimizer, scheduler, patience_left, phase_best)
                self._write_metrics()
            barrier(self.dist)
            self.log(f"epoch {epoch:>3} {phase.name:<15} train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
                     f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} | lr {row['lr']:.2e}"
                     f" | {row['time_s']:.1f}s")
            for callback in self.callbacks:
                callback(self, row)
            if cfg.patience and patience_left <= 0 and e + 1 < phase.epochs:
                self.log(f"early stopping: val loss has not improved for {cfg.patience} epochs")

    def _check_divergence(self, row: dict) -> None:
        """A finite but exploded loss (far above chance level, log K) means the lr is too high:
        stop before such weights overwrite the last good checkpoint."""
        limit = 100 * math.log(max(2, len(self.scan.classes))) + 10
        if not (math.isfinite(row["val_loss"]) and row["val_loss"] <= limit and row["train_loss"] <= limit):
            raise NonFiniteLoss(
                f"training diverged at epoch {row['epoch']} (val loss {row['val_loss']:.3g}): the learning rate "
                f"{row['lr']:.2g} is too high; retry with a lower --lr or --lr find. The last good checkpoint is "
                f"kept in {self.out / 'checkpoints'}"
            )

    def _find_lr(self, pi: int, phase: Phase, features, start: int, loss_fn) -> Phase:
        from .lr_finder import lr_range_test

        if features is not None:
            batches = TensorBatches(features, self._labels("train"), self.cfg.batch_size, shuffle=True)
        else:
            batches = self.image_loader("train", train=True, generator=torch.Generator().manual_seed(self.cfg.seed))
        net = TrainForward(self.model, start)
        result = lr_range_test(self.model, phase, batches, lambda x: self._forward(net, x), loss_fn, self.device,
                               self.cfg.weight_decay)
        suggestion = broadcast_object(result.suggestion, self.dist)  # every process trains with rank 0's choice
        self.log(f"lr find [{phase.name}]: suggested lr {suggestion:.2e}")
        self.phases[pi] = Phase(phase.name, phase.epochs, phase.freeze, suggestion, phase.lr_mult)
        return self.phases[pi]

    # --- persistence -------------------------------------------------------------------------
    def _save_checkpoint(self, pi, phase_epoch, optimizer, scheduler, patience_left, phase_best) -> None:
        atomic_torch_save(
            {
                "format": "transferlab-checkpoint/1",
                "model": self.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "phase": pi if phase_epoch < self.phases[pi].epochs else pi + 1,
                "phase_epoch": phase_epoch if phase_epoch < self.phases[pi].epochs else 0,
                "phases": [p.to_dict() for p in self.phases],
                "patience_left": patience_left,
                "phase_best": phase_best,
                "best": self.best,
                "history": self.history,
                "config": asdict(self.cfg),
            },
            self.out / "checkpoints" / "last.pt",
        )

    def _load_checkpoint(self) -> dict | None:
        path = self.out / "checkpoints" / "last.pt"
        if not path.is_file():
            raise TransferlabError(f"nothing to resume: {path} does not exist (start the run without --resume)")
        state = safe_torch_load(path)
        self.model.load_state_dict(state["model"])
        self.phases = [Phase(**p) for p in state["phases"]]
        self.history = list(state["history"])
        self.best = dict(state["best"])
        done = state["phase"] >= len(self.phases)
        self.log(f"{self.out}: training had already finished; writing the final artifacts again" if done
                 else f"resuming {self.out} after epoch {len(self.history)}")
        return state

    def _write_metrics(self) -> None:
        from .io import atomic_path

        if not self.history:
            return
        with atomic_path(self.out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.history[0].keys()))
            writer.writeheader()
            writer.writerows(self.history)

    def _finish(self) -> Run:
        best_path = self.out / "checkpoints" / "best.safetensors"
        if best_path.is_file():
            from safetensors.torch import load_file

            self.model.load_state_dict(load_file(str(best_path)))
        self.model.freeze(0, effective_bn_policy(self.cfg.strategy, self.cfg.bn))
        self.model.eval()
        metrics = {"best_epoch": self.best["epoch"], "val_acc": self.best["val_acc"], "val_loss": self.best["val_loss"],
                   "epochs_run": len(self.history)}
        if not self.dist.is_main:
            barrier(self.dist)
            return Run(self.out, metrics, self.history, None)
        clf = artifact.write_run(self.out, self.model, self.scan, self.cfg, self.phases, metrics, self.history)
        self.log(f"run saved to {self.out} (best val acc {metrics['val_acc']:.3f} at epoch {metrics['best_epoch']})")
        barrier(self.dist)
        return Run(self.out, clf.meta["metrics"], self.history, clf)


def default_run_dir(data, cfg: TrainConfig) -> Path:
    base = Path("runs") / f"{Path(data).resolve().name}-{cfg.model.replace(':', '_')}-{cfg.strategy}"
    path, i = base, 2
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def train(data, model: str = "efficientnet_lite0", strategy: str = "two-stage", out=None, resume: bool = False,
          progress: bool = True, callbacks=(), **options) -> Run:
    """Train a classifier on an image folder and save the run. Options are TrainConfig's fields."""
    unknown = set(options) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    if resume:
        saved = artifact.read_config(out)
        saved.update(options)
        cfg = TrainConfig.from_dict(saved)
    else:
        cfg = TrainConfig(model=model, strategy=strategy, **options)
        if cfg.strategy == "auto":
            from .advisor import advise_for_training

            cfg = advise_for_training(data, cfg, progress=progress)
        if cfg.strategy == "partial" and cfg.freeze == "auto":
            from .sweep import freeze_search

            return freeze_search(data, cfg, out=out, progress=progress)
    trainer = Trainer(data, cfg, out=out, resume=resume, progress=progress, callbacks=callbacks)
    try:
        return trainer.fit()
    finally:
        shutdown(trainer.dist)
