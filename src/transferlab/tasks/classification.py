"""Classification on the engine: one label per image from a class-folder dataset, softmax and
cross-entropy, the best epoch by validation accuracy (then loss); phases from the playbook's
strategies, frozen prefixes trained from cached features."""
from __future__ import annotations

import time

import torch
from torch import nn

from ..core.errors import TransferlabError
from ..core.options import LABEL_SMOOTHING_ONE_LABEL
from ..data.folders import cross_split_exact_duplicates, scan_dataset
from ..models import BlockNet, create_model
from ..runs.classification import write_run
from ..training.batches import BatchSource, TrainingCache
from ..training.loop import TrainForward, build_loss, check_divergence
from ..training.recipe import create_mixer
from ..training.strategies import effective_bn_policy, param_groups, plan_phases
from .base import PhaseData, Run, Task, refuse_options


class ClassificationTask(Task):
    """One label per image: a BlockNet with a new head, trained by the playbook's strategies."""

    name = "classifier"
    metric = "val_acc"
    default_label_smoothing = LABEL_SMOOTHING_ONE_LABEL

    def __init__(self, cache: TrainingCache | None = None, scan=None):
        self.cache, self.scan = cache, scan  # a scan read by the caller (tasks.create_task) is not read again

    def setup(self, trainer, data) -> None:
        cfg = self.cfg = trainer.cfg
        self.trainer, self.log = trainer, trainer.log
        refuse_options({"--format": cfg.data_format != "auto", "--lr-scaling": cfg.lr_scaling != "none"},
                       "for face detectors; a classifier reads a folder of class folders or a table")
        if cfg.label_smoothing is None:  # the run records the value it trained with
            cfg.label_smoothing = self.default_label_smoothing
        if trainer.dist.enabled and cfg.balance == "sampler":
            raise TransferlabError("--balance sampler is not supported with several processes; use --balance weights")
        if self.scan is None:
            self.scan = scan_dataset(data, cfg.val_split, cfg.seed, exclude=cfg.exclude)
        refuse_options({"--threshold": cfg.threshold is not None and not self.scan.multilabel},
                       "for multi-label data (several labels per image); a single-label classifier predicts the top class")
        self.log(self.scan.summary())
        # leakage: images of val/test that are also in train. The exact check reads every file once
        # (cheap); the near-duplicate one runs where the penultimate features get cached anyway
        self.leakage: dict | None = None
        if cfg.audit and trainer.dist.is_main:
            exact = cross_split_exact_duplicates(self.scan)
            self.leakage = {"exact": exact, "near": None}
            if exact:
                self.log(f"warning: {exact} validation/test image(s) are exact copies of training images, which "
                         f"inflates validation accuracy; `transferlab audit {data} --write-exclude FILE` lists them")
        torch.manual_seed(cfg.seed)
        weights = "none" if cfg.strategy == "scratch" else cfg.weights
        self.model: BlockNet = create_model(cfg.model, num_classes=len(self.scan.classes), weights=weights)
        if cfg.image_size:
            self.model.preprocessing = self.model.preprocessing.resized(cfg.image_size)
        self.input_size = self.model.preprocessing.input_size
        for why in (cfg.quality_reasons or {}).values():  # what the --quality level (or the data's pixels) chose
            self.log(f"quality {cfg.quality}: {why}")

    def bind_device(self, device, dist, progress) -> None:
        """Called once the model is on its device: the batch source decodes the images for it."""
        self.device = device
        self.batches = BatchSource(self.scan, self.model.preprocessing, self.cfg, device, dist, self.log, progress,
                                   self.cache)

    @property
    def data_root(self):
        return self.scan.root

    @property
    def val_images(self) -> int:
        return len(self.scan.splits["val"])

    @property
    def train_images(self) -> int:
        return len(self.scan.splits["train"])

    @property
    def bn_policy(self) -> str:
        """The BatchNorm policy in effect (see training.strategies.effective_bn_policy)."""
        return effective_bn_policy(self.cfg.strategy, self.cfg.bn)

    def plan_phases(self) -> list:
        cfg = self.cfg
        return plan_phases(cfg.strategy, self.model, cfg.epochs, None if cfg.lr == "find" else cfg.lr, cfg.freeze,
                           cfg.head_epochs, cfg.lr_mult, cfg.finetune_trial)

    def start_phase(self, phase, resumed: bool) -> PhaseData:
        if phase.fresh_head and not resumed:
            torch.manual_seed(self.cfg.seed)
            self.model.reset_classifier(len(self.scan.classes))
            self.model.to(self.device)
        self.model.freeze(phase.freeze, self.bn_policy)
        return self._phase_batches(phase)

    def head_passes(self, phase) -> int:
        """Passes over the cached features per epoch of a phase that trains the head alone from them."""
        return 1

    def _phase_batches(self, phase) -> PhaseData:
        """From cached prefix features when the frozen prefix fits in memory, else from the images."""
        prefix, pacer = self.model.frozen_blocks, self.trainer.pacer
        if not self.batches.features_fit(self.model, prefix):
            return PhaseData(0, lambda epoch, g, side: self.batches.image_loader("train", True, g, epoch, side),
                             self.batches.image_loader("val", train=False))
        t0, computed = time.perf_counter(), self.batches.features_computed
        views, val_features = self.batches.cached_features(self.model, prefix)
        elapsed, computed = time.perf_counter() - t0, self.batches.features_computed - computed
        if pacer and pacer.seconds_per_image is None and prefix == len(self.model.block_names) - 1 and elapsed > 0.5:
            # the frozen prefix is nearly the whole forward pass: its cost per image prices a
            # validation pass (a cache hit, or rows reused from the advisor, cost nothing and say nothing)
            pacer.seconds_per_image = elapsed / max(1, computed)
        self._check_near_duplicates(prefix, views[0], val_features)
        val = self.batches.feature_batches(val_features, shuffle=False, batch_size=self.cfg.batch_size * 4,
                                           split="val")
        passes = self.head_passes(phase) if prefix == len(self.model.block_names) - 1 else 1
        if passes > 1:
            self.log(f"{phase.name}: {passes} passes over the cached features per epoch")
        return PhaseData(prefix,
                         lambda epoch, g, _: self.batches.feature_batches(views[(epoch - 1) % len(views)], True, g,
                                                                          passes=passes),
                         val, views[0])

    def _check_near_duplicates(self, prefix: int, train_features, val_features) -> None:
        """Count val images that are near copies of a training image (candidates from the features cached
        at freeze point all-but-head, which cost nothing more, confirmed by their pixels); warn once."""
        if self.leakage is None or self.leakage["near"] is not None or prefix != len(self.model.block_names) - 1:
            return
        from ..auditing.near_duplicates import near_duplicate_pairs, normalized_rows

        pairs = near_duplicate_pairs(normalized_rows(val_features), [s.path for s in self.scan.splits["val"]],
                                     normalized_rows(train_features), [s.path for s in self.scan.splits["train"]])
        near = len({i for i, *_ in pairs})
        self.leakage["near"] = near
        if near > self.leakage["exact"]:
            self.log(f"warning: {near} validation image(s) are copies or near copies of training images; "
                     f"`transferlab audit {self.scan.root}` shows them")

    def training_net(self, start: int) -> nn.Module:
        return TrainForward(self.model, start)

    def lr_find_batches(self, data: PhaseData):
        """Batches for the learning-rate range test: the phase's own, in a fixed order."""
        if data.cached_train_features is not None:
            return self.batches.feature_batches(data.cached_train_features, True)
        return self.batches.image_loader("train", train=True, generator=torch.Generator().manual_seed(self.cfg.seed))

    def loss_fn(self) -> nn.Module:
        """Cross-entropy (class-weighted under --balance weights)."""
        return build_loss(self.cfg, self.batches.labels("train").tolist(), len(self.scan.classes), self.device)

    def param_groups(self, phase) -> list[dict]:
        return param_groups(self.model, phase, self.cfg.weight_decay)

    def batch_mixer(self):
        return create_mixer(self.cfg, len(self.scan.classes))

    def batch_correct(self, outputs, targets) -> int:
        if targets.dim() == 2:  # mixed targets (mixup/cutmix): right when the top class is the larger share
            targets = targets.argmax(1)
        return (outputs.argmax(1) == targets).sum().item()

    def loss_weight_share(self, loss_fn, targets, batch_targets) -> float:
        weight = getattr(loss_fn, "weight", None)  # class weights make the loss a weighted mean
        if weight is None or targets.dim() == 2:  # with probabilities as targets it is a plain mean
            return len(targets) / len(batch_targets)
        return weight[targets].sum() / weight[batch_targets].sum()

    def validate(self, val_batches, start: int, loss_fn) -> dict:
        return self.trainer.loop.validate(val_batches, start, loss_fn)

    def score(self, row: dict) -> tuple:
        return (row["val_acc"], -row["val_loss"])

    def stopping_value(self, row: dict) -> float:
        return row["val_loss"]

    def check_row(self, row: dict, hint: str) -> None:
        check_divergence(row, len(self.scan.classes), hint)

    def epoch_line(self, row: dict) -> str:
        return (f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | val loss {row['val_loss']:.4f} "
                f"acc {row['val_acc']:.3f}")

    def write_run(self, out, phases, best, history, extra) -> Run:
        self.model.freeze(0, self.bn_policy)
        self.model.eval()
        metrics = {"best_epoch": best["epoch"], self.metric: best[self.metric], "val_loss": best["val_loss"],
                   "epochs_run": len(history),
                   # which phase made the kept model: "head" means a two-stage run kept the frozen features
                   "best_phase": next((r["phase"] for r in history if r["epoch"] == best["epoch"]), None)}
        thresholds = self.decision_thresholds()
        if not self.trainer.dist.is_main:
            return Run(out, metrics, history, None)
        clf = write_run(out, self.model, self.scan, self.cfg, phases, metrics, history,
                        {**extra, "leakage": self.leakage}, thresholds)
        self.log(f"run saved to {out} (best {self.metric} {metrics[self.metric]:.3f} at epoch {metrics['best_epoch']})")
        return Run(out, clf.meta["metrics"], history, clf)

    def decision_thresholds(self) -> list[float] | None:
        """A multi-label run's per-label thresholds, chosen on validation (None: single-label)."""
        return None
