"""Every run under a folder as one table (`transferlab runs`, the served page's Runs tab), and several
runs side by side (`transferlab runs compare`). Reads run folders only: model.json, metrics.csv and, for
a run that never finished, the config in its last checkpoint; never a traceback for a folder that is
not a run, only a row that says so."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from ..core.errors import TransferlabError
from ..core.options import RUN_SORT_KEYS
from .folder import is_run_folder, read_meta
from .view import read_history

# the validation metric that keeps a run's best epoch, by the kind of run (the first present wins)
BEST_METRICS = ("val_map", "val_acc", "val_ap50")
# folders inside a run, or beside runs, that are never runs themselves and hold none
NOT_RUNS = {"checkpoints", "tensorboard", "mlruns", "__pycache__"}
MAX_DEPTH = 3  # how deep below DIR runs are looked for (runs/, runs/project/, runs/project/sweep/)
COMPLETE, INTERRUPTED, NOT_A_RUN, UNREADABLE = "complete", "interrupted", "not a run", "unreadable"


def run_folders(root) -> list[Path]:
    """The folders under `root` that hold a run or look like one: a run folder (model.json), an
    interrupted run (checkpoints/ or metrics.csv without model.json), or a folder holding neither and no
    run further down (listed as not a run). `root` itself when it is a run."""
    root = Path(root)
    if not root.is_dir():
        raise TransferlabError(f"{root} is not a folder; give the folder that holds the run folders (default runs/)")
    if _looks_like_run(root):
        return [root]
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> bool:
        """Add the runs under `folder`; True when there was any."""
        any_run = False
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                            and p.name not in NOT_RUNS):
            if _looks_like_run(child):
                found.append(child)
                any_run = True
            elif depth < MAX_DEPTH and walk(child, depth + 1):
                any_run = True
            elif depth == 1:
                found.append(child)  # a folder beside the runs that is none: listed, as not a run
        return any_run

    walk(root, 1)
    return found


def _looks_like_run(folder: Path) -> bool:
    return is_run_folder(folder) or (folder / "checkpoints").is_dir() or (folder / "metrics.csv").is_file()


def best_metric(metrics: dict) -> str | None:
    """The name of the metric that kept a run's best epoch: val_map (multi-label), val_acc, val_ap50."""
    return next((m for m in BEST_METRICS if isinstance(metrics.get(m), (int, float))), None)


def run_row(folder, root=None) -> dict:
    """One row of the table for a folder: name, status, kind, model, strategy, data, metric (its name),
    best (its value), best_epoch, epochs, wall_s (the seconds of its epochs), created, path."""
    folder = Path(folder)
    name = str(folder.relative_to(root)) if root is not None and folder != Path(root) else folder.name
    row = {"name": name, "status": COMPLETE, "kind": None, "model": None, "strategy": None, "data": None,
           "metric": None, "best": None, "best_epoch": None, "epochs": None, "wall_s": None, "created": None,
           "path": str(folder)}
    history = read_history(folder)
    trained = [r for r in history if isinstance(r.get("epoch"), int) and r["epoch"] > 0]
    if trained:
        row["epochs"] = len(trained)
        # to the millisecond: a cached head's epochs take milliseconds, and the table and page round for display
        row["wall_s"] = round(sum(r.get("time_s") or 0.0 for r in trained), 3)
    if is_run_folder(folder):
        try:
            meta = read_meta(folder)
        except TransferlabError as e:
            return {**row, "status": UNREADABLE, "note": str(e)}
        config = meta.get("config") or {}
        metrics = meta.get("metrics") or {}
        row.update(kind=meta["kind"], model=meta.get("architecture") or config.get("model"),
                   strategy=_strategy(meta.get("strategy") or config.get("strategy"), config),
                   data=_data(meta), created=meta.get("created"))
        metric = best_metric(metrics)
        if metric:
            row.update(metric=metric, best=metrics[metric], best_epoch=metrics.get("best_epoch"))
        return row
    if not _looks_like_run(folder):
        return {**row, "status": NOT_A_RUN, "note": "no model.json, checkpoints or metrics.csv"}
    # an interrupted run: what it trained so far, and its config from the last checkpoint
    row["status"] = INTERRUPTED
    state = _checkpoint_summary(folder)
    if state:
        config = state.get("config") or {}
        row.update(kind=state.get("task"), model=config.get("model"), strategy=_strategy(config.get("strategy"), config))
    metric = next((m for m in BEST_METRICS if any(isinstance(r.get(m), (int, float)) for r in history)), None)
    if metric:
        best = max((r for r in history if isinstance(r.get(metric), (int, float))), key=lambda r: r[metric])
        row.update(metric=metric, best=best[metric], best_epoch=best.get("epoch"))
    stamp = max((p.stat().st_mtime for p in [folder / "metrics.csv", folder] if p.exists()), default=None)
    if stamp is not None:
        row["created"] = datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")
    return row


def _strategy(strategy, config: dict):
    """The strategy as asked: auto runs are named for it, with the plan it resolved to."""
    advice = config.get("advice") or {}
    return f"auto/{strategy}" if isinstance(advice, dict) and "plan" in advice else strategy


