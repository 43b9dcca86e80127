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
    # a trial phase: after `trial` of its epochs it must beat the epochs before it or still be improving
    # (judge_trial, then judged again `trial` epochs on), else it stops, the phases after it are dropped
    # and the best model so far is kept. 0: not a trial
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
        h = head_epochs if head_epochs is not None else default_head_epochs(epochs)
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


def default_head_epochs(epochs: int) -> int:
    """Two-stage's head phase unless --head-epochs says otherwise: a third of the epochs, at least one."""
    return max(1, epochs // 3)


def judge_trial(phase: Phase, rows: list[dict], before: dict, metric: str = "val_acc",
                can_extend: bool = True) -> tuple[str, dict, str]:
    """An adaptive phase's trial, judged on its epochs so far (`rows`) against the best validation loss and
    metric (accuracy, or mAP for multi-label) before it: (verdict, its best, why). Verdicts:
    - "kept": the loss or the metric beat the earlier epochs. A fine-tuning phase can gain accuracy while
      its loss is still above the head's (more confident mistakes); the best epoch is kept anyway;
    - "extended": neither yet, but its last epoch is its best so far (still improving): the first epochs
      of fine-tuning dip (a fresh schedule, the head meeting moving features), so a verdict then would
      judge the warm-up. A held-out texture set: 0.888 -> 0.883 after 3 epochs while the loss turned
      (0.435, 0.461, 0.381); abandoned there, two-stage went on to 0.917. Judged again `trial` epochs on
      (or at the phase's end: `can_extend` False);
    - "abandoned": neither improved nor improving."""
    name = {"val_acc": "accuracy", "val_map": "mAP"}.get(metric, metric)
    best = {"val_loss": min(r["val_loss"] for r in rows), metric: max(r[metric] for r in rows)}
    loss, gain = best["val_loss"] < before["val_loss"], best[metric] > before[metric]
    numbers = (f"best val loss {best['val_loss']:.4f} and {name} {best[metric]:.3f} after {len(rows)} "
               f"epoch(s), against {before['val_loss']:.4f} and {before[metric]:.3f} before it")
    if loss or gain:
        return "kept", best, f"{phase.name} kept: its {numbers} ({'loss' if loss else name} improved)"
    if can_extend and still_improving(rows, metric):
        return "extended", best, (f"{phase.name} extended by {phase.trial} epoch(s): its {numbers}, but its last "
                                  "epoch is its best yet (still improving)")
    return "abandoned", best, f"{phase.name} abandoned: its {numbers} (neither improved); the best model so far is kept"


def still_improving(rows: list[dict], metric: str) -> bool:
    """The last epoch sets a new best validation loss or metric among the epochs before it (two or more)."""
    if len(rows) < 2:
        return False
    last, earlier = rows[-1], rows[:-1]
    return last["val_loss"] < min(r["val_loss"] for r in earlier) or last[metric] > max(r[metric] for r in earlier)


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
