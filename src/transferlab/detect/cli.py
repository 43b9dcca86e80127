"""`transferlab detect ...`: predict, train, evaluate, export. Wired in by the main CLI via `register`."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ..errors import ImageReadError, TransferlabError

MODEL_HELP = "blazeface_front (128 px, close faces), blazeface_back (256 px, smaller faces) or a run folder"


def register(subparsers) -> argparse.ArgumentParser:
    detect = subparsers.add_parser("detect", help="face detection with BlazeFace: predict, train, evaluate, export")
    sub = detect.add_subparsers(dest="detect_command", metavar="COMMAND", required=True)

    p = sub.add_parser("predict", help="detect faces in an image or a folder of images")
    p.add_argument("input", type=Path, help="image file or folder")
    p.add_argument("--model", default="blazeface_front", help=MODEL_HELP)
    p.add_argument("--threshold", type=_probability, default=None, help="minimum score (default: the model's, 0.5)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", type=Path, metavar="FILE", help="write detections as JSON ('-' for stdout)")
    out.add_argument("--csv", type=Path, metavar="FILE", help="write detections as CSV ('-' for stdout)")
    p.add_argument("--draw", type=Path, metavar="OUT_DIR", help="save copies of the images with boxes drawn")
    p.set_defaults(func=predict_command)

    p = sub.add_parser("train", help="fine-tune BlazeFace on annotated faces")
    p.add_argument("data", type=Path, help="dataset folder or annotation file")
    p.add_argument("--model", default="blazeface_front", choices=("blazeface_front", "blazeface_back"))
    p.add_argument("--out", type=Path, required=True, help="run folder to create (or continue with --resume)")
    p.add_argument("--format", default="auto", choices=("auto", "wider", "voc", "coco", "yolo", "csv"))
    p.add_argument("--val", type=Path, help="separate validation data (default: hold out 20%% of DATA)")
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--freeze", type=int, default=0, help="number of leading backbone blocks to keep frozen")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    p.set_defaults(func=train_command)

    p = sub.add_parser("evaluate", help="AP@0.5 on annotated faces, next to the pretrained model's")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("data", type=Path, help="dataset folder or annotation file")
    p.add_argument("--format", default="auto", choices=("auto", "wider", "voc", "coco", "yolo", "csv"))
    p.add_argument("--plot", type=Path, help="precision/recall PNG (default: RUN/eval_pr_curve.png for a run)")
    p.set_defaults(func=evaluate_command)

    p = sub.add_parser("export", help="export a detector to ONNX and check it against onnxruntime")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--format", default="onnx", choices=("onnx",))
    p.add_argument("--out", type=Path, help="output file (default: RUN/model.onnx, or NAME.onnx)")
    p.set_defaults(func=export_command)
    return detect


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a score between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _inputs(path: Path) -> list[Path]:
    from .image import list_images

    if path.is_dir():
        images = list_images(path)
        if not images:
            raise TransferlabError(f"{path}: no images (.jpg, .png, ...) found in the folder")
        return images
    if not path.is_file():
        raise TransferlabError(f"{path}: no such image file or folder")
    return [path]


def predict_command(args) -> int:
    from .detector import load_detector, to_records
    from .draw import draw_detections
    from .image import load_image

    paths = _inputs(args.input)
    detector = load_detector(args.model)
    records, failed = [], 0
    for start in range(0, len(paths), 32):
        batch, names = [], []
        for p in paths[start:start + 32]:
            try:
                batch.append(load_image(p))
                names.append(p)
            except ImageReadError as e:
                if len(paths) == 1:
                    raise
                failed += 1
                print(f"skipped {e}", file=sys.stderr)
        for path, image, det in zip(names, batch, detector.detect_arrays(batch, args.threshold)):
            found = to_records(str(path), det)
            records += found
            if args.draw:
                _save_drawing(draw_detections(image, found), args.draw, path, args.input)
    _write_records(records, args)
    print(f"{len(records)} face(s) in {len(paths) - failed} image(s)" + (f" ({failed} unreadable)" if failed else ""),
          file=sys.stderr)
    return 0


def _save_drawing(image, out_dir: Path, path: Path, root: Path) -> None:
    from ..io import atomic_path  # imported here: building the parser needs no torch

    rel = path.relative_to(root) if root.is_dir() else Path(path.name)
    target = out_dir / rel
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG" if target.suffix.lower() == ".png" else "JPEG")


_CSV_COLUMNS = ["image", "score", "xmin", "ymin", "xmax", "ymax"] + [
    f"{name}_{axis}" for name in ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")
    for axis in "xy"]


def _write_records(records: list[dict], args) -> None:
    from ..io import atomic_path, atomic_write_json

    if args.json:
        if str(args.json) == "-":
            print(json.dumps(records, indent=2))
        else:
            atomic_write_json(args.json, records)
    elif args.csv:
        rows = [[r["image"], r["score"], *r["box"], *(v for xy in r["keypoints"] for v in xy)] for r in records]
        if str(args.csv) == "-":
            csv.writer(sys.stdout).writerows([_CSV_COLUMNS, *rows])
        else:
            with atomic_path(args.csv) as tmp, open(tmp, "w", newline="") as f:
                csv.writer(f).writerows([_CSV_COLUMNS, *rows])
    else:
        for r in records:
            x0, y0, x1, y1 = r["box"]
            print(f"{r['image']}\t{r['score']:.3f}\t{x0:.1f},{y0:.1f},{x1:.1f},{y1:.1f}")


def train_command(args) -> int:
    from .trainer import TrainConfig, train

    config = TrainConfig(architecture=args.model, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         freeze=args.freeze, num_workers=args.workers, device=args.device, seed=args.seed)
    result = train(args.data, args.out, config, fmt=args.format, val_data=args.val, resume=args.resume)
    meta = json.loads((result.run_dir / "model.json").read_text())
    skipped = meta["data"]["skipped_annotations"]
    print(f"trained {meta['metrics']['epochs_completed']} epochs in {result.train_seconds:.0f} s -> {result.run_dir}")
    if skipped:
        print(f"{skipped} annotations skipped; see {result.run_dir / 'skipped.txt'}")
    if result.val is not None:
        print(f"validation AP@0.5: fine-tuned {result.val.ap:.4f}, pretrained {result.pretrained_val.ap:.4f}")
    return 0


def evaluate_command(args) -> int:
    from .data import load_faces
    from .detector import load_detector
    from .evaluate import evaluate_detector, plot_pr_curves

    dataset = load_faces(args.data, args.format)
    detector = load_detector(args.model)
    arch = detector.model.config.name
    curves = {str(args.model): evaluate_detector(detector, dataset)}
    if arch != args.model:
        curves[f"pretrained {arch}"] = evaluate_detector(load_detector(arch), dataset)
    print(dataset.summary())
    for name, c in curves.items():
        print(f"AP@0.5 {c.ap:.4f}  {name}")
    plot = args.plot or (Path(args.model) / "eval_pr_curve.png" if Path(args.model).is_dir() else None)
    if plot:
        plot_pr_curves(curves, plot)
        print(f"precision/recall curve: {plot}")
    return 0


def export_command(args) -> int:
    from .detector import load_detector
    from .export import export_onnx

    detector = load_detector(args.model)
    out = args.out or (Path(args.model) / "model.onnx" if Path(args.model).is_dir() else Path(f"{args.model}.onnx"))
    result = export_onnx(detector, out)
    print(f"exported {result.path}; onnxruntime parity max abs diff {result.max_abs_diff:.2e}")
    return 0
