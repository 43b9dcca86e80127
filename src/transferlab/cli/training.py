"""`transferlab train`: the handler over transferlab.api.train."""
from __future__ import annotations

from ..core.errors import TransferlabError


def train_options(args) -> dict:
    """TrainConfig fields from parsed CLI arguments (only those the user can set)."""
    from dataclasses import fields

    from ..training.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)} - {"model", "strategy"}
    options = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if isinstance(options.get("lr"), str) and options["lr"] != "find":
        try:
            options["lr"] = float(options["lr"])
        except ValueError:
            raise TransferlabError(f"--lr must be a number or 'find', got {options['lr']!r}") from None
    if isinstance(options.get("freeze"), str) and options["freeze"].lstrip("-").isdigit():
        options["freeze"] = int(options["freeze"])
    return options


def cmd_train(args) -> int:
    """Train (or resume) a classifier run and print where it is."""
    from ..api import train

    options = train_options(args)
    if args.resume:
        run = train(args.data, out=args.resume, resume=True, progress=not args.quiet,
                    **{k: v for k, v in options.items() if k in ("device", "workers")})
    else:
        run = train(args.data, model=args.model, strategy=args.strategy, out=args.out, progress=not args.quiet,
                    **options)
    from ..core.distributed import is_main_process

    if is_main_process():
        skipped = run.classifier.meta["dataset"]["skipped"] if run.classifier else []
        if skipped:
            print(f"skipped {len(skipped)} unusable file(s), listed in {run.path / 'model.json'}")
        print(f"run folder: {run.path}")
        print(f"best val accuracy {run.metrics['val_acc']:.4f} at epoch {run.metrics['best_epoch']}")
    return 0
