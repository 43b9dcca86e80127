"""The transfer-learning playbook as data: which blocks train, at which learning rates, in which phases."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.options import STRATEGIES
from ..core.errors import TransferlabError
from ..models import BlockNet


# AdamW learning rates that work without tuning: a new head learns fast, pretrained layers need
# small steps or they forget ImageNet; from scratch sits in between with no features to keep.
DEFAULT_LR = {"head": 3e-3, "finetune": 3e-4, "scratch": 1e-3}


@dataclass(frozen=True)
class Phase:
    """One stretch of training with a fixed set of trainable blocks."""

    name: str
    epochs: int
    freeze: int  # number of leading blocks frozen
    lr: float  # learning rate of the head; earlier blocks get less when lr_mult > 1
    lr_mult: float = 1.0  # head lr / first trainable block lr (discriminative learning rates)
    # a trial phase: after `trial` of its epochs it must beat the epochs before it (judge_trial), else
    # it stops, the phases after it are dropped and the best model so far is kept. 0: not a trial
    trial: int = 0
    fresh_head: bool = False  # the phase starts from a newly initialised head

    def to_dict(self) -> dict:
        """Plain data for checkpoints and model.json."""
        return {"name": self.name, "epochs": self.epochs, "freeze": self.freeze, "lr": self.lr,
                "lr_mult": self.lr_mult, "trial": self.trial, "fresh_head": self.fresh_head}


def plan_phases(
    strategy: str,
    model: BlockNet,
    epochs: int,
    lr: float | None = None,
    freeze: int | str | None = None,
    head_epochs: int | None = None,
    lr_mult: float = 10.0,
    trial: int = 0,
) -> list[Phase]:
    """The phases a strategy trains in. `freeze` is a block count or the first trainable block's name;
    `trial` (two-stage): fine-tuning is judged after that many epochs (see Phase.trial)."""
    if epochs < 1:
        raise TransferlabError("--epochs must be at least 1")
    all_but_head = len(model.group_names) - 1
    if strategy == "feature-extract":
        return [Phase("feature-extract", epochs, all_but_head, lr or DEFAULT_LR["head"])]
    if strategy == "partial":
        if freeze is None:
            raise TransferlabError(
                f"--strategy partial needs --freeze N (0..{all_but_head}) or a block name: {', '.join(model.group_names)}"
            )
        n = _freeze_point(model, freeze)
        # the new head needs the head's rate; the retrained upper blocks get less (lr_mult), as in two-stage
        return [Phase("partial", epochs, n, lr or DEFAULT_LR["head"], lr_mult if n < all_but_head else 1.0)]
    if strategy == "finetune":
        return [Phase("finetune", epochs, 0, lr or DEFAULT_LR["finetune"])]
    if strategy == "scratch":
        return [Phase("scratch", epochs, 0, lr or DEFAULT_LR["scratch"])]
    if strategy == "two-stage":
        if epochs < 2:
            raise TransferlabError("--strategy two-stage needs --epochs >= 2 (head first, then fine-tuning)")
        h = head_epochs if head_epochs is not None else max(1, epochs // 3)
        if not 1 <= h < epochs:
            raise TransferlabError(f"--head-epochs must be between 1 and epochs-1 ({epochs - 1}), got {h}")
        n = _freeze_point(model, freeze) if freeze is not None else 0
        head = Phase("head", h, all_but_head, DEFAULT_LR["head"])
        finetune = Phase("finetune", epochs - h, n, lr or DEFAULT_LR["finetune"], lr_mult)
        if not trial:
            return [head, finetune]
        # a trial of the upper blocks only starts from a fresh head: the head fitted to the frozen
        # features leaves them little gradient on small data (EuroSAT and MNIST at 10 per class: the
        # partial strategy gained 4-14 points over feature extraction, a partial trial after the
        # fitted head nothing)
        finetune = replace(finetune, fresh_head=n > 0)
        # judged after `trial` epochs of its one schedule: a trial with a schedule of its own and the
        # rest restarting it ended 1.7 points below two-stage on MNIST at 120 per class (bench/advise.py)
        return [head, replace(finetune, trial=min(trial, finetune.epochs))]
    raise TransferlabError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def judge_trial(phase: Phase, best: dict, before: dict, metric: str = "val_acc") -> tuple[bool, str]:
    """End of an adaptive phase's trial: (kept, why), from the best validation loss and metric (accuracy,
    or mAP for multi-label) of the phase and of the epochs before it. Kept if either improved: a
    fine-tuning phase can gain accuracy while its loss is still above the head's (more confident
    mistakes), and since the run keeps its best epoch by the metric, going on costs only time."""
    name = {"val_acc": "accuracy", "val_map": "mAP"}.get(metric, metric)
    loss, gain = best["val_loss"] < before["val_loss"], best[metric] > before[metric]
    numbers = (f"best val loss {best['val_loss']:.4f} and {name} {best[metric]:.3f} after {phase.trial} "
               f"epoch(s), against {before['val_loss']:.4f} and {before[metric]:.3f} before it")
    if loss or gain:
        return True, f"{phase.name} kept: its {numbers} ({'loss' if loss else name} improved)"
    return False, f"{phase.name} abandoned: its {numbers} (neither improved); the best model so far is kept"


def effective_bn_policy(strategy: str, requested: str) -> str:
    """'eval' keeps ImageNet statistics; a network trained from scratch has none worth keeping."""
    return "frozen" if strategy == "scratch" and requested == "eval" else requested


def _freeze_point(model: BlockNet, freeze) -> int:
    try:
        n = model.group_index(freeze)
    except ValueError as e:
        raise TransferlabError(str(e)) from None
    if n >= len(model.group_names):
        raise TransferlabError(f"--freeze {freeze} would freeze the head too; the maximum is {len(model.group_names) - 1}")
    return n


def param_groups(model: BlockNet, phase: Phase, weight_decay: float) -> list[dict]:
    """One optimizer group per trainable freeze group; learning rates rise geometrically from the first
    trainable block (lr / lr_mult) to the head (lr), as in fastai's discriminative fine-tuning.
    Biases and norm weights get no weight decay."""
    names = model.group_names[phase.freeze:]
    n = len(names)
    groups = []
    for i, name in enumerate(names):
        scale = phase.lr_mult ** (-(n - 1 - i) / (n - 1)) if n > 1 and phase.lr_mult != 1 else 1.0
        decay, no_decay = [], []
        for p in model.group_parameters(name):
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": phase.lr * scale, "weight_decay": wd, "block": name})
    return groups
