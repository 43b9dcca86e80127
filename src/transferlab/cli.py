"""The command line: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from . import __version__
from .errors import TransferlabError


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="label images with a pretrained model or a trained run")
    p.add_argument("images", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--model", default="efficientnet_lite0", help="registry name, timm:NAME, or a run folder")
    p.add_argument("--weights", default="default", help="'default' (pretrained), 'none', or a weights file")
    p.add_argument("--top", type=int, default=5, help="how many labels per image")
    p.add_argument("--labels", help="custom labels file: one class name per line (or a JSON list)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: from the machine)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    out.add_argument("--csv", metavar="FILE", help="write a CSV file (path,status,rank,label,index,prob)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from .classifier import load

    clf = load(args.model, weights=args.weights, labels=args.labels)
    records = clf.predict(args.images, top=args.top, batch_size=args.batch_size, num_workers=args.workers,
                          device=args.device)
    if args.json:
        print(json.dumps(records, indent=2))
    elif args.csv:
        write_predictions_csv(records, args.csv)
        print(f"wrote {len(records)} predictions to {args.csv}")
    else:
        print(format_predictions(records))
    return 0 if any(r["status"] == "ok" for r in records) else 1


def format_predictions(records) -> str:
    lines = []
    for r in records:
        if r["status"] != "ok":
            lines.append(f"{r['path']}\n  ERROR: {r['status']}")
            continue
        lines.append(r["path"])
        for rank, t in enumerate(r["top"], 1):
            lines.append(f"  {rank}. {t['label']:<32} {t['prob']:7.2%}  (class {t['index']})")
    failed = sum(r["status"] != "ok" for r in records)
    lines.append(f"{len(records) - failed} image(s) labelled, {failed} unreadable")
    return "\n".join(lines)


def write_predictions_csv(records, path) -> None:
    from .io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "status", "rank", "label", "index", "prob"])
        for r in records:
            if r["status"] != "ok":
                w.writerow([r["path"], r["status"], "", "", "", ""])
            for rank, t in enumerate(r["top"], 1):
                w.writerow([r["path"], "ok", rank, t["label"], t["index"], f"{t['prob']:.6f}"])


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registry: weight status, parameters, input size")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from .models import count_parameters, create_model, get_spec, list_models

    rows = []
    for name in list_models():
        spec = get_spec(name)
        params = count_parameters(create_model(name, weights="none"))
        status = "available" if spec.weights.available() else "needs download"
        rows.append({"name": name, "weights": status, "source": spec.weights.describe(), "params": params,
                     "input_size": spec.preprocessing.input_size, "description": spec.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<20} {'weights':<15} {'params':>8} {'input':>6}  source")
    for r in rows:
        print(f"{r['name']:<20} {r['weights']:<15} {r['params'] / 1e6:7.1f}M {r['input_size']:>5}px  {r['source']}")
    print("any timm architecture is also available as timm:NAME")
    return 0


COMMANDS = [_add_predict, _add_models]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferlab",
        description="Pretrained vision models made your own: predict, advise, train, evaluate, export, detect.",
    )
    parser.add_argument("--version", action="version", version=f"transferlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TransferlabError as e:
        print(f"transferlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("transferlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
