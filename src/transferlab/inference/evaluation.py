"""Metrics of a classifier on labelled images: accuracy, per-class precision/recall/F1, confusion,
and the most confidently wrong images."""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import DatasetError
from ..data.folders import Sample, scan_dataset
from ..data.tables import is_table
from .classifier import Classifier


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """rows: true class, columns: predicted class."""
    idx = y_true * num_classes + y_pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_report(cm: torch.Tensor, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    tp = cm.diag().float()
    predicted = cm.sum(0).float()
    actual = cm.sum(1).float()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    return [
        {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
        for c, p, r, f, n in zip(classes, precision, recall, f1, actual)
    ]


def evaluate_classifier(clf: Classifier, samples: list[Sample], device=None, batch_size: int = 64,
                        progress: bool = True, worst: int = 10, keep_predictions: bool = False) -> dict:
    """Predict every sample and compute the metrics; unreadable images are counted, not fatal.

    keep_predictions: also return "predictions", one {"path", "true", "predicted", "confidence"} per
    readable image (class indices), which the Run view groups by confusion-matrix cell."""
    records = clf.predict([s.path for s in samples], top=len(clf.classes), batch_size=batch_size,
                          device=device, progress=progress)
    by_path = {r["path"]: r for r in records}
    y_true, y_pred, wrong, unreadable, kept = [], [], [], [], []
    for s in samples:
        r = by_path.get(str(s.path))
        if r is None or r["status"] != "ok":
            unreadable.append(str(s.path))
            continue
        pred = r["top"][0]
        y_true.append(s.label)
        y_pred.append(pred["index"])
        kept.append({"path": str(s.path), "true": s.label, "predicted": pred["index"], "confidence": pred["prob"]})
        if pred["index"] != s.label:
            wrong.append({"path": str(s.path), "true": clf.classes[s.label], "predicted": pred["label"],
                          "confidence": pred["prob"]})
    k = len(clf.classes)
    yt, yp = torch.tensor(y_true, dtype=torch.long), torch.tensor(y_pred, dtype=torch.long)
    cm = confusion_matrix(yt, yp, k)
    accuracy = float((yt == yp).float().mean()) if len(yt) else 0.0
    per_class = per_class_report(cm, clf.classes)
    result = {
        "accuracy": accuracy,
        "images": len(y_true),
        "unreadable": unreadable,
        "macro_f1": sum(r["f1"] for r in per_class) / k,
        "per_class": per_class,
        "confusion": cm.tolist(),
        "classes": list(clf.classes),
        "most_confident_errors": sorted(wrong, key=lambda w: -w["confidence"])[:worst],
    }
    if keep_predictions:
        result["predictions"] = kept
    return result


def predicted_scores(clf: Classifier, samples: list[Sample], device=None, batch_size: int = 64,
                     progress: bool = True, threshold: float | None = None) -> tuple[list[dict], list[Sample]]:
    """Every sample predicted with every class's score (records in sample order) and the readable
    samples; unreadable images are counted by the callers, not fatal."""
    records = clf.predict([s.path for s in samples], top=len(clf.classes), batch_size=batch_size, device=device,
                          progress=progress, threshold=threshold)
    by_path = {r["path"]: r for r in records}
    kept = [(by_path[str(s.path)], s) for s in samples if by_path.get(str(s.path), {}).get("status") == "ok"]
    return [r for r, _ in kept], [s for _, s in kept]


def score_matrix(records: list[dict], num_classes: int) -> torch.Tensor:
    """(images x classes) scores from records that list every class in "top"."""
    out = torch.zeros(len(records), num_classes)
    for row, r in enumerate(records):
        for t in r["top"]:
            out[row, t["index"]] = t["prob"]
    return out


def evaluate_multilabel(clf: Classifier, samples: list[Sample], device=None, batch_size: int = 64,
                        progress: bool = True, worst: int = 10, keep_predictions: bool = False,
                        threshold: float | None = None) -> dict:
    """A multi-label classifier on samples carrying several labels: mAP, micro/macro F1, per-label
    precision/recall/F1/AP at its thresholds (or `threshold` for all), the exact-match ratio, and the
    most confidently wrong labels (a label given with a high score that the image lacks, or missed
    with a low score that it has)."""
    from .multilabel import multilabel_report

    records, readable = predicted_scores(clf, samples, device, batch_size, progress, threshold)
    k = len(clf.classes)
    scores = score_matrix(records, k)
    targets = torch.zeros(len(readable), k)
    for row, s in enumerate(readable):
        targets[row, list(s.indices)] = 1.0
    thresholds = [threshold] * k if threshold is not None else clf.thresholds
    result = multilabel_report(scores, targets, clf.classes, thresholds)
    wrong = []
    for row, s in enumerate(readable):
        for j in range(k):
            given, has = scores[row, j] >= thresholds[j], bool(targets[row, j])
            if given != has:
                score = float(scores[row, j])
                wrong.append({"path": str(s.path), "label": clf.classes[j], "score": score,
                              "error": "given, not in the labels" if given else "missed",
                              "confidence": score if given else 1 - score})
    result.update(multilabel=True, images=len(readable), classes=list(clf.classes),
                  unreadable=[str(s.path) for s in samples if s not in set(readable)],
                  most_confident_errors=sorted(wrong, key=lambda w: -w["confidence"])[:worst])
    if keep_predictions:
        result["predictions"] = [{"path": str(s.path), "true": list(s.indices), "scores": scores[row].tolist()}
                                 for row, s in enumerate(readable)]
    return result


def evaluate_folder(clf: Classifier, data, device=None, progress: bool = True, keep_predictions: bool = False,
                    threshold: float | None = None) -> dict:
    """Evaluate a Classifier on labelled images: a folder of class sub-folders (a test/ or val/ split
    inside it is used when present) or a table (its test rows, else its val rows, else every row);
    a multi-label classifier on a table of images with several labels (threshold: one for every label
    instead of the run's tuned ones)."""
    table = is_table(data)
    scan = scan_dataset(data, require_val=not table and _has_split(Path(data)), multilabel=clf.multilabel)
    split = "test" if scan.splits.get("test") else ("val" if scan.splits.get("val") else "train")
    unknown = [c for c in scan.classes if c not in clf.classes]
    if unknown:
        kind = "label(s)" if table else "class folder(s)"
        raise DatasetError(f"{scan.root} has {kind} the model does not know: {', '.join(unknown)}; "
                           f"the model's classes are {', '.join(clf.classes)}")
    remap = [clf.classes.index(c) for c in scan.classes]
    if clf.multilabel:
        samples = [Sample(s.path, -1, tuple(sorted(remap[i] for i in s.indices))) for s in scan.splits[split]]
        result = evaluate_multilabel(clf, samples, device=device, progress=progress,
                                     keep_predictions=keep_predictions, threshold=threshold)
    else:
        samples = [Sample(s.path, remap[s.label]) for s in scan.splits[split]]
        result = evaluate_classifier(clf, samples, device=device, progress=progress, keep_predictions=keep_predictions)
    result["split"] = f"{scan.root} ({split})"
    result["skipped"] = scan.skipped
    return result


def _has_split(root: Path) -> bool:
    return any((root / n).is_dir() for n in ("test", "val", "valid", "validation"))


def format_evaluation(result: dict) -> str:
    """The evaluation as a table for the terminal."""
    if result.get("multilabel"):
        return format_multilabel(result)
    classes = result["classes"]
    lines = [f"accuracy {result['accuracy']:.4f} on {result['images']} images, macro F1 {result['macro_f1']:.4f}"]
    if result.get("unreadable"):
        lines.append(f"{len(result['unreadable'])} unreadable image(s) skipped")
    width = max(8, *(len(c) for c in classes))
    lines.append(f"{'class':<{width}} precision  recall     f1  support")
    for r in result["per_class"]:
        lines.append(f"{r['class']:<{width}} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:6.3f} {r['support']:8d}")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    short = [c[:6] for c in classes]
    lines.append(" " * width + " " + " ".join(f"{c:>6}" for c in short))
    for c, row in zip(classes, result["confusion"]):
        lines.append(f"{c:<{width}} " + " ".join(f"{v:>6d}" for v in row))
    if result["most_confident_errors"]:
        lines.append("most confidently wrong:")
        for w in result["most_confident_errors"]:
            lines.append(f"  {w['path']}: {w['true']} predicted as {w['predicted']} ({w['confidence']:.1%})")
    return "\n".join(lines)


def format_multilabel(result: dict) -> str:
    """A multi-label evaluation as a table for the terminal."""
    lines = [f"mAP {result['map']:.4f} on {result['images']} images, micro F1 {result['micro_f1']:.4f}, "
             f"macro F1 {result['macro_f1']:.4f}, exact match {result['exact_match']:.4f}"]
    if result.get("unreadable"):
        lines.append(f"{len(result['unreadable'])} unreadable image(s) skipped")
    width = max(8, *(len(c) for c in result["classes"]))
    lines.append(f"{'label':<{width}}      AP  precision  recall     f1  threshold  support")
    for r in result["per_label"]:
        ap = "-" if r["ap"] is None else f"{r['ap']:.3f}"
        lines.append(f"{r['label']:<{width}} {ap:>7} {r['precision']:10.3f} {r['recall']:7.3f} {r['f1']:6.3f} "
                     f"{r['threshold']:10.3f} {r['support']:8d}")
    if result["most_confident_errors"]:
        lines.append("most confidently wrong labels:")
        for w in result["most_confident_errors"]:
            lines.append(f"  {w['path']}: {w['label']} {w['error']} (score {w['score']:.3f})")
    return "\n".join(lines)
