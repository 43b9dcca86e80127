"""The commands every kind of model shares (predict, evaluate, export) and the option types, built once
for `transferlab ...` and `transferlab detect ...`."""
from __future__ import annotations

import argparse
import importlib

from ..core.options import (ANNOTATION_FORMATS, BACKENDS, EXPLAIN_METHODS, LABEL_SMOOTHING_MULTILABEL,
                            LABEL_SMOOTHING_ONE_LABEL)


def lazy_handler(module: str, name: str):
    """The handler `name` of transferlab.cli.`module`, imported when the command runs: building the
    parser imports no torch, so `--help` answers at once."""

    def run(args) -> int:
        return getattr(importlib.import_module(f"transferlab.cli.{module}"), name)(args)

    return run


def add_predict(sub, name: str = "predict", default_model: str = "efficientnet_lite0",
                help: str = "label images, or find faces, with a pretrained model or a trained run"):
    """The predict command (also `detect predict`, whose default model is a face detector)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("images", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument("--model", default=default_model,
                   help="registry name, timm:NAME, blazeface_front|back, or a run folder of either kind")
    p.add_argument("--weights", default="default", help="'default' (pretrained), 'none', or a weights file")
    p.add_argument("--top", type=int, default=5, help="classifier: how many labels per image")
    p.add_argument("--labels", help="classifier: labels file, one class name per line (or a JSON list)")
    p.add_argument("--threshold", type=_probability,
                   help="detector: minimum face score; multi-label classifier: one decision threshold for every "
                        "label (default: the model's own)")
    p.add_argument("--draw", metavar="DIR", help="detector: save copies of the images with faces drawn")
    add_tta_option(p, "classifier; default: as the run was trained")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None,
                   help="decoding threads, running ahead of the network (default: one per core)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="classifier engine; auto: ONNX Runtime on CPU (about twice as fast) for 128 images "
                        "or more, or 8 once its export is cached, PyTorch otherwise; onnxruntime-int8: the run's int8 "
                        "export (transferlab export RUN --quantize int8)")
    p.add_argument("--max-drop", type=_points, metavar="POINTS",
                   help="classifier, --backend auto: use the run's int8 export when the accuracy drop it "
                        "recorded at export time is at most POINTS")
    p.add_argument("--explain", metavar="DIR",
                   help="classifier: write a class-activation heatmap over each image into DIR (its path in the "
                        "record's heatmap); needs pip install 'transferlab[explain]'")
    p.add_argument("--explain-class", metavar="NAME",
                   help="with --explain: the class to explain (default: the top class; a multi-label model's labels)")
    p.add_argument("--explain-method", default="gradcam", choices=EXPLAIN_METHODS,
                   help="with --explain: gradcam (default), gradcam++ or eigencam (class-agnostic), by pytorch-grad-cam")
    add_output_options(p)
    p.set_defaults(func=lazy_handler("predicting", "cmd_predict"))
    return p


def add_output_options(p) -> None:
    """--json [FILE] and --csv FILE, the same for every command that prints records."""
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", nargs="?", const="-", metavar="FILE",
                     help="JSON records: to stdout, or to FILE")
    out.add_argument("--csv", metavar="FILE", help="write a CSV file ('-' for stdout)")


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a score between 0 and 1")
    return value


def _points(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of accuracy points >= 0")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def add_table_options(p, val: bool = True) -> None:
    """--val, --image-col, --label-col, --label-delim: how to read a table of images and labels (CSV, TSV,
    JSON lines) given where a dataset folder is accepted. val=False where the command has its own --val."""
    g = p.add_argument_group("a table of images and labels (CSV, TSV, JSON lines) instead of a folder")
    if val:
        g.add_argument("--val", dest="val_data", metavar="TABLE",
                       help="a table of validation images (the data's table is then all training)")
    g.add_argument("--image-col", metavar="NAME",
                   help="the column of image paths (default: image, file, path or filename)")
    g.add_argument("--label-col", metavar="NAME",
                   help="the label column (default: label, labels, tags, class, category or target), or several "
                        "0/1 columns, comma-separated (default: the 0/1 columns when no label column is named)")
    g.add_argument("--label-delim", metavar="SEP",
                   help="what separates several labels in one cell (default: a space; 'none': one label per cell)")


def add_log_option(p) -> None:
    """--log tensorboard|mlflow (train, detect train, sweep): the experiment trackers a run logs to."""
    from ..core.options import TRACKERS

    p.add_argument("--log", metavar="|".join(TRACKERS),
                   help="also log the run to TensorBoard (RUN/tensorboard) or MLflow ($MLFLOW_TRACKING_URI, else "
                        "./mlruns), or both comma-separated: epochs, config, tags, artifacts, the best metric "
                        "(pip install 'transferlab[track]')")


def add_tta_option(p, what: str) -> None:
    """--tta on|off: a classifier's test-time augmentation (each image and its mirror, averaged)."""
    from ..core.options import TOGGLES

    p.add_argument("--tta", choices=TOGGLES,
                   help=f"test-time augmentation: each image and its mirror, averaged ({what})")


