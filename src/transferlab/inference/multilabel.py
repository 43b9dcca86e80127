"""Metrics of a multi-label classifier (sigmoid scores, several labels per image) and its decision
thresholds: average precision per label and its mean (mAP, what the best epoch is chosen by), micro
and macro F1, per-label precision/recall/F1/AP, the exact-match ratio, and per-label decision
thresholds from validation scores."""
from __future__ import annotations

import numpy as np
import torch

# without tuning (or for a label with no positive validation image) a label is predicted at p >= 0.5
DEFAULT_THRESHOLD = 0.5


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one label: mean precision at the rank of each positive image (scikit-learn's definition,
    ties broken by the sort); NaN when the label has no positive image."""
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    # group tied scores: precision is measured at the end of each run of equal scores
    s = scores[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(hits)[ends]
    precision = tp / (ends + 1)
    recall_step = np.diff(np.r_[0.0, tp]) / n_pos
    return float(np.sum(recall_step * precision))


def per_label_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP of every label (columns); NaN for labels without a positive image."""
    return np.array([average_precision(scores[:, j], targets[:, j]) for j in range(targets.shape[1])])


def mean_average_precision(scores, targets) -> float:
    """mAP: the mean AP over the labels that have a positive image (macro average precision)."""
    ap = per_label_ap(_np(scores), _np(targets))
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _f1(tp, fp, fn):
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)


def tune_thresholds(scores, targets) -> list[float]:
    """Per label, half the best F1 these (validation) scores reach; DEFAULT_THRESHOLD for a label without
    positive images. For calibrated scores (a sigmoid trained with binary cross-entropy) the threshold
    that maximises F1 is F1*/2 (Lipton, Elkan & Narayanaswamy 2014), and F1*, a maximum, moves far less
    with which images are in val than the score where it is reached: tuned on half of aquarium's val
    and measured on the other half, it beat 0.5 on 7 of 8 runs where the argmax beat it on 4 of 8
    (bench/thresholds.py, docs/benchmarks.md "Tables and multi-label")."""
    scores, targets = _np(scores), _np(targets)
    return [float(best_f1(scores[:, j], targets[:, j]) / 2) if targets[:, j].any() else DEFAULT_THRESHOLD
            for j in range(targets.shape[1])]


def best_f1(scores: np.ndarray, positives: np.ndarray) -> float:
    """The highest F1 any threshold reaches on one label's scores."""
    return float(f1_curve(scores, positives)[1].max())


def f1_curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One label's distinct scores, highest first, and the F1 of predicting positive down to each."""
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], positives[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # the last image of each run of equal scores
    tp = np.cumsum(t)[ends]
    return s[ends], _f1(tp, (ends + 1) - tp, t.sum() - tp)


def multilabel_report(scores, targets, classes: list[str], thresholds) -> dict:
    """Every metric of a multi-label prediction at the given per-label thresholds."""
    scores, targets = _np(scores).astype(np.float64), _np(targets).astype(bool)
    predicted = scores >= np.asarray(thresholds)[None, :]
    tp = (predicted & targets).sum(0)
    fp = (predicted & ~targets).sum(0)
    fn = (~predicted & targets).sum(0)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    f1 = _f1(tp, fp, fn)
    ap = per_label_ap(scores, targets)
    present = targets.sum(0) > 0
    return {
        "map": float(np.nanmean(ap)) if present.any() else 0.0,
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "exact_match": float((predicted == targets).all(1).mean()) if len(targets) else 0.0,
        "per_label": [{"label": c, "ap": None if np.isnan(a) else float(a), "precision": float(p), "recall": float(r),
                       "f1": float(f), "threshold": float(th), "support": int(n)}
                      for c, a, p, r, f, th, n in zip(classes, ap, precision, recall, f1, thresholds, targets.sum(0))],
    }


def pr_curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of one label as the threshold falls through the scores."""
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    tp = np.cumsum(hits)
    return tp / max(hits.sum(), 1), tp / np.arange(1, len(hits) + 1)
