"""`transferlab runs [DIR]` and `transferlab runs compare RUN RUN ...`: the handlers over
transferlab.api.runs and transferlab.api.compare_runs."""
from __future__ import annotations

import csv
import io
import json
import sys

from ..core.errors import TransferlabError

COMPARE = "compare"


def add_runs(sub) -> None:
    """The runs command: a table of every run under a folder, or several runs compared."""
    from ..core.options import RUN_KINDS, RUN_SORT_KEYS
    from .commands import add_output_options, lazy_handler

    p = sub.add_parser("runs", help="every run under a folder as a table (runs [DIR]), or runs side by side "
                                    "(runs compare RUN RUN ...)")
    p.add_argument("folders", nargs="*", metavar="DIR",
                   help="the folder holding the runs (default runs/); or `compare` and two or more run folders")
    p.add_argument("--sort", default="created", choices=RUN_SORT_KEYS,
                   help="column to sort by (metric: best first; created: newest first)")
    p.add_argument("--kind", choices=RUN_KINDS, help="only runs of this kind")
    p.add_argument("--model", help="only runs of this model (architecture)")
    add_output_options(p)
    p.set_defaults(func=lazy_handler("listing", "cmd_runs"))


def cmd_runs(args) -> int:
    """Print the table (or JSON/CSV), or the comparison."""
    from ..api import compare_runs, runs
    from ..runs.table import format_comparison, format_runs

    if args.folders and args.folders[0] == COMPARE:
        result = compare_runs(args.folders[1:])
        if args.csv:
            raise TransferlabError("runs compare prints a table or --json, not --csv")
        _emit(json.dumps(result, indent=2, default=str) if args.json else format_comparison(result), args.json)
        return 0
    if len(args.folders) > 1:
        raise TransferlabError(f"runs takes one folder (got {len(args.folders)}); to compare runs: "
                               f"transferlab runs compare {' '.join(args.folders)}")
    rows = runs(args.folders[0] if args.folders else "runs", sort=args.sort, kind=args.kind, model=args.model)
    if args.json:
        _emit(json.dumps(rows, indent=2), args.json)
    elif args.csv:
        _write_csv(rows, args.csv)
    else:
        print(format_runs(rows))
    return 0


def _emit(text: str, target: str | None) -> None:
    """To stdout, or written whole to the file --json/--csv named."""
    if target and target != "-":
        from ..core.io import atomic_write_text

        atomic_write_text(target, text + "\n")
        print(f"wrote {target}", file=sys.stderr)
    else:
        print(text)


def _write_csv(rows: list[dict], target: str) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ["name"])
    writer.writeheader()
    writer.writerows(rows)
    _emit(buf.getvalue().rstrip("\n"), target)
