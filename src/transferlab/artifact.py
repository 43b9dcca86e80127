"""The run folder, the unit users keep: weights (safetensors), model.json, checkpoints, metrics, report."""
from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .classifier import Classifier
from .errors import CheckpointError, TransferlabError
from .io import atomic_write_json, load_state_dict_file, save_weights
from .models import BlockNet, create_model
from .preprocess import Preprocessing
from .strategies import effective_bn_policy
from .weights import load_user_weights

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
    import timm
    import torch
    import torchvision

    return {"transferlab": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "python": sys.version.split()[0], "platform": platform.platform()}


def write_run(out: Path, model: BlockNet, scan, cfg, phases, metrics: dict, history: list[dict]) -> Classifier:
    """Write weights + model.json, evaluate the validation (and test) split, plot and report."""
    from .evaluation import evaluate_classifier
    from .report import write_report

    out = Path(out)
    save_weights(model.state_dict(), out / "model.safetensors")
    meta = {
        "format": FORMAT,
        "kind": "classifier",
        "architecture": cfg.model,
        "num_classes": len(scan.classes),
        "classes": scan.classes,
        "preprocessing": model.preprocessing.to_dict(),
        "strategy": cfg.strategy,
        "phases": [p.to_dict() for p in phases],
        "freeze": phases[-1].freeze,
        "frozen_blocks": model.block_names[: phases[-1].freeze],
        "blocks": model.block_names,
        "bn_policy": effective_bn_policy(cfg.strategy, cfg.bn),
        "config": asdict(cfg),
        "dataset": scan.to_dict(),
        "metrics": metrics,
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if getattr(cfg, "advice", None):
        meta["advice"] = cfg.advice
    clf = Classifier(model, list(scan.classes), model.preprocessing, name=str(out), meta=meta)
    evaluations = {}
    for split in ("val", "test"):
        if scan.splits.get(split):
            evaluations[split] = evaluate_classifier(clf, scan.splits[split], device=cfg.device, progress=False)
            metrics[f"{split}_acc_final"] = evaluations[split]["accuracy"]
    atomic_write_json(out / "model.json", meta)
    write_report(out, meta, history, evaluations)
    return clf


def read_meta(run) -> dict:
    path = Path(run) / "model.json"
    if not path.is_file():
        raise TransferlabError(f"{run} is not a transferlab run folder (no model.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e}); re-run training or restore the file") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown run format {meta.get('format')!r}")
    return meta


def read_config(run) -> dict:
    """The training config of a run, from its model.json or, for an unfinished run, its checkpoint."""
    run = Path(run) if run else None
    if run is None:
        raise TransferlabError("--resume needs the run folder (--out RUN or --resume RUN)")
    if (run / "model.json").is_file():
        return dict(read_meta(run)["config"])
    last = run / "checkpoints" / "last.pt"
    if not last.is_file():
        raise TransferlabError(
            f"nothing to resume in {run}: no checkpoints/last.pt (the run stopped before its first epoch ended); "
            f"start it again without --resume, e.g. `transferlab train DATA --out {run}`"
        )
    from .io import safe_torch_load

    return dict(safe_torch_load(last)["config"])


def load_run(run) -> Classifier:
    """A trained run as a Classifier; weights load from safetensors, never from a pickle."""
    run = Path(run)
    meta = read_meta(run)
    model = create_model(meta["architecture"], num_classes=meta["num_classes"], weights="none")
    model.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    load_user_weights(model, load_state_dict_file(run / "model.safetensors"), str(run / "model.safetensors"))
    model.eval()
    return Classifier(model, list(meta["classes"]), model.preprocessing, name=str(run), meta=meta)
