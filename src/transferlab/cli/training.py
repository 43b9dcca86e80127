"""`transferlab train`: the handler over transferlab.api.train."""
from __future__ import annotations

from ..core.errors import TransferlabError
from .commands import tta_setting


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
    if "tta" in options:
        options["tta"] = tta_setting(args)
    if isinstance(options.get("freeze"), str) and options["freeze"].lstrip("-").isdigit():
        options["freeze"] = int(options["freeze"])
    return options


def cmd_train(args) -> int:
    """Train (or resume) a run of either kind and print where it is and how it scored."""
    from ..api import train

    options = train_options(args)
    if args.resume:
        run = train(args.data, out=args.resume, resume=True, progress=not args.quiet,
                    **{k: v for k, v in options.items() if k in ("device", "workers")})
    else:
        run = train(args.data, model=args.model, strategy=args.strategy, out=args.out, progress=not args.quiet,
                    **options)
    from ..core.distributed import is_main_process

    if not is_main_process():
        return 0
    print(f"run folder: {run.path}")
    m = run.metrics
    if run.predictor.kind == "detector":
        skipped = run.path / "skipped.txt"
        if skipped.is_file() and skipped.stat().st_size:
            print(f"{len(skipped.read_text().splitlines())} annotations skipped; see {skipped}")
        if "val_ap50" in m:
            print(f"validation AP@0.5: saved {m['val_ap50']:.4f} (epoch {m['best_epoch']}), "
                  f"pretrained {m['pretrained_val_ap50']:.4f}")
        return 0
    skipped = run.predictor.meta["dataset"]["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} unusable file(s), listed in {run.path / 'model.json'}")
    print(f"best val accuracy {m['val_acc']:.4f} at epoch {m['best_epoch']}")
    return 0
