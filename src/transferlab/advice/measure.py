"""The advisor's measurements: one forward pass of the pretrained model over a class-balanced sample
of the dataset (no training).

* size: training images in total and in the smallest class;
* similarity to the pretraining data: how separable the classes are in the frozen features
  (LogME, You et al. 2021, and a leave-one-out linear probe), how far the activation statistics
  sit from ImageNet's (BatchNorm inputs vs running_mean / running_var), and how confident the
  original 1000-class head is on these images.

Multi-label data (a table of images with several labels) is measured in its multi-label form: the
size is per label (training images carrying the rarest label), the sample is balanced by each image's
rarest label, LogME averages over the labels' yes/no columns, and the probe is one-vs-rest logistic
regression (out-of-fold, the audit's) scored by mAP; the BN shift and the head are measured as for one
label.

The rules that turn them into a strategy are in rules.py; auto's plan in plan.py.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core.device import channels_last_on_cpu, forward_in_passes
from ..data.folders import ImageSamples, Sample, scan_dataset
from ..data.images import median_short_side
from ..models import BlockNet, create_model
from ..training.presets import quality_settings

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
    more transferable; values compare models on one dataset (not datasets with each other).
    labels: class indices, or multi-label data's 0/1 rows (images x labels), whose columns are the
    targets (a column with no positive is left out)."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2  # eigenvalues of F^T F; the d - len(sigma) others are zero
    columns = [y[:, j] for j in range(y.shape[1]) if y[:, j].any()] if y.ndim == 2 else [y == k for k in np.unique(y)]
    evidences = [logme_fit(u, sigma, target.astype(np.float64), n, d)[0] for target in columns]
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


def probe_map(features: np.ndarray, targets: np.ndarray, seed: int = 0) -> float:
    """The probe in its multi-label form: mAP of a one-vs-rest logistic regression on the (unit-length)
    frozen features, each image scored by a probe that did not see it (the audit's out-of-fold probe)."""
    from ..auditing.audit import out_of_fold_label_scores
    from ..inference.multilabel import mean_average_precision

    x = np.asarray(features, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    return mean_average_precision(out_of_fold_label_scores(x, targets, seed=seed), targets)


def separability(accuracy: float, num_classes: int, chance: float | None = None) -> float:
    """Probe accuracy rescaled so that chance (1/C, or `chance`: for a probe's mAP, the labels' mean
    share of positive images, which random scores get) is 0 and perfect is 1: comparable across class
    counts."""
    chance = 1.0 / num_classes if chance is None else chance
    return max(0.0, (accuracy - chance) / (1 - chance)) if chance < 1 else 0.0


# --- measuring ----------------------------------------------------------------------------------
@dataclass
class Measurements:
    """Everything the decision needs; all JSON-able."""

    num_images: int  # training images in total (after the validation split)
    num_classes: int
    min_per_class: int  # training images in the smallest class (multi-label: carrying the rarest label)
    sampled: int  # images in the measuring sample
    logme: float
    probe_accuracy: float  # multi-label: the one-vs-rest probe's mAP (out-of-fold)
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
    multilabel: bool = False  # several labels per image: counts per label, the probe's score is its mAP


def sample_per_class(samples: list[Sample], per_class: int = SAMPLE_PER_CLASS, total: int = SAMPLE_MAX,
                     seed: int = 0, group=None) -> list[Sample]:
    """A class-balanced, seeded sample: at most `per_class` per class and about `total` in all, in
    round-robin class order, so that every prefix of it is balanced too (a measurement cut short by
    its time limit still sees every class). group(sample): the class to balance by (default its label;
    for multi-label data, its rarest label)."""
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label if group is None else group(s), []).append(s)
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
    """Forward pre-hooks on every BatchNorm: per-channel mean and variance of its inputs over the whole
    sample, from each batch's (combined exactly in double, Chan et al.'s pairwise rule)."""

    def __init__(self, model: BlockNet):
        self.layers: list[tuple[str, nn.Module]] = []
        self.batches: dict[int, list[tuple[float, torch.Tensor, torch.Tensor]]] = {}
        self.handles = []
        for block, module in model.blocks.items():
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                    i = len(self.layers)
                    self.layers.append((block, m))
                    self.handles.append(m.register_forward_pre_hook(self._hook(i)))

    def _hook(self, i: int):
        def hook(_module, inputs):
            # BatchNorm's own statistics kernel (one pass, Welford): on CPU half the time of a sum and a
            # sum of squares, a quarter of var_mean over these dims; the hooks were most of the pass's cost
            x = inputs[0].detach()
            mean, var = torch.batch_norm_update_stats(x, None, None, 1.0)
            self.batches.setdefault(i, []).append((x.numel() / x.shape[1], mean.double(), var.double()))

        return hook

    def moments(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (population) variance of layer i's inputs over every batch."""
        counts = torch.tensor([n for n, _, _ in self.batches[i]], dtype=torch.float64)[:, None]
        means = torch.stack([m for _, m, _ in self.batches[i]])
        variances = torch.stack([v for _, _, v in self.batches[i]])
        mean = (counts * means).sum(0) / counts.sum()
        return mean, (counts * (variances + (means - mean) ** 2)).sum(0) / counts.sum()

    def shifts(self) -> list[tuple[str, float]]:
        """(block, shift) per BN layer: median over channels of the squared 2-Wasserstein distance
        between N(mean, var) of the inputs and N(running_mean, running_var), over running_var.
        The median ignores the few dead channels whose running variance is ~0."""
        out = []
        for i, (block, bn) in enumerate(self.layers):
            mean, var = self.moments(i)
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
    """Penultimate features (as the head takes them) and original-head logits of the sample (or of its
    first images, once `max_seconds` have passed and `min_images` are done), collecting BN statistics."""
    loader = DataLoader(ImageSamples(samples, model.preprocessing.eval_transform()), batch_size=batch_size)
    stats = _BNStatistics(model)
    last = len(model.block_names) - 1  # the forward's sequence: everything before the head
    features, logits = [], []
    t0 = time.perf_counter()
    # the CPU convolutions' fast layout and passes (channels-last, a few images at a time), as the
    # training's feature pass: 3x faster per image than whole NCHW batches
    cpu = torch.device("cpu")
    with channels_last_on_cpu(model, cpu):
        try:
            for i, (x, _) in enumerate(loader):
                done = i * batch_size
                if max_seconds is not None and done >= min_images and time.perf_counter() - t0 > max_seconds:
                    break
                f = forward_in_passes(lambda part: model.forward_blocks(part, 0, last), x, cpu)
                features.append(f.float())
                logits.append(model.forward_blocks(f, last, last + 1).float())
                if progress:
                    print(f"\rmeasuring: {min((i + 1) * batch_size, len(samples))}/{len(samples)} images",
                          end="", file=sys.stderr)
        finally:
            stats.remove()
    if progress:
        print(file=sys.stderr)
    return torch.cat(features), torch.cat(logits), stats.shifts()


def size_train_would_pick(samples, model: str) -> int | None:
    """The input size `train` gives these images with `model` when none is given (the default preset's,
    training.presets.quality_settings), so that advice measures what training will see; None for the
    backbone's own."""
    short_side = median_short_side(s.path for s in samples)
    return quality_settings("default", [], set(), model, short_side)[0].get("image_size")


def measure(data, model: str = "efficientnet_lite0", weights: str = "default", image_size: int | None = None,
            val_split: float = 0.2, seed: int = 0, batch_size: int = 32, progress: bool = False,
            max_seconds: float | None = None, reuse=None) -> Measurements:
    """Measure a dataset folder with a pretrained model: one forward pass over a balanced sample
    (cut short, but with at least MIN_MEASURED_PER_CLASS images per class, when it would take more
    than `max_seconds`), at `image_size`, else at the size train would pick for these images. A table of
    images with several labels is measured in its multi-label form.
    reuse (training.features.CleanFeatures): keeps the sample's penultimate features for training."""
    scan = scan_dataset(data, val_split, seed, multilabel=True)
    train = scan.splits["train"]
    counts = [n for n in scan.counts("train").values()]
    net = create_model(model, weights=weights)  # the original 1000-class head is kept: it is measured too
    image_size = image_size or size_train_would_pick(train, model)
    if image_size:
        net.preprocessing = net.preprocessing.resized(image_size)
    rarest = None
    if scan.multilabel:  # an image counts for its rarest label (-1: an image without a label)
        def rarest(s: Sample) -> int:
            return min(s.indices, key=lambda j: (counts[j], j)) if s.indices else -1
    sample = sample_per_class(train, seed=seed, group=rarest)
    t0 = time.perf_counter()
    features, logits, shifts = _forward_sample(net, sample, batch_size, progress, max_seconds,
                                               min_images=MIN_MEASURED_PER_CLASS * len(scan.classes))
    seconds_per_image = (time.perf_counter() - t0) / len(features)
    sample = sample[:len(features)]
    if reuse is not None:
        reuse.add(net, len(net.block_names) - 1, net.preprocessing, [s.path for s in sample], features)
    features = features.flatten(1).numpy()
    labels = np.array([s.label if rarest is None else rarest(s) for s in sample])
    probs = logits.softmax(1)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(1) / math.log(probs.shape[1])
    per_block: dict[str, list[float]] = {}
    for block, value in shifts:
        per_block.setdefault(block, []).append(value)
    half = half_per_class(labels, seed)
    if scan.multilabel:
        targets = np.zeros((len(sample), len(scan.classes)), dtype=bool)
        for row, s in enumerate(sample):
            targets[row, list(s.indices)] = True
        present = targets.any(0)
        accuracy, accuracy_half = probe_map(features, targets, seed), probe_map(features[half], targets[half], seed)
        chance = float(targets[:, present].mean()) if present.any() else None
    else:
        targets, chance = labels, None
        accuracy, accuracy_half = probe_accuracy(features, labels), probe_accuracy(features[half], labels[half])
    return Measurements(
        num_images=len(train),
        num_val_images=len(scan.splits["val"]),
        num_classes=len(scan.classes),
        min_per_class=min(counts),
        sampled=len(sample),
        logme=logme(features, targets),
        probe_accuracy=accuracy,
        probe_accuracy_half=accuracy_half,
        separability=separability(accuracy, len(scan.classes), chance),
        bn_shift=float(np.mean([v for _, v in shifts])) if shifts else 0.0,
        bn_shift_per_block={b: float(np.mean(v)) for b, v in per_block.items()},
        head_confidence=float(probs.max(1).values.mean()),
        head_entropy=float(entropy.mean()),
        blocks=net.group_names,
        seconds_per_image=seconds_per_image,
        input_size=net.preprocessing.input_size,
        multilabel=scan.multilabel,
    )


def feature_pass_seconds(m: Measurements, images: int, size: int | None = None) -> float:
    """Seconds for the backbone's forward pass over `images` at input `size`, from the measuring pass
    (the cost grows with the pixels)."""
    return m.seconds_per_image * ((size or m.input_size) / m.input_size) ** 2 * images