def tta_setting(args) -> bool | None:
    """--tta as the API takes it: True, False, or None (not given)."""
    return None if getattr(args, "tta", None) is None else args.tta == "on"


def add_evaluate(sub, name: str = "evaluate"):
    """The evaluate command (also `detect evaluate`)."""
    p = sub.add_parser(name, help="evaluate a model on labelled data: accuracy and confusion matrix "
                                  "(classifier), AP@0.5 next to the pretrained model's (detector)")
    p.add_argument("model", help="run folder of either kind, or a registry name")
    p.add_argument("data", help="classifier: class sub-folders (test/ or val/ inside is used when present) or a "
                                "table of images and labels (its test rows, else val rows, else all); detector: "
                                "annotated faces (folder or annotation file)")
    p.add_argument("--format", default="auto", choices=ANNOTATION_FORMATS,
                   help="detector: annotation format")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="the result as JSON: stdout, or FILE")
    p.add_argument("--plot", metavar="PNG",
                   help="confusion matrix (classifier) or precision/recall curve (detector) image; "
                        "default RUN/eval_confusion.png or RUN/eval_pr_curve.png")
    p.add_argument("--threshold", type=_probability,
                   help="multi-label classifier: one decision threshold for every label (default: the run's tuned ones)")
    add_tta_option(p, "classifier; default: as the run was trained")
    add_table_options(p)
    p.set_defaults(func=lazy_handler("evaluating", "cmd_evaluate"))


def add_export(sub, name: str = "export"):
    """The export command (also `detect export`)."""
    from ..core.options import CALIBRATION_METHODS, EXPORT_FORMATS, QUANTIZE_MODES

    p = sub.add_parser(name, help="export a model to ONNX or TorchScript (outputs checked against PyTorch)")
    p.add_argument("model", help="run folder of either kind, or a registry name")
    p.add_argument("--format", default="onnx", choices=EXPORT_FORMATS)
    p.add_argument("--out", help="output file (default: RUN/model.onnx or .pt, or NAME.onnx; "
                                 "RUN/model-int8.onnx with --quantize int8)")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="onnx: int8 (static, calibrated on the run's training images; CPUs, phones) or fp16 "
                        "(GPUs); accuracy before and after on the validation split goes to quantization.json")
    p.add_argument("--max-drop", type=_points, default=1.0, metavar="POINTS",
                   help="with --quantize: refuse (and write nothing) when validation accuracy drops by more "
                        "than POINTS (default 1)")
    p.add_argument("--calibration", type=positive_int, default=128, metavar="N",
                   help="with --quantize int8: training images to calibrate on (default 128)")
    p.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=None,
                   help="with --quantize int8: ONNX Runtime's calibrator (default: percentile, chosen by measurement: see docs/deploy.md)")
    p.add_argument("--data", help="with --quantize: a dataset folder to calibrate and measure on instead of the "
                                  "run's own (classifier: class sub-folders or a table of images and labels; "
                                  "detector: annotated faces)")
    p.set_defaults(func=lazy_handler("evaluating", "cmd_export"))


