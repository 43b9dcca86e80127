"""`transferlab audit`: the handler over transferlab.api.audit."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_audit(args) -> int:
    """Audit a dataset folder; print a summary, write audit.html/csv/json, the exclude list and --json."""
    from ..auditing.report import write_exclude
    from ..api import audit
    from ..data.tables import as_table, dataset_name

    out = Path(args.out) if args.out else Path("audits") / dataset_name(args.data)
    result = audit(as_table(args.data, args), model=args.model, out=out, weights=args.weights,
                   image_size=args.image_size, cache_dir=args.cache_dir, val_split=args.val_split, seed=args.seed,
                   threshold=args.threshold, batch_size=args.batch_size, workers=args.workers, device=args.device,
                   exclude=args.exclude, progress=not args.quiet)
    if args.json:
        text = json.dumps(result.to_dict(), indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    stream = sys.stderr if args.json == "-" else sys.stdout
    print(result.summary(), file=stream)
    print(f"report: {out / 'audit.html'} (and audit.csv, audit.json)", file=stream)
    if args.write_exclude:
        target = write_exclude(result, args.write_exclude)
        print(f"exclude list ({len(result.exclude_paths())} files): {target}; "
              f"train with --exclude {target}", file=stream)
    return 0
