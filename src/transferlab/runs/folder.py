"""The run folder, the unit users keep, for every kind of model: weights (safetensors), model.json
(one schema: `format`, `kind`, architecture, preprocessing, config, metrics, versions), checkpoints,
metrics.csv, report. Writing and reading the parts that do not depend on the kind."""
from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..core.errors import CheckpointError, TransferlabError
from ..core.io import atomic_write_json, safe_torch_load
from ..core.options import RUN_KINDS
from ..data.tables import dataset_name

FORMAT = "transferlab-run/1"


def prepare_run_dir(path: Path) -> None:
    """A fresh run needs an empty (or new) folder: an existing run is never overwritten silently."""
    path = Path(path)
    if path.exists() and not _restartable(path):
        raise TransferlabError(
            f"run folder {path} already exists and is not empty; use --resume to continue it or choose another --out"
        )
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TransferlabError(f"cannot create run folder {path}: {e.strerror}; choose a writable --out") from None
    try:  # the probe has a temporary name, so a run killed right here can still be started again
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TransferlabError(f"cannot write to run folder {path}: {e.strerror}; choose a writable --out") from None


def _is_temp(name: str) -> bool:
    """Our atomic writes' temporary names (.NAME.XXXX.tmp), and those of safetensors' own atomic
    writer (Rust tempfile: .tmpXXXXXX), which a killed run can leave behind."""
    return name.startswith(".") and (name.endswith(".tmp") or re.fullmatch(r"\.tmp[A-Za-z0-9]{6}", name) is not None)


def remove_stale_temp_files(run: Path) -> None:
    """Leftovers of a killed write are never read; resuming clears them from the run folder."""
    for p in Path(run).rglob(".*"):
        if p.is_file() and _is_temp(p.name):
            p.unlink(missing_ok=True)


# Written at the end of the first epoch just before checkpoints/last.pt: alone, it is the remains
# of a run killed before its first checkpoint, which resume cannot use.
_BEFORE_FIRST_CHECKPOINT = {Path("checkpoints") / "best.safetensors"}


def _restartable(path: Path) -> bool:
    """True when `path` holds no run data: nothing, empty folders, or the temporary files and first
    best weights of a run killed before its first checkpoint (which are removed). Such a run can
    simply be started again."""
    if not path.is_dir():
        return False
    entries = list(path.rglob("*"))
    if any(p.is_file() and not _is_temp(p.name) and p.relative_to(path) not in _BEFORE_FIRST_CHECKPOINT
           for p in entries):
        return False
    for p in entries:
        if p.is_file():
            p.unlink(missing_ok=True)
    return True


def versions() -> dict:
    """The library versions a run was made with (recorded in model.json)."""
    import timm
    import torch
    import torchvision

    return {"transferlab": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "python": sys.version.split()[0], "platform": platform.platform()}


def write_meta(out, kind: str, meta: dict) -> dict:
    """Write model.json with the fields every run shares (format, kind, versions, created) first."""
    if kind not in RUN_KINDS:
        raise ValueError(f"run kind must be one of {RUN_KINDS}")
    full = {"format": FORMAT, "kind": kind, **meta, "versions": versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(Path(out) / "model.json", full)
    return full


def is_run_folder(path) -> bool:
    """A folder with a model.json (of any kind)."""
    return Path(path).is_dir() and (Path(path) / "model.json").is_file()


def read_meta(run, kind: str | None = None) -> dict:
    """model.json of a run, checked: known format, and the expected kind when one is given."""
    path = Path(run) / "model.json"
    if not path.is_file():
        raise TransferlabError(f"{run} is not a transferlab run folder (no model.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # not JSON, or not UTF-8 text
        raise CheckpointError(f"{path} is corrupt ({str(e)[:120]}); re-run training or restore the file") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is corrupt (not a JSON object); re-run training or restore the file")
    if meta.get("format") != FORMAT or meta.get("kind") not in RUN_KINDS:
        raise CheckpointError(f"{path}: not a transferlab run (format {meta.get('format')!r}, kind {meta.get('kind')!r}); "
                              f"re-run training with this version of transferlab")
    if kind is not None and meta["kind"] != kind:
        raise TransferlabError(f"{run} is a {meta['kind']} run, not a {kind} run")
    return meta


def read_config(run) -> dict:
    """The training config of a run, from its model.json or, for an unfinished run, its checkpoint."""
    run = Path(run) if run else None
    if run is None:
        raise TransferlabError("--resume needs the run folder (--out RUN or --resume RUN)")
    last = run / "checkpoints" / "last.pt"
    state = check_resumable(safe_torch_load(last), last) if last.is_file() else None
    if (run / "model.json").is_file():
        return dict(read_meta(run)["config"])
    if state is None:
        raise TransferlabError(
            f"nothing to resume in {run}: no checkpoints/last.pt (the run stopped before its first epoch ended); "
            f"start it again without --resume, e.g. `transferlab train DATA --out {run}`"
        )
    return dict(state["config"])


def check_resumable(state: dict, path: Path) -> dict:
    """A checkpoint the one training engine can continue: it holds the phases of its plan (a detector
    checkpoint written before the engine had tasks holds its own epoch counter instead)."""
    if "phases" not in state:
        raise TransferlabError(f"{path} was written by an older transferlab and cannot be resumed: start the run "
                               "again without --resume (into a new --out, or after deleting the folder)")
    return state


def default_run_dir(data, model: str, strategy: str) -> Path:
    """runs/DATA-MODEL-STRATEGY, numbered when taken."""
    base = Path("runs") / f"{dataset_name(data)}-{model.replace(':', '_')}-{strategy}"
    path, i = base, 2
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path
