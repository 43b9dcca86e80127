"""auto's plan: what `train --strategy auto` runs, from the advice and the time budget."""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field

from ..core.options import FEATURE_EXTRACT, SCRATCH, TWO_STAGE
from ..training.strategies import DEFAULT_LR
from .measure import FEATURE_PASS_SHARE, Measurements, feature_pass_seconds
from .rules import SIMILAR_BN_SHIFT, SMALL_PER_CLASS, Advice, advise, format_advice, freeze_point, jsonable

@dataclass
class AutoPlan:
    """What `train --strategy auto` runs: the concrete training options and why."""

    model: str
    strategy: str  # two-stage (adaptive: fine-tuning on trial), feature-extract or scratch
    epochs: int
    head_epochs: int | None
    freeze: int | None  # two-stage: blocks kept frozen while fine-tuning
    finetune_trial: int
    image_size: int | None
    cache_views: int
    lr: float | None = None  # the fine-tuning phase's (None: two-stage's default)
    reasons: list[str] = field(default_factory=list)


def _fit_feature_pass(m: Measurements, cfg, budget) -> tuple[int, int, str]:
    """(image size, cached views, why) for a feature pass that takes at most FEATURE_PASS_SHARE of what
    the budget has left: fewer augmented views first, then smaller inputs (down to half the size)."""
    views = cfg.cache_views if cfg.augment != "none" else 1
    size = cfg.image_size or m.input_size
    choices = [(size, views), (size, 1)] + [(max(32, round(size * f / 16) * 16), 1) for f in (0.75, 0.5)]
    allowed = FEATURE_PASS_SHARE * budget.left()
    for s, v in choices:
        need = feature_pass_seconds(m, m.num_images * v + m.num_val_images, s)
        if need <= allowed:
            break
    return s, v, (f"feature pass ~{need:.0f}s at {s}px with {v} view(s) per training image "
                  f"(at most {allowed:.0f}s: {FEATURE_PASS_SHARE:.0%} of the {budget.left():.0f}s left)")


def plan_auto(advice: Advice, cfg, budget=None) -> AutoPlan:
    """Turn the advice into an adaptive plan. The head trains first on cached frozen features (cheap),
    for the full `epochs`, as feature extraction would; then fine-tuning gets `finetune_trial` epochs to
    beat the head's validation loss, and goes on only if it does (the Trainer decides, during training).
    Under a budget: the input size and cached views whose feature pass fits; the Trainer gives
    fine-tuning the epochs that fit when it starts (training.budget.Pacer)."""
    m, d = advice.measurements, advice.decision
    reasons = [f"rule: {d.strategy} ({d.cell})"]
    size, views = cfg.image_size, cfg.cache_views
    if d.strategy == SCRATCH:
        return AutoPlan(advice.model, SCRATCH, cfg.epochs, None, None, 0, size, views,
                        reasons=reasons + ["train from scratch"])
    head = cfg.epochs
    # which layers the trial fine-tunes follows the measurements, as the bench found them:
    # - data far from ImageNet: the upper blocks from the advisor's freeze point and a fresh head, i.e.
    #   the partial strategy, for all its epochs. On every such variant (EuroSAT and MNIST, 10 to 120
    #   per class) partial was the best or within a point of it, and it is the cheapest fine-tune; with
    #   4 of 6 epochs it trailed feature extraction on EuroSAT at 10 per class, with 6 it gained 4 points;
    # - data close to ImageNet: every layer at two-stage's low rate after the fitted head, for
    #   two-stage's share. No block's inputs shift, so the freeze point keeps all but the last conv
    #   frozen and partial is feature extraction again (clothing at 60 per class, two seeds: partial
    #   level with the head, two-stage and finetune +4 to +4.5 over it).
    small = m.min_per_class < SMALL_PER_CLASS
    upper_only = m.bn_shift > SIMILAR_BN_SHIFT
    finetune = cfg.epochs if upper_only else max(1, cfg.epochs - cfg.epochs // 3)
    freeze = freeze_point(m) if upper_only else 0
    if budget is not None:
        size, views, why = _fit_feature_pass(m, cfg, budget)
        reasons.append("budget: " + why)
        reasons.append("budget: fine-tuning gets the epochs that fit when it starts, at the speed measured by then")
    if d.strategy == FEATURE_EXTRACT and not d.finetune_may_pay:
        finetune = 0
        reasons.append("fine-tuning skipped: " + d.finetune_reason)
    if finetune < 1:
        return AutoPlan(advice.model, FEATURE_EXTRACT, head, None, None, 0, size, views,
                        reasons=reasons + ["train the head only"])
    # judged at the end of fine-tuning, except every layer on large data, after a third: the partial
    # strategy judged mid-way (2 of 4 epochs) trailed feature extraction on EuroSAT at 10 per class,
    # where in full it gained 4 points
    trial = finetune if small or upper_only else max(1, math.ceil(finetune / 3))
    reasons.append(f"train the head for {head} epochs on the frozen features, then fine-tune "
                   + (f"from {m.blocks[freeze]} up" if freeze else "every layer")
                   + f" for up to {finetune} epochs, kept only if within {trial} it beats the head's val loss or accuracy")
    # upper blocks train at the partial strategy's rates (the head's, lower blocks lr_mult less): at
    # two-stage's 10x smaller ones, 2 trial epochs on EuroSAT (60 per class) stayed behind the head's
    # val loss, while partial alone gained 3.4 points over feature extraction
    lr = cfg.lr if cfg.lr is not None else (DEFAULT_LR["head"] if freeze else None)
    return AutoPlan(advice.model, TWO_STAGE, head + finetune, head, freeze, trial, size, views, lr, reasons)


def advise_for_training(data, cfg, progress: bool = True, budget=None, models: list[str] | None = None,
                        reuse=None):
    """`train --strategy auto`: a copy of cfg with the adaptive plan (AutoPlan) and cfg.advice recorded.
    With several candidate `models` the one with the best LogME is trained. reuse: a CleanFeatures that
    keeps the measuring pass's features for the training's feature cache."""
    # measured at the training input size: those are the features the head will see, and smaller is cheaper
    advice = advise(data, cfg.model, models=models, weights=cfg.weights, image_size=cfg.image_size,
                    val_split=cfg.val_split, seed=cfg.seed, progress=progress, budget=budget, reuse=reuse)
    if progress:
        print(format_advice(advice), file=sys.stderr)
    plan = plan_auto(advice, cfg, budget)
    if progress:
        print("auto: " + "; ".join(plan.reasons[1:]), file=sys.stderr)
    record = jsonable({**advice.to_dict(), "plan": dataclasses.asdict(plan)})
    return dataclasses.replace(cfg, model=plan.model, strategy=plan.strategy, epochs=plan.epochs,
                               head_epochs=plan.head_epochs, freeze=plan.freeze, finetune_trial=plan.finetune_trial,
                               image_size=plan.image_size, cache_views=plan.cache_views, lr=plan.lr,
                               advice=record)
