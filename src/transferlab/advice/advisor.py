"""The strategy advisor: measure a dataset with the pretrained model itself, then pick a strategy.

Three kinds of numbers, all from one forward pass over a class-balanced sample (no training):

* size: training images in total and in the smallest class;
* similarity to the pretraining data: how separable the classes are in the frozen features
  (LogME, You et al. 2021, and a leave-one-out linear probe), how far the activation statistics
  sit from ImageNet's (BatchNorm inputs vs running_mean / running_var), and how confident the
  original 1000-class head is on these images;
* the decision: a cell of the 2x2 playbook (small/large x similar/different), a strategy and a
  freeze point. `decide` is a pure function of the measured numbers, so the rules are testable
  without images and the same rules serve the API, the CLI and `train --strategy auto`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.folders import ImageSamples, Sample, scan_dataset
from ..models import BlockNet, create_model
from ..training.strategies import DEFAULT_LR

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
# Under a budget, measuring (every candidate backbone together) may take this share of it, and the
# feature pass that caches the frozen features at most half of what is left after measuring; the
# rest is for the head, fine-tuning and writing the run.
MEASURE_SHARE = 0.1
FEATURE_PASS_SHARE = 0.5
# A measurement cut short by its time limit still has this many images of each class.
MIN_MEASURED_PER_CLASS = 3
# The measuring sample: enough images for stable statistics, few enough for seconds on a CPU.
SAMPLE_PER_CLASS = 50
SAMPLE_MAX = 500


# --- LogME --------------------------------------------------------------------------------------
def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., ICML 2021): the mean per-sample log evidence of a Bayesian linear model
    from the features to each one-hot label column, with the prior precision alpha and the noise
    precision beta set by the paper's fixed-point iteration on the SVD of the features. Higher is
    more transferable; values compare models on one dataset (not datasets with each other)."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2  # eigenvalues of F^T F; the d - len(sigma) others are zero
    evidences = []
    for k in np.unique(y):
        target = (y == k).astype(np.float64)
        evidences.append(logme_fit(u, sigma, target, n, d)[0])
    return float(np.mean(evidences))


def logme_fit(u: np.ndarray, sigma: np.ndarray, y: np.ndarray, n: int, d: int) -> tuple[float, float, float]:
    """(evidence per sample, alpha, beta) for one target column, given F = u diag(sqrt(sigma)) v^T."""
    x2 = (u.T @ y) ** 2  # target energy along each singular direction
    res_x2 = max(float(y @ y - x2.sum()), 0.0)  # energy outside the features' span
    alpha, beta = 1.0, 1.0
    for _ in range(100):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())  # effective number of parameters
        m2 = float((sigma * x2 / (t + sigma) ** 2).sum())  # |posterior mean|^2
        res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + res_x2  # |y - F m|^2
        alpha = gamma / (m2 + 1e-12)
        beta = (n - gamma) / (res2 + 1e-12)
        if abs(alpha / beta - t) / t < 1e-5:
            break
    t = alpha / beta
    m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
    res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + res_x2
    zero = d - len(sigma)  # eigenvalues that are zero contribute log(alpha) each
    log_det = float(np.log(alpha + beta * sigma).sum()) + zero * math.log(alpha)
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - log_det / 2
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
    return evidence / n, alpha, beta


# --- linear probe -------------------------------------------------------------------------------
def probe_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out accuracy of a ridge classifier (one-hot targets, unpenalised intercept) on
    standardised features, in closed form: the best over a small grid of ridge strengths (scaled to
    the kernel's trace), which is what a user's own feature-extraction run would tune.

    With centred features and targets, the hat matrix is H = 11^T/n + K_c (K_c + lam I)^-1 for the
    centred kernel K_c = X_c X_c^T; every left-out residual is then (y_i - yhat_i) / (1 - H_ii). The 1/n
    of the intercept matters: without it, a ridge that interpolates (n < features, small lam) gets
    H_ii = 1 - 1/n and "predicts" every left-out label exactly.
    """
    x = np.asarray(features, dtype=np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    classes, y = np.unique(labels, return_inverse=True)
    onehot = np.eye(len(classes))[y]
    targets = onehot - onehot.mean(0)
    n = len(x)
    eigval, eigvec = np.linalg.eigh(x @ x.T)
    eigval = np.clip(eigval, 0, None)
    proj = eigvec.T @ targets
    scale = eigval.sum() / n
    best = 0.0
    for lam in scale * np.logspace(-3, 1, 9):
        shrink = eigval / (eigval + lam)
        residual = targets - eigvec @ (shrink[:, None] * proj)
        leverage = (eigvec**2 * shrink).sum(1) + 1.0 / n
        loo = onehot - residual / (1 - leverage[:, None]).clip(1e-9)
        best = max(best, float((loo.argmax(1) == y).mean()))
    return best


def separability(accuracy: float, num_classes: int) -> float:
    """Probe accuracy rescaled so that chance (1/C) is 0 and perfect is 1: comparable across class counts."""
    chance = 1.0 / num_classes
    return max(0.0, (accuracy - chance) / (1 - chance))


# --- measuring ----------------------------------------------------------------------------------
@dataclass
class Measurements:
    """Everything the decision needs; all JSON-able."""

    num_images: int  # training images in total (after the validation split)
    num_classes: int
    min_per_class: int  # training images in the smallest class
    sampled: int  # images in the measuring sample
    logme: float
    probe_accuracy: float
    separability: float
    # the probe on half the sample (half of each class): the slope of its learning curve, i.e. how
    # much the frozen features still gain from more data
    probe_accuracy_half: float
    bn_shift: float  # mean over BN layers
    bn_shift_per_block: dict[str, float]  # block name -> mean shift at its BN layers (blocks without BN absent)
    head_confidence: float  # mean max-softmax of the original 1000-class head
    head_entropy: float  # mean entropy of that head, divided by log(classes): 0 sure .. 1 uniform
    blocks: list[str]  # the model's block names, for the freeze point
    seconds_per_image: float = 0.0  # the measuring forward pass, per image at the measured size
    input_size: int = 224  # the size it was measured at
    num_val_images: int = 0


def sample_per_class(samples: list[Sample], per_class: int = SAMPLE_PER_CLASS, total: int = SAMPLE_MAX,
                     seed: int = 0) -> list[Sample]:
    """A class-balanced, seeded sample: at most `per_class` per class and about `total` in all, in
    round-robin class order, so that every prefix of it is balanced too (a measurement cut short by
    its time limit still sees every class)."""
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    k = max(2, min(per_class, total // max(1, len(by_class))))
    rng = np.random.default_rng(seed)
    chosen = [[by_class[label][i] for i in sorted(rng.permutation(len(by_class[label]))[:k])]
              for label in sorted(by_class)]
    return [items[j] for j in range(k) for items in chosen if j < len(items)]


def half_per_class(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of a seeded half of each class (at least two per class)."""
    rng = np.random.default_rng(seed + 1)
    keep = [rng.permutation(np.flatnonzero(labels == k))[:max(2, (labels == k).sum() // 2)] for k in np.unique(labels)]
    return np.sort(np.concatenate(keep))


class _BNStatistics:
    """Forward pre-hooks on every BatchNorm: per-channel sums of its inputs over the whole sample."""

    def __init__(self, model: BlockNet):
        self.layers: list[tuple[str, nn.Module]] = []
        self.sums: dict[int, list[torch.Tensor]] = {}
        self.handles = []
        for block, module in model.blocks.items():
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                    i = len(self.layers)
                    self.layers.append((block, m))
                    self.handles.append(m.register_forward_pre_hook(self._hook(i)))

    def _hook(self, i: int):
        def hook(_module, inputs):
            x = inputs[0].detach().double()
            dims = [0] + list(range(2, x.ndim))
            count = x.numel() / x.shape[1]
            s = [x.sum(dims), (x * x).sum(dims), torch.tensor(count, dtype=torch.float64)]
            self.sums[i] = [a + b for a, b in zip(self.sums[i], s)] if i in self.sums else s

        return hook

    def shifts(self) -> list[tuple[str, float]]:
        """(block, shift) per BN layer: median over channels of the squared 2-Wasserstein distance
        between N(mean, var) of the inputs and N(running_mean, running_var), over running_var.
        The median ignores the few dead channels whose running variance is ~0."""
        out = []
        for i, (block, bn) in enumerate(self.layers):
            total, squares, count = self.sums[i]
            mean = total / count
            var = (squares / count - mean**2).clamp(min=0)
            rm, rv = bn.running_mean.double(), bn.running_var.double()
            w2 = ((mean - rm) ** 2 + (var.sqrt() - rv.sqrt()) ** 2) / (rv + bn.eps)
            out.append((block, float(w2.median())))
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.inference_mode()
def _forward_sample(model: BlockNet, samples: list[Sample], batch_size: int, progress: bool,
                    max_seconds: float | None = None, min_images: int = 0):
    """Penultimate features and original-head logits of the sample (or of its first images, once
    `max_seconds` have passed and `min_images` are done), collecting BN statistics on the way."""
    loader = DataLoader(ImageSamples(samples, model.preprocessing.eval_transform()), batch_size=batch_size)
    stats = _BNStatistics(model)
    last = len(model.block_names) - 1  # the forward's sequence: everything before the head
    features, logits = [], []
    t0 = time.perf_counter()
    try:
        for i, (x, _) in enumerate(loader):
            done = i * batch_size
            if max_seconds is not None and done >= min_images and time.perf_counter() - t0 > max_seconds:
                break
            f = model.forward_blocks(x, 0, last)
            features.append(f.flatten(1).float())
            logits.append(model.forward_blocks(f, last, last + 1).float())
            if progress:
                print(f"\rmeasuring: {min((i + 1) * batch_size, len(samples))}/{len(samples)} images",
                      end="", file=sys.stderr)
    finally:
        stats.remove()
    if progress:
        print(file=sys.stderr)
    return torch.cat(features).numpy(), torch.cat(logits), stats.shifts()


def measure(data, model: str = "efficientnet_lite0", weights: str = "default", image_size: int | None = None,
            val_split: float = 0.2, seed: int = 0, batch_size: int = 32, progress: bool = False,
            max_seconds: float | None = None) -> Measurements:
    """Measure a dataset folder with a pretrained model: one forward pass over a balanced sample
    (cut short, but with at least MIN_MEASURED_PER_CLASS images per class, when it would take more
    than `max_seconds`)."""
    scan = scan_dataset(data, val_split, seed)
    train = scan.splits["train"]
    counts = [n for n in scan.counts("train").values()]
    net = create_model(model, weights=weights)  # the original 1000-class head is kept: it is measured too
    if image_size:
        net.preprocessing = net.preprocessing.resized(image_size)
    sample = sample_per_class(train, seed=seed)
    t0 = time.perf_counter()
    features, logits, shifts = _forward_sample(net, sample, batch_size, progress, max_seconds,
                                               min_images=MIN_MEASURED_PER_CLASS * len(scan.classes))
    seconds_per_image = (time.perf_counter() - t0) / len(features)
    sample = sample[:len(features)]
    labels = np.array([s.label for s in sample])
    probs = logits.softmax(1)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(1) / math.log(probs.shape[1])
    per_block: dict[str, list[float]] = {}
    for block, value in shifts:
        per_block.setdefault(block, []).append(value)
    accuracy = probe_accuracy(features, labels)
    half = half_per_class(labels, seed)
    return Measurements(
        num_images=len(train),
        num_val_images=len(scan.splits["val"]),
        num_classes=len(scan.classes),
        min_per_class=min(counts),
        sampled=len(sample),
        logme=logme(features, labels),
        probe_accuracy=accuracy,
        probe_accuracy_half=probe_accuracy(features[half], labels[half]),
        separability=separability(accuracy, len(scan.classes)),
        bn_shift=float(np.mean([v for _, v in shifts])) if shifts else 0.0,
        bn_shift_per_block={b: float(np.mean(v)) for b, v in per_block.items()},
        head_confidence=float(probs.max(1).values.mean()),
        head_entropy=float(entropy.mean()),
        blocks=net.group_names,
        seconds_per_image=seconds_per_image,
        input_size=net.preprocessing.input_size,
    )


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
    reasons = [
        f"size: {m.num_images} training images, {m.min_per_class} in the smallest class: "
        + (f"below {SMALL_PER_CLASS} per class, too few to fine-tune all layers without over-fitting."
           if small else f"at least {SMALL_PER_CLASS} per class, enough to fine-tune the whole network."),
        f"separability: a linear probe on the frozen features gets {m.probe_accuracy:.1%} "
        f"(leave-one-out on {m.sampled} images; {m.separability:.2f} on a chance=0..perfect=1 scale; "
        f"{m.probe_accuracy_half:.1%} on half of them).",
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
        strategy, freeze = "feature-extract", all_but_head
        why = "small and similar: train only the new head on the frozen features."
    elif small:
        strategy, freeze = "partial", freeze_point(m)
        why = (f"small and different: keep the first {freeze} blocks (their inputs still look like ImageNet's) "
               f"and retrain from {m.blocks[freeze]} up.")
    elif not similar and far and m.min_per_class >= VERY_LARGE_PER_CLASS:
        strategy, freeze = "scratch", None
        why = (f"very large (>= {VERY_LARGE_PER_CLASS} per class) and very far from ImageNet: "
               "the pretrained weights bring little; train from random initialisation.")
    else:
        strategy, freeze = "finetune", None
        why = f"large and {'similar' if similar else 'different'}: fine-tune every layer at a small learning rate."
    may_pay, pay_reason = finetune_may_pay(m)
    reasons.append(f"fine-tuning after the head: {'worth a trial' if may_pay else 'not worth trying'} - {pay_reason}")
    reasons.append(f"decision: {strategy} ({cell}) - {why}")
    decided_by = [f"smallest class {m.min_per_class} images ({'<' if small else '>='} {SMALL_PER_CLASS}: "
                  f"{'small' if small else 'large'})",
                  f"BN shift {m.bn_shift:.3f} ({'<=' if similar else '>'} {SIMILAR_BN_SHIFT}: "
                  f"{'similar' if similar else 'different'})"]
    if strategy == "scratch":
        decided_by.append(f"BN shift {m.bn_shift:.2f} > {BN_SHIFT_FAR}, head confidence {m.head_confidence:.0%} < "
                          f"{LOW_HEAD_CONFIDENCE:.0%} and separability {m.separability:.2f} < {FAR_SEPARABILITY} "
                          "(far from ImageNet)")
    if strategy == "partial":
        decided_by.append(f"BN shift per block: the first {freeze} blocks' inputs stay within {BN_SHIFT_FAR} "
                          f"(clamped to keep at least {MIN_FROZEN_FRACTION:.0%} of the body frozen)")
    block = m.blocks[freeze] if freeze is not None else None
    return Decision(cell, strategy, freeze, block, reasons, may_pay, pay_reason, decided_by)


def finetune_may_pay(m: Measurements) -> tuple[bool, str]:
    """Whether fine-tuning can gain over the frozen features: not when the probe leaves no headroom."""
    headroom = 1 - m.probe_accuracy
    if headroom <= NO_HEADROOM:
        return False, (f"the linear probe already gets {m.probe_accuracy:.1%}: at most {headroom:.1%} left "
                       f"to gain (no trial at or below {NO_HEADROOM:.0%})")
    return True, f"the linear probe gets {m.probe_accuracy:.1%}, leaving {headroom:.1%} to gain"


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
           progress: bool = False, budget=None) -> Advice:
    """Measure `data` with `model` (or with each of `models`, ranked by LogME) and advise a strategy.

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
                                 batch_size=32 if limit is None else 8, max_seconds=limit)
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


# --- adaptive auto ------------------------------------------------------------------------------
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


def feature_pass_seconds(m: Measurements, images: int, size: int | None = None) -> float:
    """Seconds for the backbone's forward pass over `images` at input `size`, from the measuring pass
    (the cost grows with the pixels)."""
    return m.seconds_per_image * ((size or m.input_size) / m.input_size) ** 2 * images


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
    if d.strategy == "scratch":
        return AutoPlan(advice.model, "scratch", cfg.epochs, None, None, 0, size, views,
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
    if d.strategy == "feature-extract" and not d.finetune_may_pay:
        finetune = 0
        reasons.append("fine-tuning skipped: " + d.finetune_reason)
    if finetune < 1:
        return AutoPlan(advice.model, "feature-extract", head, None, None, 0, size, views,
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
    return AutoPlan(advice.model, "two-stage", head + finetune, head, freeze, trial, size, views, lr, reasons)


def advise_for_training(data, cfg, progress: bool = True, budget=None, models: list[str] | None = None):
    """`train --strategy auto`: a copy of cfg with the adaptive plan (AutoPlan) and cfg.advice recorded.
    With several candidate `models` the one with the best LogME is trained."""
    # measured at the training input size: those are the features the head will see, and smaller is cheaper
    advice = advise(data, cfg.model, models=models, weights=cfg.weights, image_size=cfg.image_size,
                    val_split=cfg.val_split, seed=cfg.seed, progress=progress, budget=budget)
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


def jsonable(d: dict) -> dict:
    """A JSON round trip: plain types only (numpy numbers become floats)."""
    return json.loads(json.dumps(d))


def format_advice(a: Advice) -> str:
    """The advice as the terminal table with its reasons."""
    m, d = a.measurements, a.decision
    lines = [f"model {a.model}: measured {m.sampled} of {m.num_images} training images in {a.seconds:.1f}s"]
    if a.ranking:
        lines.append("candidate backbones, by LogME (higher transfers better):")
        lines += [f"  {i}. {r['model']:<24} LogME {r['logme']:8.3f}  separability {r['separability']:.2f}"
                  for i, r in enumerate(a.ranking, 1)]
    rows = [
        ("images (train)", f"{m.num_images}", f"{m.num_classes} classes"),
        ("smallest class", f"{m.min_per_class}", f"small below {SMALL_PER_CLASS}"),
        ("probe accuracy", f"{m.probe_accuracy:.1%}", f"separability {m.separability:.2f}; {m.probe_accuracy_half:.1%} on half"),
        ("LogME", f"{m.logme:.3f}", "ranks backbones"),
        ("BN shift", f"{m.bn_shift:.3f}", f"similar up to {SIMILAR_BN_SHIFT}, far above {BN_SHIFT_FAR}"),
        ("head confidence", f"{m.head_confidence:.1%}", f"low below {LOW_HEAD_CONFIDENCE:.0%}"),
    ]
    lines += [f"  {k:<16} {v:>9}   ({t})" for k, v, t in rows]
    freeze = f", freeze {d.freeze} (train from {d.freeze_block})" if d.strategy == "partial" else ""
    lines.append(f"cell: {d.cell}  ->  strategy: {d.strategy}{freeze}")
    lines.append("decided by: " + "; ".join(d.decided_by))
    lines += [f"  - {r}" for r in d.reasons]
    return "\n".join(lines)