def add_train(sub, default_model: str | None = None,
              help: str = "transfer-learn a model: a classifier on an image folder, a face detector on boxes") -> None:
    """`train` on a sub-command group; the model chooses the task (`transferlab detect train` is this
    command with a detector as the default model)."""
    from ..core.options import (ANNOTATION_FORMATS, AUGMENT_LEVELS, AUGMENT_POLICIES, BALANCE, BN_POLICIES,
                                QUALITIES, SCHEDULES, STRATEGIES, LR_SCALINGS, SWITCHES)
    from ..training.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help=help)
    p.add_argument("data", help="a classifier's dataset folder (class sub-folders, or train/ val/ [test/] each with "
                                "class sub-folders), or a detector's annotated faces (a folder or annotation file)")
    p.add_argument("--model", default=default_model,
                   help=f"registry name or timm:NAME, or a face detector (blazeface_front, blazeface_back) "
                        f"(default {default_model or d.model}; with --strategy auto --budget: the installed "
                        "backbone with the best LogME)")
    # options whose default depends on the task stay None here: the task fills them in
    p.add_argument("--strategy", choices=STRATEGIES,
                   help=f"default {d.strategy} for a classifier, finetune for a detector; auto: measure the data, "
                        "train the head, then fine-tune only while it beats the head")
    p.add_argument("--budget", help="a wall-clock limit for the run, e.g. 90s, 10m, 1h: epochs that would not "
                                    "finish are not run and the best model so far is kept")
    p.add_argument("--finetune-trial", type=int, default=d.finetune_trial, metavar="N",
                   help="two-stage: keep fine-tuning only if within N epochs it beats the head's val loss (0: off)")
    p.add_argument("--out", help="run folder (default: runs/DATA-MODEL-STRATEGY)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument("--quality", choices=QUALITIES,
                   help="presets of backbone, input size, epochs and recipe (default: default); options given "
                        "explicitly win over the preset's; best under --budget trains the largest schedule that fits")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--head-epochs", type=int, help="two-stage: epochs of the head-only phase (default: a third)")
    p.add_argument("--freeze", help="partial: number of leading blocks frozen, or the first trainable block's name")
    p.add_argument("--lr", help="learning rate, or 'find' for a range test (default: the strategy's)")
    p.add_argument("--lr-mult", type=float, default=d.lr_mult, help="two-stage: head lr / stem lr in phase 2")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay} for a classifier")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES)
    p.add_argument("--warmup-epochs", type=float, help=f"default {d.warmup_epochs} for a classifier")
    p.add_argument("--label-smoothing", type=float,
                   help=f"default {LABEL_SMOOTHING_ONE_LABEL:g} for one label per image, "
                        f"{LABEL_SMOOTHING_MULTILABEL:g} for several (multi-label)")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping on val loss; 0 disables")
    p.add_argument("--augment", choices=AUGMENT_LEVELS, help=f"default {d.augment}")
    p.add_argument("--augment-policy", choices=AUGMENT_POLICIES,
                   help="an automatic augmentation policy on top of --augment (auto: TrivialAugment for strong)")
    p.add_argument("--mixup", type=float, metavar="ALPHA",
                   help="mixup of image batches (0: off; 0.2 is common); not in phases trained from cached features")
    p.add_argument("--cutmix", type=float, metavar="ALPHA", help="cutmix of image batches (0: off)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="validate and keep an exponential moving average of the weights (0: off; e.g. 0.999)")
    p.add_argument("--progressive", type=float, metavar="SCALE",
                   help="progressive resizing: image phases start at SCALE x the input side and ramp up to it "
                        "(0: off; e.g. 0.6); validation stays at full size")
    add_tta_option(p, "the run's evaluations and every later predict and serve; default off")
    p.add_argument("--balance", default=d.balance, choices=BALANCE)
    p.add_argument("--bn", default=d.bn, choices=BN_POLICIES,
                   help="BatchNorm statistics: eval (kept everywhere), frozen (kept in frozen blocks), train (updated)")
    p.add_argument("--val-split", type=float, default=d.val_split)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--amp", default=d.amp, choices=SWITCHES)
    p.add_argument("--workers", type=int)
    p.add_argument("--weights", default=d.weights, help="'default' (pretrained), 'none', or a weights file")
    p.add_argument("--image-size", type=int, help="the input size (default: the backbone's own, larger when the "
                                                  "images hold more pixels, up to 1.3x; e.g. 128 for speed)")
    p.add_argument("--cache-features", default=d.cache_features, choices=SWITCHES)
    p.add_argument("--cache-views", type=int, default=d.cache_views,
                   help="views cached per image with augmentation (the first is the clean image)")
    p.add_argument("--cache-dir", help="keep decoded images and frozen-prefix features here, reused across runs")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--accum-steps", type=int, default=d.accum_steps, help="gradient accumulation steps")
    p.add_argument("--micro-batch", default=d.micro_batch, metavar="auto|off|N",
                   help="images per forward/backward pass within a batch (auto: 8 on CPU when the gradient is "
                        "unchanged by splitting, i.e. BatchNorm statistics are frozen)")
    p.add_argument("--grad-checkpointing", default=d.grad_checkpointing, metavar="auto|off|N",
                   help="recompute the first N blocks in backward to save memory (auto: the high-resolution "
                        "ones, on CPU when the batch stays whole)")
    p.add_argument("--sync-bn", action="store_true", help="several GPUs: synchronise trainable BatchNorm")
    p.add_argument("--exclude", metavar="FILE", help="leave out the files listed (transferlab audit --write-exclude)")
    p.add_argument("--no-audit", dest="audit", action="store_false",
                   help="skip the check for images shared between splits (leakage)")
    p.add_argument("--format", dest="data_format", default=d.data_format, choices=ANNOTATION_FORMATS,
                   help="detector: the annotation format")
    p.add_argument("--val", dest="val_data", help="separate validation data (default: hold out --val-split)")
    p.add_argument("--threshold", type=float,
                   help="multi-label: one decision threshold for every label (default: tuned per label on validation)")
    p.add_argument("--lr-scaling", choices=LR_SCALINGS,
                   help="detector: relative (each tensor's lr times its RMS; the default) or none")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    add_log_option(p)
    add_table_options(p, val=False)  # train has its own --val (a table, or a detector's annotations)
    p.set_defaults(func=lazy_handler("training", "cmd_train"))
