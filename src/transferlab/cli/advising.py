"""`transferlab advise` and `transferlab sweep`."""
from __future__ import annotations

import json

from ..core.errors import TransferlabError


def cmd_advise(args) -> int:
    """Measure the dataset and print the advice (or its JSON)."""
    from ..advice.rules import advise, format_advice, jsonable
    from ..data.tables import as_table

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if args.models is not None and not models:
        raise TransferlabError("--models needs at least one model name, e.g. --models resnet18,efficientnet_lite0")
    advice = advise(as_table(args.data, args), args.model, models, args.weights, args.image_size, args.val_split,
                    args.seed, progress=not args.json)
    print(json.dumps(jsonable(advice.to_dict()), indent=2) if args.json else format_advice(advice))
    return 0


def cmd_sweep(args) -> int:
    """Search the freeze point, train the winner, print the table."""
    from ..advice.sweep import Trial, format_trials, freeze_search
    from ..data.tables import as_table
    from ..training.budget import parse_duration
    from ..training.config import TrainConfig

    options = {k: getattr(args, k) for k in ("model", "epochs", "lr", "batch_size", "augment", "image_size",
                                             "val_split", "seed", "device", "weights", "workers", "budget",
                                             "val_data", "image_col", "label_col", "label_delim", "log")}
    if options["budget"] is not None:
        options["budget"] = parse_duration(options["budget"])
    cfg = TrainConfig(strategy="partial", freeze="auto", **{k: v for k, v in options.items() if v is not None})
    points = [p.strip() for p in args.points.split(",") if p.strip()] if args.points else None
    run = freeze_search(as_table(args.data, args), cfg, out=args.out, progress=not args.quiet, points=points,
                        eta=args.eta)
    trials = [Trial(**t) for t in json.loads((run.path / "sweep.json").read_text())]
    print(format_trials(trials))
    metric = "val mAP" if "val_map" in run.metrics else "val accuracy"
    print(f"best freeze point: {trials[-1].freeze} (training from {trials[-1].block}), "
          f"{metric} {trials[-1].score:.4f}")
    print(f"run folder: {run.path}  (table: sweep.csv, plot: sweep.png)")
    return 0
