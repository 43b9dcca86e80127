"""`transferlab detect ...`: the face-detection commands, in the same grammar as the classifier's
(predict, evaluate and export are the shared commands with a detector as the default model)."""
from __future__ import annotations

import argparse

DETECTOR_DEFAULT = "blazeface_front"


def register(subparsers) -> argparse.ArgumentParser:
    """Add `detect` and its sub-commands to the main parser."""
    from .commands import add_evaluate, add_export, add_predict, positive_int

    detect = subparsers.add_parser("detect", help="face detection with BlazeFace: predict, train, evaluate, export")
    sub = detect.add_subparsers(dest="detect_command", metavar="COMMAND", required=True)
    add_predict(sub, default_model=DETECTOR_DEFAULT, help="find faces in images, folders or globs")

    p = sub.add_parser("train", help="fine-tune BlazeFace on annotated faces")
    p.add_argument("data", help="dataset folder or annotation file")
    p.add_argument("--model", default=DETECTOR_DEFAULT, choices=("blazeface_front", "blazeface_back"))
    p.add_argument("--out", help="run folder (default: runs/DATA-MODEL-finetune)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument("--format", default="auto", choices=("auto", "wider", "voc", "coco", "yolo", "csv"))
    p.add_argument("--val", help="separate validation data (default: hold out --val-split of DATA)")
    p.add_argument("--val-split", type=float, default=None, help="share of DATA held out for validation")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--freeze", type=int, default=None, help="number of leading backbone blocks to keep frozen")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=train_command)

    add_evaluate(sub)
    add_export(sub)
    return detect


def train_command(args) -> int:
    """Fine-tune (or resume) a detector run and print its AP next to the pretrained model's."""
    from ..detect.trainer import TrainConfig, train
    from ..runs.folder import default_run_dir

    options = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "freeze", "workers", "device", "seed",
                                             "val_split") if getattr(args, k) is not None}
    out = args.resume or args.out or default_run_dir(args.data, args.model, "finetune")
    config = TrainConfig(model=args.model, **options)
    result = train(args.data, out, config, fmt=args.format, val_data=args.val, resume=bool(args.resume),
                   progress=not args.quiet)
    meta = result.meta
    skipped = meta["data"]["skipped_annotations"]
    print(f"trained {meta['metrics']['epochs_completed']} epochs in {result.train_seconds:.0f} s -> {result.run_dir}")
    if skipped:
        print(f"{skipped} annotations skipped; see {result.run_dir / 'skipped.txt'}")
    if result.val is not None:
        print(f"validation AP@0.5: fine-tuned {result.val.ap:.4f}, pretrained {result.pretrained_val.ap:.4f}")
    return 0
