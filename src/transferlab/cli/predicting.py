"""`transferlab predict` (and `detect predict`): records for every kind of model, as a table, JSON or CSV."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from ..core.io import atomic_path, atomic_write_json
from .commands import tta_setting

KEYPOINTS = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")


def cmd_predict(args) -> int:
    """Predict, write the records where asked; exit 1 when no image could be read."""
    from ..api import load

    explain = _explain_folder(args)
    net = load(args.model, weights=args.weights, labels=args.labels, tta=tta_setting(args))
    if net.kind == "detector":
        records = net.predict(args.images, args.threshold, batch_size=args.batch_size)
        if args.draw:
            draw_all(records, args.draw)
    else:
        records = net.predict(args.images, top=args.top, batch_size=args.batch_size, num_workers=args.workers,
                              device=args.device, backend=args.backend, max_drop=args.max_drop,
                              threshold=args.threshold, explain=explain, explain_class=args.explain_class,
                              explain_method=args.explain_method)
        if net.last_backend == "onnxruntime-int8" and args.backend != "onnxruntime-int8":
            print("predicted with the run's int8 export (its recorded accuracy drop is within --max-drop)",
                  file=sys.stderr)
    write_records(records, args)
    return 0 if any(r["status"] == "ok" for r in records) else 1


def _explain_folder(args) -> str | None:
    """--explain DIR, checked before any model loads: a classifier's option, and --explain-class needs it."""
    from ..api import EXPLAIN_DETECTOR, model_kind
    from ..core.errors import TransferlabError

    explain = getattr(args, "explain", None)
    if explain is None and getattr(args, "explain_class", None) is not None:
        raise TransferlabError("--explain-class applies with --explain DIR")
    if explain is not None and model_kind(args.model) == "detector":
        raise TransferlabError(EXPLAIN_DETECTOR)
    return explain


def write_records(records: list[dict], args) -> None:
    """JSON (stdout or file), CSV (stdout or file) or the table, by the --json / --csv options."""
    if args.json:
        if args.json == "-":
            print(json.dumps(records, indent=2))
        else:
            atomic_write_json(args.json, records)
            print(f"wrote {len(records)} record(s) to {args.json}", file=sys.stderr)
    elif args.csv:
        rows = csv_rows(records)
        if args.csv == "-":
            csv.writer(sys.stdout).writerows(rows)
        else:
            # surrogateescape: file names that are not valid UTF-8 are written back byte for byte
            with atomic_path(args.csv) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                                     errors="surrogateescape") as f:
                csv.writer(f).writerows(rows)
            print(f"wrote {len(records)} record(s) to {args.csv}", file=sys.stderr)
    else:
        print(format_records(records))


def csv_rows(records: list[dict]) -> list[list]:
    """A header and one row per label (classifier) or face (detector); unreadable images keep a row.
    A multi-label classifier's rows are its top labels and every label it gives, by score, with a
    `predicted` column: 1 where the label is at or above its threshold (in the record's "labels")."""
    detector = any("detections" in r for r in records)
    multilabel = any("labels" in r for r in records)
    if detector:
        header = ["path", "status", "score", "xmin", "ymin", "xmax", "ymax"] + [
            f"{k}_{axis}" for k in KEYPOINTS for axis in "xy"]
    else:
        header = ["path", "status", "rank", "label", "index", "prob"] + (["predicted"] if multilabel else [])
    rows = [header]
    for r in records:
        items = r.get("detections", _scored_labels(r) if multilabel else r.get("top", []))
        if r["status"] != "ok" or not items:
            rows.append([r["path"], r["status"]] + [""] * (len(header) - 2))
        for rank, item in enumerate(items, 1):
            if detector:
                rows.append([r["path"], "ok", item["score"], *item["box"], *(v for xy in item["keypoints"] for v in xy)])
            else:
                rows.append([r["path"], "ok", rank, item["label"], item["index"], f"{item['prob']:.6f}"]
                            + ([int(item["predicted"])] if multilabel else []))
    return rows


def _scored_labels(record: dict) -> list[dict]:
    """A multi-label record's top labels and the labels it gives (which a small --top may leave out of
    the top), highest score first, each with "predicted"."""
    given = {g["index"] for g in record.get("labels", [])}
    items = {t["index"]: {**t, "predicted": t["index"] in given} for t in record.get("top", [])}
    for g in record.get("labels", []):
        items.setdefault(g["index"], {"label": g["label"], "index": g["index"], "prob": g["score"], "predicted": True})
    return sorted(items.values(), key=lambda t: -t["prob"])


def format_records(records: list[dict]) -> str:
    """The terminal table: each image, then its labels or its faces."""
    lines = []
    for r in records:
        lines.append(r["path"])
        if r["status"] != "ok":
            lines.append(f"  ERROR: {r['status']}")
        elif "labels" in r:  # multi-label: the labels given (at or above their thresholds), then the top scores
            given = ", ".join(f"{g['label']} {g['score']:.2f}" for g in r["labels"])
            lines.append(f"  labels: {given or '(none at or above its threshold)'}")
        for rank, t in enumerate(r.get("top", []), 1):
            lines.append(f"  {rank}. {t['label']:<32} {t['prob']:7.2%}  (class {t['index']})")
        for h in r.get("heatmaps") or ([{"path": r["heatmap"]}] if r.get("heatmap") else []):
            lines.append(f"  heatmap{' ' + h['label'] if 'label' in h else ''}: {h['path']}")
        for d in r.get("detections", []):
            x0, y0, x1, y1 = d["box"]
            lines.append(f"  face {d['score']:.3f}  box {x0:.0f},{y0:.0f},{x1:.0f},{y1:.0f}")
    failed = sum(r["status"] != "ok" for r in records)
    if any("detections" in r for r in records):
        faces = sum(len(r["detections"]) for r in records)
        lines.append(f"{faces} face(s) in {len(records) - failed} image(s), {failed} unreadable")
    else:
        lines.append(f"{len(records) - failed} image(s) labelled, {failed} unreadable")
    return "\n".join(lines)


def draw_all(records: list[dict], out_dir) -> None:
    """Copies of the readable images with their faces drawn, under out_dir (one file per image name)."""
    import numpy as np

    from ..data.images import open_image
    from ..detect.draw import draw_detections

    for r in records:
        if r["status"] != "ok":
            continue
        target = Path(out_dir) / Path(r["path"]).name
        image = draw_detections(np.asarray(open_image(r["path"])), r["detections"])
        with atomic_path(target) as tmp:
            image.save(tmp, format="PNG" if target.suffix.lower() == ".png" else "JPEG")
