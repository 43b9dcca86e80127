"""Average precision at IoU 0.5 with all-point interpolation (Pascal VOC 2010+, WIDER FACE)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from .boxes import Detections
from .data import FaceDataset
from .detector import Detector
from .image import load_image

# low enough to trace the whole precision/recall curve, high enough to keep NMS cheap
EVAL_SCORE_THRESHOLD = 0.05


@dataclass
class PRCurve:
    precision: np.ndarray
    recall: np.ndarray
    ap: float
    num_faces: int
    num_detections: int


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (precision made monotone from the right)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    step = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[step + 1] - r[step]) * p[step + 1]))


def pr_curve(detections: list[Detections], ground_truth: list[np.ndarray], iou_threshold: float = 0.5) -> PRCurve:
    """Greedy matching in descending score order over the whole set; a face matches at most once."""
    scores, hits = [], []
    for det, gt in zip(detections, ground_truth):
        order = det.scores.argsort(descending=True)
        gt_t = torch.as_tensor(gt, dtype=torch.float32).reshape(-1, 4)
        iou = box_iou(det.boxes[order].float(), gt_t) if len(gt_t) else torch.zeros(len(order), 0)
        taken = torch.zeros(len(gt_t), dtype=torch.bool)
        for i in range(len(order)):
            cand = iou[i].masked_fill(taken, -1.0) if len(gt_t) else iou[i]
            hit = len(gt_t) > 0 and float(cand.max()) >= iou_threshold
            if hit:
                taken[cand.argmax()] = True
            hits.append(hit)
        scores.append(det.scores[order].numpy())
    num_faces = int(sum(len(g) for g in ground_truth))
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    tp = np.asarray(hits, dtype=np.float64)[np.argsort(-all_scores, kind="stable")]
    cum_tp, cum_fp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = cum_tp / max(num_faces, 1)
    precision = cum_tp / np.maximum(cum_tp + cum_fp, 1e-12)
    ap = average_precision(recall, precision) if num_faces else 0.0
    return PRCurve(precision, recall, ap, num_faces, len(tp))


def evaluate_detector(detector: Detector, dataset: FaceDataset, score_threshold: float = EVAL_SCORE_THRESHOLD) -> PRCurve:
    detections = []
    for start in range(0, len(dataset.samples), 64):
        chunk = dataset.samples[start:start + 64]
        detections += detector.detect_arrays([load_image(s.image) for s in chunk], score_threshold)
    return pr_curve(detections, [s.boxes for s in dataset.samples])


def plot_pr_curves(curves: dict[str, PRCurve], path: str | Path, title: str = "Face detection, IoU 0.5") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, c in curves.items():
        ax.plot(c.recall, c.precision, label=f"{name} (AP {c.ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
