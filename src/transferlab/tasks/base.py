"""The seam between the one training engine (training.Trainer) and a kind of model.

The engine owns what every task shares: processes (torchrun/DDP), phases, the optimizer and its
schedule, accumulation, clipping, micro-batches, the non-finite-loss guard, early stopping, the budget,
`--lr find`, checkpoints and resume, keeping the best epoch. A Task says what differs: the data and
its batches, the model, the loss, the validation metric that keeps the best epoch, and the run folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..core.errors import TransferlabError


def refuse_options(given: dict[str, bool], whose: str) -> None:
    """One line naming each option set (flag -> whether it was given) that the task would otherwise ignore;
    `whose` says whom they are for and what the task does instead."""
    named = [flag for flag, on in given.items() if on]
    if named:
        one = len(named) == 1
        raise TransferlabError(f"{', '.join(named)} {'is' if one else 'are'} {whose}: drop {'it' if one else 'them'}")


@dataclass
class Run:
    """What training returns, for every task: where the run lives, its metrics, its epochs, and the
    trained model loaded back as a predictor (a Classifier or a Detector; rank 0 only)."""

    path: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
    predictor: object = None

    @property
    def model(self) -> nn.Module:
        """The trained network (rank 0 only)."""
        return self.predictor.model


@dataclass
class PhaseData:
    """Where a phase's batches come from: the first block the trained net runs (0: images; more:
    cached features of the frozen prefix), train batches per epoch, and the validation batches.
    train_batches(epoch, generator, side): side is the training images' side under --progressive (None:
    the input size; only phases that train from images get one)."""

    start: int
    train_batches: Callable[[int, torch.Generator | None, int | None], object]
    val_batches: object
    cached_train_features: torch.Tensor | None = None


class Task:
    """A kind of model on the engine. `setup` is called once by the Trainer, which it may read
    (cfg, device, dist, log, progress); the rest are asked as training goes."""

    name = ""  # the run kind it trains (core.options.RUN_KINDS)
    # which epoch is kept, and the key shown in logs: a key of the validation row (higher is better)
    metric = ""
    # True when a batch split into passes gives the gradient of the whole batch (no batch statistics,
    # a loss that is a mean over images); the engine then trains CPU batches in cache-sized passes
    splits_batches = True
    # configuration defaults that differ from TrainConfig's for this task
    defaults: dict = {}
    # the largest share of a phase its learning-rate warm-up may take
    max_warmup_share = 0.2

    def setup(self, trainer, data) -> None:
        """Read the data, build the model (self.model, on the CPU) and set self.input_size."""
        raise NotImplementedError

    def bind_device(self, device: torch.device, dist, progress: bool) -> None:
        """Called once the model is on its device and the processes are known."""
        raise NotImplementedError

    # --- what the run is made of ------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        """The dataset the run was trained on (named in hints)."""
        raise NotImplementedError

    @property
    def val_images(self) -> int:
        """Validation images (the budget prices a validation pass by them)."""
        raise NotImplementedError

    @property
    def train_images(self) -> int:
        """Training images (the budget prices a fine-tuning epoch by them)."""
        raise NotImplementedError

    def plan_phases(self) -> list:
        """The strategy's phases for this model."""
        raise NotImplementedError

    def start_phase(self, phase, resumed: bool) -> PhaseData:
        """Set the trainable blocks for a phase (a fresh head when it asks and is not resumed) and say
        where its batches come from."""
        raise NotImplementedError

    def lr_find_batches(self, data: PhaseData):
        """Training batches in a fixed order for the learning-rate range test."""
        raise NotImplementedError

    def training_net(self, start: int) -> nn.Module:
        """The module trained from block `start` (the engine wraps it in DDP): outputs for a batch."""
        raise NotImplementedError

    def loss_fn(self) -> nn.Module:
        """The training loss, called by batch_loss with a batch's outputs and targets."""
        raise NotImplementedError

    def param_groups(self, phase) -> list[dict]:
        """Optimizer groups of the trainable weights, with their learning rates."""
        raise NotImplementedError

    def amp_dtype(self, setting: str, device: torch.device):
        """The autocast dtype under --amp, or None."""
        from ..training.loop import amp_dtype

        return amp_dtype(setting, device)

    # --- one batch ------------------------------------------------------------------------------
    def targets_to(self, targets, device: torch.device):
        """A batch's targets on the device."""
        return targets.to(device, non_blocking=True)

    def batch_loss(self, loss_fn: nn.Module, outputs, targets) -> torch.Tensor:
        """The mean loss of a batch (or of one pass of it)."""
        return loss_fn(outputs.float(), targets)

    def batch_mixer(self):
        """What mixes image batches and their targets (training.recipe.BatchMixer), or None. A task whose
        targets cannot be mixed refuses --mixup/--cutmix."""
        if self.cfg.mixup > 0 or self.cfg.cutmix > 0:
            raise TransferlabError(f"--mixup and --cutmix are for classifiers; a {self.name} run cannot mix its "
                                   "targets: drop them")
        return None

    def batch_correct(self, outputs, targets) -> int | None:
        """Correct predictions in a batch, for a training accuracy; None when the task has none."""
        return None

    def loss_weight_share(self, loss_fn, targets, batch_targets) -> float:
        """The share of a pass in its batch's mean loss (by images, or by class weights)."""
        return len(targets) / len(batch_targets)

    # --- validation and which epoch to keep ---------------------------------------------------------
    def validate(self, val_batches, start: int, loss_fn) -> dict:
        """The validation row: at least the task's metric (every process gets the same numbers)."""
        raise NotImplementedError

    def baseline(self) -> dict | None:
        """An epoch-0 row measured before any step (the pretrained model), which every epoch must beat
        to be kept; None when the task has no such bar."""
        return None

    def score(self, row: dict) -> tuple:
        """Order of epochs: the run keeps the highest."""
        return (row.get(self.metric, float("-inf")),)

    def stopping_value(self, row: dict) -> float:
        """What early stopping watches (lower is better)."""
        return -row.get(self.metric, float("-inf"))

    def check_row(self, row: dict, hint: str) -> None:
        """Raise training.loop.NonFiniteLoss when an epoch's numbers say training diverged."""

    def epoch_line(self, row: dict) -> str:
        """The numbers of an epoch for its log line."""
        raise NotImplementedError

    def keep_weights(self, best: dict, best_weights: dict | None) -> dict | None:
        """The weights the run saves: the best epoch's (None: the model as it is)."""
        return best_weights

    def write_run(self, out: Path, phases: list, best: dict, history: list[dict], extra: dict) -> Run:
        """Write the run folder (rank 0) for the kept weights, which the model holds now."""
        raise NotImplementedError
