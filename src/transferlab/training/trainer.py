"""The one training engine: a task's phases over its data, on one or several processes, with
checkpoints, resume, early stopping, a wall-clock budget and `--lr find`, keeping the best epoch by
the task's validation metric.

What differs per kind of model (data, model, loss, metric, run folder) is a Task (transferlab.tasks);
the engine's parts live beside it: loop.py (one epoch), schedules.py, early_stopping.py, checkpoint.py,
budget.py. `strategy="auto"` and `freeze="auto"` are resolved above it (transferlab.api.train), so the
Trainer only runs concrete plans.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.device import channels_last_on_cpu, pick_device
from ..core.distributed import barrier, broadcast_object, init_distributed, process_device
from ..core.errors import TransferlabError
from ..runs.folder import default_run_dir, prepare_run_dir, remove_stale_temp_files
from ..runs.metrics import write_metrics
from ..runs.report import pyplot
from .budget import Budget, Pacer
from .checkpoint import Checkpointer
from .config import TrainConfig
from .early_stopping import EarlyStopping
from .loop import Loop, NonFiniteLoss
from .recipe import WeightAverage, progressive_side
from .schedules import build_scheduler
from .strategies import Phase, judge_trial
from .tracking import Trackers, create_trackers


class Trainer:
    """Trains one run of a task: set-up in __init__, everything else in fit()."""

    def __init__(self, task, data, config: TrainConfig, out=None, resume: bool = False, progress: bool = True,
                 callbacks=(), budget: Budget | None = None, trackers=None):
        """trackers: what the run logs to (tracking.Tracker objects; None: those config.log names)."""
        config.validate()
        self.cfg, self.task = config, task
        # the budget may have started earlier (the advisor's measuring counts against it)
        budget = budget or (Budget(config.budget) if config.budget else None)
        device = pick_device(config.device)
        self.dist = init_distributed(device)
        self.device = process_device(device, self.dist)
        self.progress = progress and self.dist.is_main
        self.callbacks = list(callbacks)
        trackers = create_trackers(config.log) if trackers is None else trackers  # a missing library fails here
        # experiment trackers, guarded: one that fails is reported once and dropped. Rank 0 alone logs
        self.trackers = Trackers(trackers if self.dist.is_main else ())
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
        self.pacer: Pacer | None = None
        task.setup(self, data)
        self.model: nn.Module = task.model
        if config.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise TransferlabError("--sync-bn needs GPUs (nccl); drop it for CPU processes")
            self.model = task.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device)
        self.pacer = Pacer(budget, task.val_images, config.batch_size) if budget else None
        measured = (config.advice or {}).get("measurements")
        if self.pacer and measured and self.device.type == "cpu":
            # auto: the advisor's measuring pass (this backbone on this CPU, its statistics hooks included, so
            # a high price) prices a forward pass until training measures one (its rows may be reused)
            scale = (task.input_size / measured["input_size"]) ** 2
            self.pacer.seconds_per_image = measured["seconds_per_image"] * scale
        task.bind_device(self.device, self.dist, self.progress)
        self.loop = Loop(self.model, config, self.device, self.dist, self.progress, task.input_size, task)
        self.mixer = task.batch_mixer()
        if self.pacer and self.dist.is_main:
            pyplot()  # its import is the slowest part of writing the run: pay it now, where the clock sees it
        self.checkpoints = Checkpointer(self.out)
        self.history: list[dict] = []
        self.best: dict | None = None  # the kept epoch's row
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

    @property
    def _checkpoint_hint(self) -> str:
        return f"The last good checkpoint is kept in {self.checkpoints.folder}"

    # --- the run -------------------------------------------------------------------------------
    def fit(self):
        """Train every phase (from the last checkpoint when resuming), then write the run folder."""
        state = self._load_checkpoint() if self.resume else None
        if state is None:
            self.phases = self.task.plan_phases()
            start_phase, start_epoch = 0, 0
            self._measure_baseline()
        else:
            start_phase, start_epoch = state["phase"], state["phase_epoch"]
        loss_fn = self.task.loss_fn()
        epoch_offset = sum(p.epochs for p in self.phases[:start_phase])
        try:
            self.trackers.start(self)
            if state is None and self.history:
                self.trackers.epoch(self, self.history[0])  # the baseline, epoch 0
            with channels_last_on_cpu(self.model, self.device):
                for pi in range(start_phase, len(self.phases)):
                    resumed = state if (state is not None and pi == start_phase and start_epoch > 0) else None
                    self._run_phase(pi, start_epoch if resumed else 0, epoch_offset, loss_fn, resumed)
                    epoch_offset += self.phases[pi].epochs
                    if self.out_of_time or self._trial_failed():
                        break
            run = self._finish()
        except KeyboardInterrupt:
            self.trackers.end(self, None)
            self.log(f"interrupted: the last completed epoch is saved; resume with "
                     f"`transferlab train {self.task.data_root} --resume {self.out}`")
            raise
        except BaseException:
            self.trackers.end(self, None)
            raise
        self.trackers.end(self, run)
        return run

    def _measure_baseline(self) -> None:
        """Epoch 0, where the task has one: the starting model on the validation data, the bar to beat."""
        row = self.task.baseline()
        if row is None:
            return
        self.history.append(row)
        self.best = row
        self.log(f"epoch   0 {row['phase']:<15} {self.task.metric} {row[self.task.metric]:.4f}")
        if self.dist.is_main:
            write_metrics(self.out / "metrics.csv", self.history)

    def _run_phase(self, pi: int, first_epoch: int, epoch_offset: int, loss_fn, state: dict | None) -> None:
        cfg, task = self.cfg, self.task
        if self.pacer and pi > 0 and state is None and not self._fit_to_budget(pi, epoch_offset):
            return
        phase = self.phases[pi]
        if phase.trial and state is None and self._nothing_to_gain(phase, epoch_offset):
            return
        data = task.start_phase(phase, resumed=state is not None)
        steps = math.ceil(len(data.train_batches(1, None, None)) / cfg.accum_steps)
        net = self.loop.training_net(data.start)
        if cfg.lr == "find" and state is None:
            torch.manual_seed(cfg.seed)
            phase = self._find_lr(pi, phase, data, loss_fn)
        optimizer = torch.optim.AdamW(task.param_groups(phase))
        mix = self.mixer if data.start == 0 else None
        if self.mixer is not None and mix is None:
            self.log(f"mixup/cutmix: not in the {phase.name} phase, which trains from cached features")
        sides = self._progressive_sides(phase, data.start, epoch_offset)
        # a phase's weights are averaged from its own start (a new head, a new set of trainable blocks)
        ema = WeightAverage(self.model, cfg.ema) if cfg.ema else None
        scheduler = build_scheduler(optimizer, cfg.schedule, phase.epochs, steps, cfg.warmup_epochs,
                                    task.max_warmup_share)
        scaler = self.loop.grad_scaler()
        stopping = EarlyStopping(cfg.patience)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            stopping.load_state_dict(state["early_stopping"])
            if ema is not None and state.get("ema"):
                ema.restore(state["ema"])
        total_epochs = sum(p.epochs for p in self.phases)
        before = self._best_before(epoch_offset)
        for e in range(first_epoch, phase.epochs):
            epoch = epoch_offset + e + 1
            if stopping.should_stop or self._trial_failed() or not self._epoch_fits(epoch, phase, epoch_offset):
                break
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # same augmentations and dropout after a resume
            generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            train_batches = data.train_batches(epoch, generator, sides[e])
            t0 = time.perf_counter()
            # the phase's lr on its schedule (groups may scale it: per block, or per tensor for a detector)
            group = optimizer.param_groups[-1]
            row = {"epoch": epoch, "phase": phase.name, "lr": phase.lr * group["lr"] / group["initial_lr"]}
            try:
                row.update(self.loop.train_epoch(train_batches, net, optimizer, scheduler, loss_fn, scaler,
                                                 f"epoch {epoch}/{total_epochs} [{phase.name}]", self._checkpoint_hint,
                                                 stop=self.pacer and self.pacer.batch_deadline(data.start == 0),
                                                 mix=mix, after_step=ema and (lambda: ema.update(self.model))))
                row["train_time_s"] = round(time.perf_counter() - t0, 3)
                t_val = time.perf_counter()
                with ema.applied(self.model) if ema else contextlib.nullcontext():
                    row.update(task.validate(data.val_batches, data.start, loss_fn))
                if self.pacer and data.start == 0:
                    self.pacer.seconds_per_image = (time.perf_counter() - t_val) / max(1, task.val_images)
                task.check_row(row, self._checkpoint_hint)
            except NonFiniteLoss as e:
                if not phase.trial:
                    raise
                # an adaptive phase that diverges has failed its trial: the best model so far stands
                self._decide("trial", epoch, f"{phase.name} abandoned: {str(e).split(';')[0]}; the best model so far "
                             "is kept", phase=phase.name, kept=False, verdict="abandoned", best=None, before=before)
                break
            if row.get("cut_short"):
                self._decide("budget", epoch, f"epoch {epoch} cut short after {row['cut_short']:.0%} of its batches "
                             f"to finish within the budget", left_s=round(self.pacer.budget.left(), 1))
                self.out_of_time = True
            row["time_s"] = round(time.perf_counter() - t0, 3)
            self.history.append(row)
            stopping.update(task.stopping_value(row))
            if self.best is None or task.score(row) > task.score(self.best):
                self.best = row
                if self.dist.is_main:
                    self.checkpoints.save_best(ema.state_dict() if ema else self.model.state_dict())
            if phase.trial and ((e + 1) % phase.trial == 0 or e + 1 == phase.epochs) and self._trial_open(phase):
                rows = [r for r in self.history if r["epoch"] > epoch_offset]
                verdict, best, text = judge_trial(phase, rows, before, task.metric, can_extend=e + 1 < phase.epochs)
                self._decide("trial", epoch, text, phase=phase.name, kept=verdict != "abandoned", verdict=verdict,
                             best=best, before=before)
            if self.dist.is_main:
                self._save_checkpoint(pi, e + 1, optimizer, scheduler, stopping, ema)
                write_metrics(self.out / "metrics.csv", self.history)
            barrier(self.dist)
            self.log(f"epoch {epoch:>3} {phase.name:<15} {task.epoch_line(row)} | lr {row['lr']:.2e}"
                     f" | {row['time_s']:.1f}s")
            self.trackers.epoch(self, row)
            for callback in self.callbacks:
                callback(self, row)
            if stopping.should_stop and e + 1 < phase.epochs:
                self.log(f"early stopping: {task.metric} has not improved for {cfg.patience} epochs")
            if self.out_of_time:
                break

    def _progressive_sides(self, phase: Phase, start: int, epoch_offset: int) -> list[int | None]:
        """The training images' side in each epoch of a phase under --progressive (None: the input size).
        Validation keeps the input size, so every epoch's metrics stay comparable."""
        if not self.cfg.progressive:
            return [None] * phase.epochs
        if start > 0:
            self.log(f"progressive resizing: not in the {phase.name} phase, which trains from cached features")
            return [None] * phase.epochs
        size = self.task.input_size
        sides = [progressive_side(size, self.cfg.progressive, e, phase.epochs) for e in range(phase.epochs)]
        self.log(f"progressive resizing: {sides[0]} -> {size} px over epochs {epoch_offset + 1}-"
                 f"{epoch_offset + phase.epochs} ({size} px from epoch {epoch_offset + sides.index(size) + 1})")
        return sides

    def _best_before(self, epoch_offset: int) -> dict:
        """The best validation loss and metric of the epochs before a phase (what a trial must beat)."""
        earlier = [r for r in self.history if 0 < r["epoch"] <= epoch_offset]
        metric = self.task.metric
        return {"val_loss": min((r.get("val_loss", math.inf) for r in earlier), default=math.inf),
                metric: max((r.get(metric, 0.0) for r in earlier), default=0.0)}

    # --- adaptive phases and the budget ----------------------------------------------------------
    def _decide(self, event: str, epoch: int, text: str, **numbers) -> None:
        """Record a decision taken during training, with its numbers, and say it."""
        self.decisions.append({"event": event, "epoch": epoch, "text": text, **numbers})
        self.log(f"{event}: {text}")

    def _fit_to_budget(self, pi: int, epoch_offset: int) -> bool:
        """A later phase (fine-tuning after the head), as it starts under a budget, gets the epochs
        that fit (its schedule is planned for them), by the speed measured so far; False when not one fits."""
        phase = self.phases[pi]
        fits = self.pacer.epochs_that_fit(self.task.train_images, phase.epochs)
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

    def _nothing_to_gain(self, phase: Phase, epoch_offset: int) -> bool:
        """A trial phase is not started when the epochs before it are already perfect on validation (the
        best epoch is kept by that metric, so the trial could only cost time): a decision, not a failure."""
        best = self._best_before(epoch_offset)[self.task.metric]
        if best < 1.0:
            return False
        self._decide("trial", epoch_offset + 1, f"{phase.name} not started: the epochs before it already reach "
                     f"{self.task.metric} {best:.3f} on validation, nothing for it to gain; the best model so far is "
                     "kept", phase=phase.name, kept=False, verdict="abandoned", best=None, before=self._best_before(epoch_offset))
        return True

    def _trial_open(self, phase: Phase) -> bool:
        """No verdict on the phase's trial yet, or only extensions (judged again `trial` epochs on)."""
        return all(d.get("verdict") == "extended" for d in self.decisions
                   if d["event"] == "trial" and d.get("phase") == phase.name)

    def _trial_failed(self) -> bool:
        return any(d["event"] == "trial" and not d["kept"] for d in self.decisions)

    def _epoch_fits(self, epoch: int, phase: Phase, epoch_offset: int) -> bool:
        """Before an epoch: under a budget, start it only if an epoch like the last one of this phase
        still ends in time, leaving the time to write the run."""
        trained = [r for r in self.history if r["epoch"] > 0]
        if self.pacer is None or not trained:  # a run that trained nothing would have nothing to keep
            return True
        last = [r["time_s"] for r in trained if r["epoch"] > epoch_offset]
        need = self.pacer.epoch_need(last[-1] if last else None)
        if self.pacer.budget.fits(need):
            return True
        left = self.pacer.budget.left()
        self._decide("budget", epoch, f"not starting epoch {epoch} [{phase.name}]: {left:.0f}s left, it needs "
                     f"~{need:.0f}s with writing the run", left_s=round(left, 1))
        self.out_of_time = True
        return False

    def _find_lr(self, pi: int, phase: Phase, data, loss_fn) -> Phase:
        from .lr_finder import lr_range_test

        net = self.loop.training_net(data.start)
        result = lr_range_test(self.model, self.task.param_groups(phase), phase.lr, self.task.lr_find_batches(data),
                               lambda x, y: self.loop.batch_loss(net, x.to(self.device),
                                                                 self.task.targets_to(y, self.device), loss_fn)[0])
        suggestion = broadcast_object(result.suggestion, self.dist)  # every process trains with rank 0's choice
        self.log(f"lr find [{phase.name}]: suggested lr {suggestion:.2e}")
        self.phases[pi] = replace(phase, lr=suggestion)
        return self.phases[pi]

    # --- persistence ---------------------------------------------------------------------------
    def _save_checkpoint(self, pi, phase_epoch, optimizer, scheduler, stopping: EarlyStopping,
                         ema: WeightAverage | None) -> None:
        done = phase_epoch >= self.phases[pi].epochs
        self.checkpoints.save({
            "task": self.task.name,
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "phase": pi + 1 if done else pi,
            "phase_epoch": 0 if done else phase_epoch,
            "phases": [p.to_dict() for p in self.phases],
            "early_stopping": stopping.state_dict(),
            "ema": ema.checkpoint() if ema else None,
            "best": self.best,
            "history": self.history,
            "decisions": self.decisions,
            "config": asdict(self.cfg),
            "budget_used_s": self.pacer.budget.elapsed() if self.pacer else None,
        })

    def _load_checkpoint(self) -> dict:
        state = self.checkpoints.load()
        if state.get("task", "classifier") != self.task.name:
            raise TransferlabError(f"{self.out}: its checkpoint is of a {state.get('task')} run, not {self.task.name}; "
                                   "resume it with the model it was trained with")
        self.model.load_state_dict(state["model"])
        self.phases = [Phase(**p) for p in state["phases"]]
        self.history = list(state["history"])
        self.best = state["best"]
        self.decisions = list(state.get("decisions", []))
        if self.pacer and state.get("budget_used_s"):
            # a resumed run spends what is left of its budget, not a new one
            self.pacer.budget.start -= state["budget_used_s"]
            self._decide("budget", len(self.history) + 1, f"resumed with {state['budget_used_s']:.0f}s of the "
                         f"{self.pacer.budget.seconds:.0f}s budget already used", used_s=round(state["budget_used_s"], 1))
        done = state["phase"] >= len(self.phases)
        self.log(f"{self.out}: training had already finished; writing the final artifacts again" if done
                 else f"resuming {self.out} after epoch {self.history[-1]['epoch'] if self.history else 0}")
        return state

    def _finish(self):
        weights = self.task.keep_weights(self.best, self.checkpoints.best_weights())
        if weights is not None:
            self.model.load_state_dict(weights)
        distributed = {"world_size": self.dist.world_size,
                       "backend": torch.distributed.get_backend() if self.dist.enabled else None}
        extra = {"distributed": distributed, "decisions": self.decisions}
        if self.pacer is not None:
            extra["budget"] = self.pacer.budget.to_dict()  # used_s excludes writing the run, which follows
        if not self.dist.is_main:
            barrier(self.dist)
            return self.task.write_run(self.out, self.phases, self.best, self.history, extra)
        run = self.task.write_run(self.out, self.phases, self.best, self.history, extra)
        barrier(self.dist)
        return run
