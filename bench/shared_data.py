"""Where the benches find the shared photo sets (../shared/datasets beside the project), and the one line
a bench stops with when a set it was asked for is not there."""
from __future__ import annotations

import sys
from pathlib import Path

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def require_folder(folder: Path, what: str, flag: str) -> Path:
    """`folder` if it exists; otherwise one line on stderr naming it and the flag to pass, exit 2."""
    folder = Path(folder)
    if not folder.exists():
        print(f"{Path(sys.argv[0]).name}: {what} not found at {folder}: pass {flag} with its location "
              f"(the shared sets live in ../shared/datasets beside a development checkout)", file=sys.stderr)
        raise SystemExit(2)
    return folder
