"""Average precision at IoU 0.5 with all-point interpolation (Pascal VOC 2010+, WIDER FACE)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from .boxes import Detections
from .data import FaceDataset
from ..runs.report import plot_pr_curves
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
    """Precision/recall and AP@0.5 of a detector on a face dataset."""
    detections = []
    for start in range(0, len(dataset.samples), 64):
        chunk = dataset.samples[start:start + 64]
        detections += detector.detect_arrays([load_image(s.image) for s in chunk], score_threshold)
    return pr_curve(detections, [s.boxes for s in dataset.samples])


def evaluate_faces(detector: Detector, data, format: str = "auto", plot=None) -> dict:
    """AP@0.5 of a detector on annotated faces, next to its pretrained architecture's when it is a
    fine-tuned run; a precision/recall plot in RUN/eval_pr_curve.png for a run (or at `plot`)."""
    from .data import load_faces
    from .detector import load_detector

    dataset = load_faces(data, format)
    arch = detector.model.config.name
    curves = {detector.source: evaluate_detector(detector, dataset)}
    if detector.source != arch:
        curves[f"pretrained {arch}"] = evaluate_detector(load_detector(arch), dataset)
    plot = plot or (Path(detector.source) / "eval_pr_curve.png" if Path(detector.source).is_dir() else None)
    if plot:
        plot_pr_curves(curves, plot)
    return {"kind": "detector", "data": str(data), "summary": dataset.summary(), "images": len(dataset.samples),
            "faces": dataset.num_faces, "ap50": {name: c.ap for name, c in curves.items()},
            "plot": str(plot) if plot else None}