def _data(meta: dict):
    source = (meta.get("dataset") or {}).get("root") or (meta.get("data") or {}).get("source")
    return _basename(source)


def _basename(source):
    return Path(str(source)).name if source else None


def _checkpoint_summary(folder: Path) -> dict:
    """The kind ("task") and config in checkpoints/last.pt, read without loading the weights
    (memory-mapped); {} when there is none."""
    last = folder / "checkpoints" / "last.pt"
    if not last.is_file():
        return {}
    try:
        import torch

        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        return {"task": state.get("task", "classifier"), "config": dict(state.get("config") or {})}
    except Exception:  # noqa: BLE001  (a torn or foreign checkpoint: the row says what is known)
        return {}


def list_runs(root="runs", sort: str = "created", kind: str | None = None, model: str | None = None,
              descending: bool | None = None) -> list[dict]:
    """The rows of every run under `root` (see run_row), filtered by kind and model, sorted by a column
    of RUN_SORT_KEYS (metric: best first; created: newest first; names: A to Z)."""
    if sort not in RUN_SORT_KEYS:
        raise TransferlabError(f"--sort must be one of {', '.join(RUN_SORT_KEYS)}")
    rows = [run_row(f, root) for f in run_folders(root)]
    if kind:
        rows = [r for r in rows if r["kind"] == kind]
    if model:
        rows = [r for r in rows if r["model"] == model]
    key = "best" if sort == "metric" else sort
    if descending is None:
        descending = sort in ("metric", "created", "epochs", "wall_s")
    present = [r for r in rows if r[key] is not None]
    present.sort(key=lambda r: r[key], reverse=descending)
    return present + [r for r in rows if r[key] is None]  # rows without the value last, in folder order


def compare_runs(runs) -> dict:
    """Several runs side by side: {"runs": [names], "metrics": {name: [value per run]}, "config":
    {option: [value per run]} for the options that differ, "best": the index of the best run by its metric}."""
    folders = [Path(r) for r in runs]
    if len(folders) < 2:
        raise TransferlabError("compare needs at least two run folders")
    metas = []
    for f in folders:
        meta = read_meta(f)  # a folder that is no finished run gets its one-line error here
        metas.append(meta)
    names = _distinct_names(folders)
    metrics = {}
    for key in dict.fromkeys(k for m in metas for k in (m.get("metrics") or {})):
        metrics[key] = [(m.get("metrics") or {}).get(key) for m in metas]
    shown = {"kind": [m["kind"] for m in metas], "model": [m.get("architecture") for m in metas],
             "strategy": [m.get("strategy") for m in metas], "data": [_data(m) for m in metas]}
    configs = [m.get("config") or {} for m in metas]
    for key in dict.fromkeys(k for c in configs for k in c):
        values = [c.get(key) for c in configs]
        if key not in shown and any(_canonical(v) != _canonical(values[0]) for v in values[1:]):
            shown[key] = values
    config = {k: v for k, v in shown.items() if any(_canonical(x) != _canonical(v[0]) for x in v[1:])}
    scores = [(m.get("metrics") or {}).get(best_metric(m.get("metrics") or {}) or "", -math.inf) for m in metas]
    best = max(range(len(scores)), key=lambda i: scores[i]) if any(s != -math.inf for s in scores) else None
    return {"runs": names, "paths": [str(f) for f in folders], "metrics": metrics, "config": config, "best": best}


def _distinct_names(folders: list[Path]) -> list[str]:
    names = [f.name for f in folders]
    if len(set(names)) == len(names):
        return names
    return [str(f) for f in folders]


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def format_runs(rows: list[dict]) -> str:
    """The table for a terminal: one line per folder."""
    if not rows:
        return "no runs"
    header = ["name", "kind", "model", "strategy", "data", "best", "epoch", "epochs", "time", "created", "status"]
    lines = [[r["name"], r["kind"] or "-", r["model"] or "-", r["strategy"] or "-", r["data"] or "-",
              f"{r['metric']} {r['best']:.4f}" if r["metric"] else "-",
              "-" if r["best_epoch"] is None else str(r["best_epoch"]),
              "-" if r["epochs"] is None else str(r["epochs"]),
              "-" if r["wall_s"] is None else _duration(r["wall_s"]),
              (r["created"] or "-")[:16].replace("T", " "), r["status"]] for r in rows]
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header] + lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_comparison(result: dict) -> str:
    """Metrics side by side, then the config options that differ."""
    names = result["runs"]

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, (dict, list)):
            return json.dumps(v)[:40]
        return "-" if v is None else str(v)

    def block(title: str, rows: dict) -> list[str]:
        table = [[title] + names] + [[k] + [cell(v) for v in values] for k, values in rows.items()]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]

    lines = block("metric", result["metrics"])
    lines += [""] + (block("config", result["config"]) if result["config"] else ["config: no differences"])
    if result["best"] is not None:
        lines += ["", f"best: {names[result['best']]}"]
    return "\n".join(lines)
