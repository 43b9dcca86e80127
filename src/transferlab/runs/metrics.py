"""metrics.csv: one row per epoch, for every kind of run."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..core.io import atomic_write_text


def write_metrics(path: Path, history: list[dict]) -> None:
    """Write the epoch rows atomically; columns are the union of the rows' keys, in first-seen order."""
    if not history:
        return
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())
