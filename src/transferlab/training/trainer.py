"""The Trainer: a strategy's phases over one dataset, with checkpoints, resume and early stopping.

Its parts live beside it: batches.py (where batches come from, cached features included), loop.py
(one epoch), schedules.py, early_stopping.py, checkpoint.py. `strategy="auto"` and `freeze="auto"`
are resolved above it (transferlab.api.train), so the Trainer only runs concrete plans.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.device import channels_last_on_cpu, pick_device
from ..core.distributed import barrier, broadcast_object, init_distributed, process_device
from ..core.errors import TransferlabError
from ..data.folders import cross_split_exact_duplicates, scan_dataset
from ..models import BlockNet, create_model
from ..runs.classification import write_run
from ..runs.folder import default_run_dir, prepare_run_dir, remove_stale_temp_files
from ..runs.metrics import write_metrics
from ..runs.report import pyplot
from .batches import BatchSource, TrainingCache
from .budget import Budget, Pacer
from .checkpoint import Checkpointer
from .config import TrainConfig
from .early_stopping import EarlyStopping
from .loop import Loop, NonFiniteLoss, build_loss, check_divergence
from .schedules import build_scheduler
from .strategies import Phase, effective_bn_policy, judge_trial, param_groups, plan_phases


@dataclass
class Run:
    """What train() returns: where the run lives, its metrics, and the trained model."""

    path: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    classifier: object = None

    @property
    def model(self):
        """The trained network (rank 0 only)."""
        return self.classifier.model


class Trainer:
    """Trains one classifier run: set-up in __init__, everything else in fit()."""

    def __init__(self, data, config: TrainConfig, out=None, resume: bool = False, progress: bool = True,
                 callbacks=(), cache: TrainingCache | None = None, budget: Budget | None = None):
        config.validate()
        self.cfg = config
        # the budget may have started earlier (the advisor's measuring counts against it)
        budget = budget or (Budget(config.budget) if config.budget else None)
        device = pick_device(config.device)
        self.dist = init_distributed(device)
        self.device = process_device(device, self.dist)
        self.progress = progress and self.dist.is_main
        self.callbacks = list(callbacks)
        # rank 0 alone names and creates the run folder; the others follow its answer
        # an auto run is named for what was asked, not for the strategy its plan resolved to
        default = default_run_dir(data, config.model, "auto" if config.advice else config.strategy)
        self.out = Path(broadcast_object(str(out) if out else str(default), self.dist))
        self.resume = resume
        if not resume:
            self._on_main(prepare_run_dir, self.out)
        elif self.dist.is_main:
            remove_stale_temp_files(self.out)
        if self.dist.enabled and budget is not None:
            raise TransferlabError("--budget is not supported with several processes; use --epochs")
        if self.dist.enabled and config.balance == "sampler":
            raise TransferlabError("--balance sampler is not supported with several processes; use --balance weights")
        self.scan = scan_dataset(data, config.val_split, config.seed, exclude=config.exclude)
        self.log(self.scan.summary())
        # leakage: images of val/test that are also in train. The exact check reads every file once
        # (cheap); the near-duplicate one runs where the penultimate features get cached anyway
        self.leakage: dict | None = None
        if config.audit and self.dist.is_main:
            exact = cross_split_exact_duplicates(self.scan)
            self.leakage = {"exact": exact, "near": None}
            if exact:
                self.log(f"warning: {exact} validation/test image(s) are exact copies of training images, which "
                         f"inflates validation accuracy; `transferlab audit {data} --write-exclude FILE` lists them")
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
        self.batches = BatchSource(self.scan, self.pre, config, self.device, self.dist, self.log, self.progress, cache)
        self.loop = Loop(self.model, config, self.device, self.dist, self.progress, self.pre.input_size)
        self.pacer = Pacer(budget, len(self.scan.splits["val"]), config.batch_size) if budget else None
        if self.pacer and self.dist.is_main:
            pyplot()  # its import is the slowest part of writing the run: pay it now, where the clock sees it
        self.checkpoints = Checkpointer(self.out)
        self.history: list[dict] = []
        self.best = {"val_loss": math.inf, "val_acc": -1.0, "epoch": 0}
        self.phases: list[Phase] = []
        # what adaptive phases and the budget decided, with their numbers (model.json "decisions")
        self.decisions: list[dict] = []
        self.out_of_time = False

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

    def log(self, message: str) -> None:
        """A line on stderr, from rank 0, unless progress output is off."""
        if self.progress:
            tqdm.write(message, file=sys.stderr)

    def loss_fn(self) -> nn.Module:
        """The training loss (class-weighted under --balance weights)."""
        return build_loss(self.cfg, self.batches.labels("train").tolist(), len(self.scan.classes), self.device)

    @property
    def _checkpoint_hint(self) -> str:
        return f"The last good checkpoint is kept in {self.checkpoints.folder}"

    # --- the run -------------------------------------------------------------------------------
    def fit(self) -> Run:
        """Train every phase (from the last checkpoint when resuming), then write the run folder."""
        cfg = self.cfg
        state = self._load_checkpoint() if self.resume else None
        if state is None:
            self.phases = plan_phases(cfg.strategy, self.model, cfg.epochs, None if cfg.lr == "find" else cfg.lr,
                                      cfg.freeze, cfg.head_epochs, cfg.lr_mult, cfg.finetune_trial)
            start_phase, start_epoch = 0, 0
        else:
            start_phase, start_epoch = state["phase"], state["phase_epoch"]
        loss_fn = self.loss_fn()
        epoch_offset = sum(p.epochs for p in self.phases[:start_phase])
        try:
            with channels_last_on_cpu(self.model, self.device):
                for pi in range(start_phase, len(self.phases)):
                    resumed = state if (state is not None and pi == start_phase and start_epoch > 0) else None
                    self._run_phase(pi, start_epoch if resumed else 0, epoch_offset, loss_fn, resumed)
                    epoch_offset += self.phases[pi].epochs
                    if self.out_of_time or self._trial_failed():
                        break
        except KeyboardInterrupt:
            self.log(f"interrupted: the last completed epoch is saved; resume with "
                     f"`transferlab train {self.scan.root} --resume {self.out}`")
            raise
        return self._finish()

    def _phase_batches(self, phase: Phase):
        """(start block, epoch -> train batches, val batches) for a phase: from cached prefix features
        when the frozen prefix fits in memory, else from the images."""
        prefix = self.model.frozen_blocks
        if self.batches.features_fit(self.model, prefix):
            t0 = time.perf_counter()
            views, val_features = self.batches.cached_features(self.model, prefix)
            elapsed = time.perf_counter() - t0
            if self.pacer and self.pacer.seconds_per_image is None and prefix == len(self.model.block_names) - 1 \
                    and elapsed > 0.5:
                # the frozen prefix is nearly the whole forward pass: its cost per image prices a
                # validation pass (a cache hit costs nothing and says nothing)
                self.pacer.seconds_per_image = elapsed / (sum(len(v) for v in views) + len(val_features))
            self._check_near_duplicates(prefix, views[0], val_features)
            val = self.batches.feature_batches(val_features, shuffle=False, batch_size=self.cfg.batch_size * 4,
                                               split="val")
            return prefix, (lambda epoch, g: self.batches.feature_batches(views[(epoch - 1) % len(views)], True, g)), \
                val, views[0]
        val = self.batches.image_loader("val", train=False)
        return 0, (lambda epoch, g: self.batches.image_loader("train", True, g, epoch)), val, None

    def _check_near_duplicates(self, prefix: int, train_features, val_features) -> None:
        """Count val images that are near copies of a training image (candidates from the features cached
        at freeze point all-but-head, which cost nothing more, confirmed by their pixels); warn once in
        one line."""
        if self.leakage is None or self.leakage["near"] is not None or prefix != len(self.model.block_names) - 1:
            return
        from ..audit.near_duplicates import near_duplicate_pairs, normalized_rows

        pairs = near_duplicate_pairs(normalized_rows(val_features), [s.path for s in self.scan.splits["val"]],
                                     normalized_rows(train_features), [s.path for s in self.scan.splits["train"]])
        near = len({i for i, *_ in pairs})
        self.leakage["near"] = near
        if near > self.leakage["exact"]:
            self.log(f"warning: {near} validation image(s) are copies or near copies of training images; "
                     f"`transferlab audit {self.scan.root}` shows them")

    def _run_phase(self, pi: int, first_epoch: int, epoch_offset: int, loss_fn, state: dict | None) -> None:
        cfg = self.cfg
        if self.pacer and pi > 0 and state is None and not self._fit_to_budget(pi, epoch_offset):
            return
        phase = self.phases[pi]
        if phase.fresh_head and state is None:
            torch.manual_seed(cfg.seed)
            self.model.reset_classifier(len(self.scan.classes))
            self.model.to(self.device)
        self.model.freeze(phase.freeze, effective_bn_policy(cfg.strategy, cfg.bn))
        start, epoch_batches, val_batches, features = self._phase_batches(phase)
        steps = math.ceil(len(epoch_batches(1, None)) / cfg.accum_steps)
        net = self.loop.training_net(start)
        if cfg.lr == "find" and state is None:
            torch.manual_seed(cfg.seed)
            phase = self._find_lr(pi, phase, features, start, loss_fn)
        optimizer = torch.optim.AdamW(param_groups(self.model, phase, cfg.weight_decay))
        scheduler = build_scheduler(optimizer, cfg.schedule, phase.epochs, steps, cfg.warmup_epochs)
        scaler = self.loop.grad_scaler()
        stopping = EarlyStopping(cfg.patience)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            stopping.load_state_dict(state["early_stopping"])
        total_epochs = sum(p.epochs for p in self.phases)
        earlier = [r for r in self.history if r["epoch"] <= epoch_offset]
        before = {"val_loss": min((r["val_loss"] for r in earlier), default=math.inf),
                  "val_acc": max((r["val_acc"] for r in earlier), default=0.0)}
        for e in range(first_epoch, phase.epochs):
            epoch = epoch_offset + e + 1
            if stopping.should_stop or self._trial_failed() or not self._epoch_fits(epoch, phase, epoch_offset):
                break
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # same augmentations and dropout after a resume
            train_batches = epoch_batches(epoch, torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
            t0 = time.perf_counter()
            row = {"epoch": epoch, "phase": phase.name, "lr": optimizer.param_groups[-1]["lr"]}
            try:
                row.update(self.loop.train_epoch(train_batches, net, optimizer, scheduler, loss_fn, scaler,
                                                 f"epoch {epoch}/{total_epochs} [{phase.name}]", self._checkpoint_hint,
                                                 stop=self.pacer and self.pacer.batch_deadline(start == 0)))
                row["train_time_s"] = round(time.perf_counter() - t0, 3)
                t_val = time.perf_counter()
                row.update(self.loop.validate(val_batches, start, loss_fn))
                if self.pacer and start == 0:
                    self.pacer.seconds_per_image = (time.perf_counter() - t_val) / max(1, len(self.scan.splits["val"]))
                check_divergence(row, len(self.scan.classes), self._checkpoint_hint)
            except NonFiniteLoss as e:
                if not phase.trial:
                    raise
                # an adaptive phase that diverges has failed its trial: the best model so far stands
                self._decide("trial", epoch, f"{phase.name} abandoned: {str(e).split(';')[0]}; the best model so far "
                             "is kept", phase=phase.name, kept=False, best=None, before=before)
                break
            if row.get("cut_short"):
                self._decide("budget", epoch, f"epoch {epoch} cut short after {row['cut_short']:.0%} of its batches "
                             f"to finish within the budget", left_s=round(self.pacer.budget.left(), 1))
                self.out_of_time = True
            row["time_s"] = round(time.perf_counter() - t0, 3)
            self.history.append(row)
            stopping.update(row["val_loss"])
            if (row["val_acc"], -row["val_loss"]) > (self.best["val_acc"], -self.best["val_loss"]):
                self.best = {"val_loss": row["val_loss"], "val_acc": row["val_acc"], "epoch": epoch}
                if self.dist.is_main:
                    self.checkpoints.save_best(self.model.state_dict())
            if phase.trial and e + 1 == phase.trial:
                rows = [r for r in self.history if r["epoch"] > epoch_offset]
                best = {"val_loss": min(r["val_loss"] for r in rows), "val_acc": max(r["val_acc"] for r in rows)}
                kept, text = judge_trial(phase, best, before)
                self._decide("trial", epoch, text, phase=phase.name, kept=kept, best=best, before=before)
            if self.dist.is_main:
                self._save_checkpoint(pi, e + 1, optimizer, scheduler, stopping)
                write_metrics(self.out / "metrics.csv", self.history)
            barrier(self.dist)
            self.log(f"epoch {epoch:>3} {phase.name:<15} train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
                     f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} | lr {row['lr']:.2e}"
                     f" | {row['time_s']:.1f}s")
            for callback in self.callbacks:
                callback(self, row)
            if stopping.should_stop and e + 1 < phase.epochs:
                self.log(f"early stopping: val loss has not improved for {cfg.patience} epochs")
            if self.out_of_time:
                break

    # --- adaptive phases and the budget ----------------------------------------------------------
    def _decide(self, event: str, epoch: int, text: str, **numbers) -> None:
        """Record a decision taken during training, with its numbers, and say it."""
        self.decisions.append({"event": event, "epoch": epoch, "text": text, **numbers})
        self.log(f"{event}: {text}")

    def _fit_to_budget(self, pi: int, epoch_offset: int) -> bool:
        """A later phase (fine-tuning after the head), as it starts under a budget, gets the epochs
        that fit (its schedule is planned for them), by the speed measured so far; False when not one fits."""
        phase = self.phases[pi]
        fits = self.pacer.epochs_that_fit(len(self.scan.splits["train"]), phase.epochs)
        if fits == phase.epochs:
            return True
        left = round(self.pacer.budget.left(), 1)
        if fits == 0:
            self._decide("budget", epoch_offset + 1, f"{phase.name} not started: not one epoch fits in the {left:.0f}s "
                         "left; the best model so far is kept", left_s=left)
            self.out_of_time = True
            return False
        self.phases[pi] = replace(phase, epochs=fits, trial=min(phase.trial, fits))
        self._decide("budget", epoch_offset + 1, f"{phase.name} gets {fits} of its {phase.epochs} epochs: what fits "
                     f"in the {left:.0f}s left", left_s=left)
        return True

    def _trial_failed(self) -> bool:
        return any(d["event"] == "trial" and not d["kept"] for d in self.decisions)

    def _epoch_fits(self, epoch: int, phase: Phase, epoch_offset: int) -> bool:
        """Before an epoch: under a budget, start it only if an epoch like the last one of this phase
        still ends in time, leaving the time to write the run."""
        if self.pacer is None or not self.history:  # a run that trained nothing would have nothing to keep
            return True
        last = [r["time_s"] for r in self.history if r["epoch"] > epoch_offset]
        need = self.pacer.epoch_need(last[-1] if last else None)
        if self.pacer.budget.fits(need):
            return True
        left = self.pacer.budget.left()
        self._decide("budget", epoch, f"not starting epoch {epoch} [{phase.name}]: {left:.0f}s left, it needs "
                     f"~{need:.0f}s with writing the run", left_s=round(left, 1))
        self.out_of_time = True
        return False

    def _find_lr(self, pi: int, phase: Phase, features, start: int, loss_fn) -> Phase:
        from .lr_finder import lr_range_test

        if features is not None:
            batches = self.batches.feature_batches(features, True)
        else:
            batches = self.batches.image_loader("train", train=True,
                                                generator=torch.Generator().manual_seed(self.cfg.seed))
        net = self.loop.training_net(start)
        result = lr_range_test(self.model, phase, batches, lambda x: self.loop.forward(net, x), loss_fn, self.device,
                               self.cfg.weight_decay)
        suggestion = broadcast_object(result.suggestion, self.dist)  # every process trains with rank 0's choice
        self.log(f"lr find [{phase.name}]: suggested lr {suggestion:.2e}")
        self.phases[pi] = replace(phase, lr=suggestion)
        return self.phases[pi]

    # --- persistence ---------------------------------------------------------------------------
    def _save_checkpoint(self, pi, phase_epoch, optimizer, scheduler, stopping: EarlyStopping) -> None:
        done = phase_epoch >= self.phases[pi].epochs
        self.checkpoints.save({
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "phase": pi + 1 if done else pi,
            "phase_epoch": 0 if done else phase_epoch,
            "phases": [p.to_dict() for p in self.phases],
            "early_stopping": stopping.state_dict(),
            "best": self.best,
            "history": self.history,
            "decisions": self.decisions,
            "config": asdict(self.cfg),
            "budget_used_s": self.pacer.budget.elapsed() if self.pacer else None,
        })

    def _load_checkpoint(self) -> dict:
        state = self.checkpoints.load()
        self.model.load_state_dict(state["model"])
        self.phases = [Phase(**p) for p in state["phases"]]
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.decisions = list(state.get("decisions", []))
        if self.pacer and state.get("budget_used_s"):
            # a resumed run spends what is left of its budget, not a new one
            self.pacer.budget.start -= state["budget_used_s"]
            self._decide("budget", len(self.history) + 1, f"resumed with {state['budget_used_s']:.0f}s of the "
                         f"{self.pacer.budget.seconds:.0f}s budget already used", used_s=round(state["budget_used_s"], 1))
        done = state["phase"] >= len(self.phases)
        self.log(f"{self.out}: training had already finished; writing the final artifacts again" if done
                 else f"resuming {self.out} after epoch {len(self.history)}")
        return state

    def _finish(self) -> Run:
        best = self.checkpoints.best_weights()
        if best is not None:
            self.model.load_state_dict(best)
        self.model.freeze(0, effective_bn_policy(self.cfg.strategy, self.cfg.bn))
        self.model.eval()
        metrics = {"best_epoch": self.best["epoch"], "val_acc": self.best["val_acc"], "val_loss": self.best["val_loss"],
                   "epochs_run": len(self.history),
                   # which phase made the kept model: "head" means a two-stage run kept the frozen features
                   "best_phase": next((r["phase"] for r in self.history if r["epoch"] == self.best["epoch"]), None)}
        if not self.dist.is_main:
            barrier(self.dist)
            return Run(self.out, metrics, self.history, None)
        distributed = {"world_size": self.dist.world_size,
                       "backend": torch.distributed.get_backend() if self.dist.enabled else None}
        extra = {"distributed": distributed, "leakage": self.leakage, "decisions": self.decisions}
        if self.pacer is not None:
            extra["budget"] = self.pacer.budget.to_dict()  # used_s excludes writing the run, which follows
        clf = write_run(self.out, self.model, self.scan, self.cfg, self.phases, metrics, self.history, extra)
        self.log(f"run saved to {self.out} (best val acc {metrics['val_acc']:.3f} at epoch {metrics['best_epoch']})")
        barrier(self.dist)
        return Run(self.out, clf.meta["metrics"], self.history, clf)
