"""The Run view's data: what a run folder shows in the browser (served by `transferlab serve`, or
inlined in report.html). Images are named by an id into the run's own index, never by a path."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..core.errors import ImageReadError
from ..core.io import atomic_write_json
from ..data.images import open_image
from .folder import read_meta

EVALUATION_FILE = "evaluation.json"
# the order in which the view picks the evaluation it shows: the latest `evaluate`, then test, then val
SHOWN_SPLITS = ("evaluate", "test", "val")
MAX_CELL_IMAGES = 24
MAX_ERRORS = 16
MAX_PR_LABELS = 20  # a multi-label view draws the precision/recall curves of the most frequent labels
MAX_PR_POINTS = 120
THUMBNAIL_SIDE = 128


def write_evaluations(run, evaluations: dict) -> None:
    """Merge evaluations ({split name: result}) into RUN/evaluation.json, which the Run view reads."""
    path = Path(run) / EVALUATION_FILE
    saved = read_evaluations(run)
    saved.update(evaluations)
    atomic_write_json(path, saved)


def read_evaluations(run) -> dict:
    """RUN/evaluation.json, or {} when there is none (or it cannot be read)."""
    path = Path(run) / EVALUATION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def read_history(run) -> list[dict]:
    """metrics.csv as rows with numbers where the cells hold numbers."""
    try:
        text = (Path(run) / "metrics.csv").read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({k: _number(v) for k, v in row.items() if k})
    return rows


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text if text != "" else None
    return int(value) if value.is_integer() and "." not in str(text) else value


def run_view(run) -> tuple[dict, list[str]]:
    """The Run view's data and its image index (paths; the data names images by position in it)."""
    run = Path(run)
    meta = read_meta(run)
    data = {"name": run.name, "kind": meta["kind"], "meta": {k: v for k, v in meta.items() if k != "versions"},
            "versions": meta.get("versions", {}), "history": read_history(run), "evaluation": None}
    images: list[str] = []
    evaluations = read_evaluations(run)
    shown = next((s for s in SHOWN_SPLITS if s in evaluations), None)
    if shown and evaluations[shown].get("multilabel"):
        data["evaluation"] = _multilabel_view(shown, evaluations[shown], images)
    elif shown and meta["kind"] == "classifier":
        data["evaluation"] = _classifier_view(shown, evaluations[shown], images)
    elif shown:
        ev = evaluations[shown]
        data["evaluation"] = {"split": shown, "kind": "detector", "summary": ev.get("summary"),
                              "ap50": ev.get("ap50", {}), "images": ev.get("images")}
    if data["evaluation"] and data["evaluation"].get("errors"):
        _error_heatmaps(data["evaluation"]["errors"], evaluations[shown], run, images)
    return data, images


def _error_heatmaps(errors: list[dict], ev: dict, run: Path, images: list[str]) -> None:
    """Each shown error gains "heatmaps": the ids of its class-activation overlays in the image index
    ({"true", "predicted"}, or {"label"} for a multi-label error), made when the run was written or
    evaluated (inference/explain.error_heatmaps); only files inside the run folder."""
    root = run.resolve()
    for shown, saved in zip(errors, ev.get("most_confident_errors", [])):
        maps = {}
        for role, rel in (saved.get("heatmaps") or {}).items():
            path = (run / str(rel)).resolve()
            if path.is_relative_to(root) and path.is_file():
                maps[role] = len(images)
                images.append(str(path))
        if maps:
            shown["heatmaps"] = maps


def _image_ids(images: list[str]):
    """A function giving each path its id in `images` (appended there the first time it is seen)."""
    ids: dict[str, int] = {}

    def image_id(path: str) -> int:
        if path not in ids:
            ids[path] = len(images)
            images.append(path)
        return ids[path]

    return image_id


def _classifier_view(split: str, ev: dict, images: list[str]) -> dict:
    classes = ev["classes"]
    k = len(classes)
    image_id = _image_ids(images)
    cells = [[[] for _ in range(k)] for _ in range(k)]
    for p in sorted(ev.get("predictions", []), key=lambda p: -p["confidence"]):
        cell = cells[p["true"]][p["predicted"]]
        if len(cell) < MAX_CELL_IMAGES:
            cell.append({"id": image_id(p["path"]), "confidence": p["confidence"]})
    errors = [{"id": image_id(w["path"]), "true": w["true"], "predicted": w["predicted"], "confidence": w["confidence"]}
              for w in ev.get("most_confident_errors", [])[:MAX_ERRORS]]
    return {"split": split, "kind": "classifier", "data": ev.get("split", split), "accuracy": ev["accuracy"],
            "macro_f1": ev["macro_f1"], "images": ev["images"], "classes": classes, "confusion": ev["confusion"],
            "per_class": ev["per_class"], "cells": cells, "errors": errors,
            "unreadable": len(ev.get("unreadable", []))}


def _multilabel_view(split: str, ev: dict, images: list[str]) -> dict:
    """A multi-label evaluation: the summary metrics, the per-label table, each label's precision/recall
    curve (from the kept predictions) and the most confidently wrong labels."""
    image_id = _image_ids(images)
    errors = [{"id": image_id(w["path"]), "label": w["label"], "error": w["error"], "score": w["score"]}
              for w in ev.get("most_confident_errors", [])[:MAX_ERRORS]]
    return {"split": split, "kind": "multilabel", "data": ev.get("split", split), "map": ev["map"],
            "micro_f1": ev["micro_f1"], "macro_f1": ev["macro_f1"], "exact_match": ev["exact_match"],
            "images": ev["images"], "classes": ev["classes"], "per_label": ev["per_label"], "errors": errors,
            "pr_curves": label_pr_curves(ev.get("predictions", []), ev["classes"]),
            "unreadable": len(ev.get("unreadable", []))}


def label_pr_curves(predictions: list[dict], classes: list[str], most: int = MAX_PR_LABELS,
                    points: int = MAX_PR_POINTS) -> list[dict]:
    """The precision/recall curve of each label with a positive image (the `most` most frequent), as
    {label, ap, recall, precision} with at most about `points` points each (rounded to 4 digits)."""
    import numpy as np

    from ..inference.multilabel import average_precision, pr_curve

    if not predictions:
        return []
    scores = np.array([p["scores"] for p in predictions], dtype=np.float64)
    targets = np.zeros(scores.shape, dtype=bool)
    for row, p in enumerate(predictions):
        targets[row, p["true"]] = True
    out = []
    for j in np.argsort(-targets.sum(0), kind="stable")[:most]:
        if targets[:, j].any():
            recall, precision = pr_curve(scores[:, j], targets[:, j])
            full = int(np.argmax(recall >= recall[-1])) + 1  # past full recall the curve only falls
            recall, precision = recall[:full], precision[:full]
            keep = np.unique(np.r_[np.linspace(0, len(recall) - 1, min(points, len(recall))).astype(int),
                                   len(recall) - 1])
            out.append({"label": classes[j], "ap": round(average_precision(scores[:, j], targets[:, j]), 4),
                        "recall": np.round(recall[keep], 4).tolist(), "precision": np.round(precision[keep], 4).tolist()})
    return out


def thumbnail_jpeg(path, side: int = THUMBNAIL_SIDE) -> bytes | None:
    """A small JPEG of an image file (longer side `side`), or None when it cannot be read."""
    try:
        img = open_image(path)
    except ImageReadError:
        return None
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
