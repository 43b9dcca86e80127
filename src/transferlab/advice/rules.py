"""The advisor's rules: a cell of the 2x2 playbook (small/large x similar/different), a strategy and
a freeze point. `decide` is a pure function of the measured numbers, so the rules are testable without
images and the same rules serve the API, the CLI and `train --strategy auto`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field

from ..core.options import FEATURE_EXTRACT, FINETUNE, PARTIAL, SCRATCH
from .measure import FEATURE_PASS_SHARE, MEASURE_SHARE, Measurements, feature_pass_seconds, measure

# --- thresholds ---------------------------------------------------------------------------------
# Training images in the smallest class below which a dataset is "small": with fewer, fine-tuning
# all of a CNN's millions of weights over-fits faster than it adapts, and on a CPU budget of a few
# epochs it also gets too few steps; the frozen features generalise better. The rule of thumb is
# ~100-200 per class; the bench (bench/advise.py, 12 per class) had fine-tuning at or below the
# frozen features on MNIST, so the boundary sits at the low end. Not yet calibrated from above.
SMALL_PER_CLASS = 80
# Above this many images per class, and with features that barely transfer, training from random
# initialisation can match fine-tuning (Kornblith et al. 2019; He et al. 2019 "Rethinking ImageNet
# pre-training"): the data is then enough to learn its own low-level filters.
VERY_LARGE_PER_CLASS = 1000
# Similar to the pretraining data = the activations' statistics stay close to ImageNet's: BN shift
# (below) at most this. bench/advise.py at 128 px: flowers 0.066-0.071 and clothing 0.052-0.054,
# where fine-tuning gained at most about a point over feature extraction on small data; EuroSAT
# 0.151-0.157 and MNIST 0.284, where the upper blocks retrained gained 3-4 points. (The probe's
# separability, which decided this before, measures how hard the classes are, not how far the images
# are: flowers-small 0.66 and EuroSAT-large 0.89 had it backwards.)
SIMILAR_BN_SHIFT = 0.10
# Linear-probe accuracy on the frozen features, rescaled so that chance is 0 and perfect is 1
# (Cohen's kappa style). Below this the features carry little of the classes ("very far", with the shift).
FAR_SEPARABILITY = 0.5
# BatchNorm-statistics shift: squared 2-Wasserstein distance between the per-channel Gaussian of the
# dataset's activations and ImageNet's running one, in units of the running variance (median over
# channels, mean over layers), at the model's native input size. Measured with efficientnet_lite0:
# crops of natural photos 0.05; grey MNIST / sklearn digits 0.31-0.36; grey 25 px LFW faces 0.23.
BN_SHIFT_FAR = 0.15
# Mean max-softmax of the ImageNet head: natural photos 0.44; grey digits 0.10-0.14, grey faces 0.18
# (uniform over 1000 classes would be 0.001). Below this the images resemble no ImageNet class.
LOW_HEAD_CONFIDENCE = 0.25
# Partial fine-tuning on little data keeps at least this fraction of the body frozen: lower layers
# are generic (Yosinski et al. 2014) and every unfrozen block multiplies the weights to fit.
MIN_FROZEN_FRACTION = 0.5
# Probe headroom (1 - leave-one-out probe accuracy) at or below which fine-tuning is not tried.
NO_HEADROOM = 0.02



# --- deciding -----------------------------------------------------------------------------------
@dataclass
class Decision:
    cell: str  # "small+similar", "small+different", "large+similar", "large+different"
    strategy: str
    freeze: int | None  # blocks frozen (partial and feature-extract), else None
    freeze_block: str | None  # the first trainable block, for humans
    reasons: list[str] = field(default_factory=list)
    # whether a fine-tuning trial after the head is worth its time (auto tries it when True)
    finetune_may_pay: bool = True
    finetune_reason: str = ""
    decided_by: list[str] = field(default_factory=list)  # the measurements that decided, against their thresholds


def freeze_point(m: Measurements) -> int:
    """Partial fine-tuning: freeze the leading blocks whose inputs still look like ImageNet's.

    The first block whose BN inputs shift beyond BN_SHIFT_FAR is where the features stop fitting the
    data; it and everything above train. Clamped so that at least half the body stays frozen (small
    data) and at least one block with weights besides the head trains (pool has none).
    """
    all_but_head = len(m.blocks) - 1
    n = 0
    for name in m.blocks[:all_but_head]:
        if m.bn_shift_per_block.get(name, 0.0) > BN_SHIFT_FAR:
            break
        n += 1
    lower = max(1, math.ceil(MIN_FROZEN_FRACTION * all_but_head))
    upper = max(1, all_but_head - 2)  # keep e.g. conv_head + pool + head trainable
    return min(max(n, lower), upper)


def decide(m: Measurements) -> Decision:
    """The 2x2 playbook as a pure function of the measurements."""
    small = m.min_per_class < SMALL_PER_CLASS
    similar = m.bn_shift <= SIMILAR_BN_SHIFT
    shifted = m.bn_shift > BN_SHIFT_FAR and m.head_confidence < LOW_HEAD_CONFIDENCE
    far = shifted and m.separability < FAR_SEPARABILITY
    cell = f"{'small' if small else 'large'}+{'similar' if similar else 'different'}"
    unit = "label" if m.multilabel else "class"
    reasons = [
        f"size: {m.num_images} training images, {m.min_per_class} in the smallest {unit}"
        + (" (images carrying the rarest label; several labels per image)" if m.multilabel else "") + ": "
        + (f"below {SMALL_PER_CLASS} per {unit}, too few to fine-tune all layers without over-fitting."
           if small else f"at least {SMALL_PER_CLASS} per {unit}, enough to fine-tune the whole network."),
        separability_reason(m),
        f"LogME {m.logme:.3f}: the evidence of a linear model on these features (use it to rank backbones).",
        f"BN-statistics shift {m.bn_shift:.2f}: "
        + ("the activations sit far from ImageNet's (above "
           f"{BN_SHIFT_FAR})." if m.bn_shift > BN_SHIFT_FAR else
           f"the activations look like ImageNet's (at most {BN_SHIFT_FAR})."),
        f"ImageNet head confidence {m.head_confidence:.1%} (normalised entropy {m.head_entropy:.2f}): "
        + ("the images resemble no ImageNet class." if m.head_confidence < LOW_HEAD_CONFIDENCE
           else "the images resemble ImageNet classes."),
        "similarity: " + (f"similar: the activations stay within {SIMILAR_BN_SHIFT} of ImageNet's" if similar
                          else f"different: the activations shift beyond {SIMILAR_BN_SHIFT} from ImageNet's")
        + ("; the head agrees the images are unlike ImageNet's." if shifted else "."),
    ]
    all_but_head = len(m.blocks) - 1
    if small and similar:
        strategy, freeze = FEATURE_EXTRACT, all_but_head
        why = "small and similar: train only the new head on the frozen features."
    elif small:
        strategy, freeze = PARTIAL, freeze_point(m)
        why = (f"small and different: keep the first {freeze} blocks (their inputs still look like ImageNet's) "
               f"and retrain from {m.blocks[freeze]} up.")
    elif not similar and far and m.min_per_class >= VERY_LARGE_PER_CLASS:
        strategy, freeze = SCRATCH, None
        why = (f"very large (>= {VERY_LARGE_PER_CLASS} per class) and very far from ImageNet: "
               "the pretrained weights bring little; train from random initialisation.")
    else:
        strategy, freeze = FINETUNE, None
        why = f"large and {'similar' if similar else 'different'}: fine-tune every layer at a small learning rate."
    may_pay, pay_reason = finetune_may_pay(m)
    reasons.append(f"fine-tuning after the head: {'worth a trial' if may_pay else 'not worth trying'} - {pay_reason}")
    reasons.append(f"decision: {strategy} ({cell}) - {why}")
    decided_by = [f"smallest {unit} {m.min_per_class} images ({'<' if small else '>='} {SMALL_PER_CLASS}: "
                  f"{'small' if small else 'large'})",
                  f"BN shift {m.bn_shift:.3f} ({'<=' if similar else '>'} {SIMILAR_BN_SHIFT}: "
                  f"{'similar' if similar else 'different'})"]
    if strategy == SCRATCH:
        decided_by.append(f"BN shift {m.bn_shift:.2f} > {BN_SHIFT_FAR}, head confidence {m.head_confidence:.0%} < "
                          f"{LOW_HEAD_CONFIDENCE:.0%} and separability {m.separability:.2f} < {FAR_SEPARABILITY} "
                          "(far from ImageNet)")
    if strategy == PARTIAL:
        decided_by.append(f"BN shift per block: the first {freeze} blocks' inputs stay within {BN_SHIFT_FAR} "
                          f"(clamped to keep at least {MIN_FROZEN_FRACTION:.0%} of the body frozen)")
    block = m.blocks[freeze] if freeze is not None else None
    return Decision(cell, strategy, freeze, block, reasons, may_pay, pay_reason, decided_by)


def separability_reason(m: Measurements) -> str:
    """What the probe measured, in one sentence."""
    if m.multilabel:
        return (f"separability: a one-vs-rest logistic-regression probe on the frozen features (a probe per "
                f"label, each image scored out-of-fold) gets mAP {m.probe_accuracy:.3f} on {m.sampled} images "
                f"({m.separability:.2f} on a chance=0..perfect=1 scale; mAP {m.probe_accuracy_half:.3f} on half "
                "of them).")
    return (f"separability: a linear probe on the frozen features gets {m.probe_accuracy:.1%} "
            f"(leave-one-out on {m.sampled} images; {m.separability:.2f} on a chance=0..perfect=1 scale; "
            f"{m.probe_accuracy_half:.1%} on half of them).")


def finetune_may_pay(m: Measurements) -> tuple[bool, str]:
    """Whether fine-tuning can gain over the frozen features: not when the probe leaves no headroom
    (1 - its accuracy, or 1 - its mAP for multi-label data)."""
    headroom = 1 - m.probe_accuracy
    score = f"mAP {m.probe_accuracy:.3f}" if m.multilabel else f"{m.probe_accuracy:.1%}"
    if headroom <= NO_HEADROOM:
        return False, (f"the linear probe already gets {score}: at most {headroom:.1%} left "
                       f"to gain (no trial at or below {NO_HEADROOM:.0%})")
    return True, f"the linear probe gets {score}, leaving {headroom:.1%} to gain"


# --- the API ------------------------------------------------------------------------------------
@dataclass
class Advice:
    model: str
    measurements: Measurements
    decision: Decision
    seconds: float
    ranking: list[dict] | None = None  # --models: [{"model", "logme", "separability"}] best first

    @property
    def strategy(self) -> str:
        """The advised strategy name."""
        return self.decision.strategy

    @property
    def freeze(self) -> int | None:
        """The advised freeze point (partial only), else None."""
        return self.decision.freeze

    @property
    def explanation(self) -> str:
        """The reasons as one paragraph."""
        return " ".join(self.decision.reasons)

    def to_dict(self) -> dict:
        """Plain data for JSON and model.json."""
        d = dataclasses.asdict(self)
        d["strategy"], d["freeze"], d["explanation"] = self.strategy, self.freeze, self.explanation
        d["thresholds"] = thresholds()
        return d


def thresholds() -> dict:
    """The rule thresholds, for reports and benches."""
    return {"small_per_class": SMALL_PER_CLASS, "very_large_per_class": VERY_LARGE_PER_CLASS,
            "similar_bn_shift": SIMILAR_BN_SHIFT, "far_separability": FAR_SEPARABILITY,
            "bn_shift_far": BN_SHIFT_FAR, "low_head_confidence": LOW_HEAD_CONFIDENCE, "no_headroom": NO_HEADROOM}


def advise(data, model: str = "efficientnet_lite0", models: list[str] | None = None, weights: str = "default",
           image_size: int | None = None, val_split: float = 0.2, seed: int = 0,
           progress: bool = False, budget=None, reuse=None) -> Advice:
    """Measure `data` with `model` (or with each of `models`, ranked by LogME) and advise a strategy;
    `reuse` (training.features.CleanFeatures) keeps the measured features for training.

    With several candidates the advice is for the best-ranked one. Under a `budget` (training.budget.Budget)
    candidates are measured only while that has used less than MEASURE_SHARE of it, and one whose
    feature pass over the training images would take more than half of what is left is passed over."""
    t0 = time.perf_counter()
    candidates = models or [model]
    measured = {}
    limit = MEASURE_SHARE * budget.seconds / len(candidates) if budget is not None else None
    for name in candidates:
        if progress and len(candidates) > 1:
            print(f"{name}:", file=sys.stderr)
        # small batches under a budget: the time limit is checked between batches
        measured[name] = measure(data, name, weights, image_size, val_split, seed, progress=progress,
                                 batch_size=32 if limit is None else 8, max_seconds=limit, reuse=reuse)
    if budget is not None:  # a backbone whose feature pass cannot fit even at its smallest is passed over
        cheapest = min(measured, key=lambda n: measured[n].seconds_per_image)
        measured = {n: m for n, m in measured.items()
                    if n == cheapest or feature_pass_seconds(m, m.num_images + m.num_val_images, m.input_size // 2)
                    <= FEATURE_PASS_SHARE * budget.left()}
    candidates = list(measured)
    order = sorted(candidates, key=lambda n: -measured[n].logme)
    ranking = [{"model": n, "logme": measured[n].logme, "separability": measured[n].separability}
               for n in order] if len(candidates) > 1 else None
    best = order[0]
    return Advice(best, measured[best], decide(measured[best]), time.perf_counter() - t0, ranking)


def jsonable(d: dict) -> dict:
    """A JSON round trip: plain types only (numpy numbers become floats)."""
    return json.loads(json.dumps(d))


def format_advice(a: Advice) -> str:
    """The advice as the terminal table with its reasons."""
    m, d = a.measurements, a.decision
    lines = [f"model {a.model} at {m.input_size} px: measured {m.sampled} of {m.num_images} training images in "
             f"{a.seconds:.1f}s"]
    if a.ranking:
        lines.append("candidate backbones, by LogME (higher transfers better):")
        lines += [f"  {i}. {r['model']:<24} LogME {r['logme']:8.3f}  separability {r['separability']:.2f}"
                  for i, r in enumerate(a.ranking, 1)]
    if m.multilabel:
        size = [("images (train)", f"{m.num_images}", f"{m.num_classes} labels, several per image"),
                ("smallest label", f"{m.min_per_class}", f"images with the rarest label; small below {SMALL_PER_CLASS}"),
                ("probe mAP", f"{m.probe_accuracy:.3f}", f"one-vs-rest logistic regression, out-of-fold; separability "
                 f"{m.separability:.2f}; {m.probe_accuracy_half:.3f} on half")]
    else:
        size = [("images (train)", f"{m.num_images}", f"{m.num_classes} classes"),
                ("smallest class", f"{m.min_per_class}", f"small below {SMALL_PER_CLASS}"),
                ("probe accuracy", f"{m.probe_accuracy:.1%}", f"separability {m.separability:.2f}; "
                 f"{m.probe_accuracy_half:.1%} on half")]
    rows = [
        *size,
        ("LogME", f"{m.logme:.3f}", "ranks backbones"),
        ("BN shift", f"{m.bn_shift:.3f}", f"similar up to {SIMILAR_BN_SHIFT}, far above {BN_SHIFT_FAR}"),
        ("head confidence", f"{m.head_confidence:.1%}", f"low below {LOW_HEAD_CONFIDENCE:.0%}"),
    ]
    lines += [f"  {k:<16} {v:>9}   ({t})" for k, v, t in rows]
    freeze = f", freeze {d.freeze} (train from {d.freeze_block})" if d.strategy == PARTIAL else ""
    lines.append(f"cell: {d.cell}  ->  strategy: {d.strategy}{freeze}")
    lines.append("decided by: " + "; ".join(d.decided_by))
    lines += [f"  - {r}" for r in d.reasons]
    return "\n".join(lines)
