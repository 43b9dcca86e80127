"""Freeze-depth search: which freeze point of a partial fine-tune works best on this dataset?

Successive halving (Jamieson & Talwalkar 2016): every candidate freeze point trains for a short
run, the best 1/eta go on to runs eta times longer, until one is left; it trains for the full
`epochs` into the run folder. Runs of the same freeze point share their cached frozen-prefix
features, and all runs share the decoded images, so the deep freeze points cost little more than
their heads. The trial runs are deleted; their table (sweep.csv, sweep.json) and plot (sweep.png)
are kept in the winner's run folder, and recorded in its model.json under "advice".

Under a budget each run gets the share of what is left that its epochs are of the epochs still to
run (rungs cost about the same, so early rungs do not starve the final run), and is paced by it.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..core.errors import TransferlabError
from ..core.io import atomic_write_json
from ..core.options import SWEEP_ETA, SWEEP_POINTS
from ..data.folders import scan_dataset
from ..data.tables import dataset_name
from ..models import create_model
from ..runs.folder import default_run_dir
from ..runs.metrics import write_metrics
from ..runs.report import plot_sweep
from ..training.batches import TrainingCache
from ..training.budget import Budget
from ..training.config import TrainConfig
from ..tasks.base import Run
from ..tasks.classification import ClassificationTask
from ..tasks.multilabel import MultiLabelTask
from ..training.tracking import SearchTrackers
from ..training.trainer import Trainer


@dataclasses.dataclass
class Trial:
    """One short training run of the search."""

    rung: int
    epochs: int
    freeze: int
    block: str  # first trainable block
    trainable_params: int
    val_acc: float | None  # None for multi-label data, whose trials are compared by val_map
    val_loss: float
    seconds: float
    val_map: float | None = None  # multi-label data: the validation mAP

    @property
    def score(self) -> float:
        """What the trials are ranked by: validation accuracy, or mAP for multi-label data."""
        return self.val_acc if self.val_map is None else self.val_map

    def row(self) -> dict:
        """The trial as sweep.json/sweep.csv hold it (val_map only for multi-label data)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "val_map" or v is not None}


def candidate_points(blocks: list[str], points=None) -> list[int]:
    """Freeze points to try: the user's (counts or block names) or evenly spaced from 0 to all-but-head."""
    all_but_head = len(blocks) - 1
    if not points:
        return sorted({int(round(x)) for x in np.linspace(0, all_but_head, SWEEP_POINTS)})
    resolved = set()
    for p in points:
        if isinstance(p, str) and not p.lstrip("-").isdigit():
            if p not in blocks:
                raise TransferlabError(f"unknown block {p!r} in --points; blocks are: {', '.join(blocks)}")
            resolved.add(blocks.index(p))
            continue
        n = int(p)
        if not 0 <= n <= all_but_head:
            raise TransferlabError(f"freeze point {n} out of range 0..{all_but_head} (blocks: {', '.join(blocks)})")
        resolved.add(n)
    return sorted(resolved)


def rung_schedule(candidates: int, epochs: int, eta: int) -> list[tuple[int, int]]:
    """(runs, epochs) per rung: ceil(n/eta) survive each rung, epochs grow eta-fold up to `epochs`."""
    if eta < 2:
        raise TransferlabError("--eta must be at least 2")
    sizes = [candidates]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / eta))
    last = len(sizes) - 1
    return [(n, max(1, round(epochs / eta ** (last - r)))) for r, n in enumerate(sizes)]


def freeze_search(data, cfg: TrainConfig, out=None, progress: bool = True, points=None,
                  eta: int = SWEEP_ETA, budget: Budget | None = None) -> Run:
    """Find the best freeze point of a partial fine-tune by successive halving; train it into `out`.
    `budget` (or cfg.budget) bounds the wall clock of the whole search. With cfg.log the search is a
    parent run in each tracker, its trials and final run nested under it."""
    with SearchTrackers(cfg.log) as search:
        return _search(data, cfg, out, progress, points, eta, budget, search)


def _search(data, cfg: TrainConfig, out, progress: bool, points, eta: int, budget: Budget | None,
            search: SearchTrackers) -> Run:
    cfg = dataclasses.replace(cfg, strategy="partial")
    budget = budget or (Budget(cfg.budget) if cfg.budget else None)
    cfg.validate()
    out = Path(out) if out else default_run_dir(data, cfg.model, cfg.strategy)
    scan = scan_dataset(data, cfg.val_split, cfg.seed, multilabel=True)
    multilabel = scan.multilabel  # trials compared by validation mAP instead of accuracy
    model = create_model(cfg.model, num_classes=len(scan.classes), weights="none")
    blocks = model.group_names
    alive = candidate_points(blocks, points)
    schedule = rung_schedule(len(alive), cfg.epochs, eta)
    shared = TrainingCache()
    trials: list[Trial] = []
    epochs_to_run = sum(n * e for n, e in schedule)
    search.start(out, {"kind": "classifier", "strategy": "partial/sweep", "model": cfg.model, "data": dataset_name(data)},
                 {"points": alive, "eta": eta, "epochs": cfg.epochs, "model": cfg.model, "rungs": len(schedule)})

    def trial_budget(epochs: int) -> Budget | None:
        nonlocal epochs_to_run
        share = None if budget is None else Budget(budget.left() * epochs / epochs_to_run)
        epochs_to_run -= epochs
        return share

    def trial_config(n: int, epochs: int) -> TrainConfig:
        # the leakage check looks at the data, not the freeze point: the final run makes it, once
        return dataclasses.replace(cfg, freeze=n, epochs=epochs, audit=False)

    def params(n: int) -> int:
        model.freeze(n)
        return model.trainable_parameters()

    def task():
        return MultiLabelTask(shared, scan=scan) if multilabel else ClassificationTask(shared)

    def trial(rung: int, epochs: int, n: int, run: Run, seconds: float) -> Trial:
        m = run.metrics
        return Trial(rung, epochs, n, blocks[n], params(n), m.get("val_acc"), m["val_loss"], seconds, m.get("val_map"))

    with tempfile.TemporaryDirectory(prefix="transferlab-sweep-") as tmp:
        for rung, (_, epochs) in enumerate(schedule[:-1]):
            for n in alive:
                _log(progress, f"sweep rung {rung + 1}/{len(schedule)}: freeze {n} ({blocks[n]} up trains), "
                               f"{epochs} epoch(s)")
                t0 = time.perf_counter()
                run = Trainer(task(), data, trial_config(n, epochs), Path(tmp) / f"r{rung}-f{n}",
                              progress=False, budget=trial_budget(epochs),
                              trackers=search.trackers(f"rung{rung + 1}-freeze{n}")).fit()
                trials.append(trial(rung, epochs, n, run, time.perf_counter() - t0))
            keep = schedule[rung + 1][0]
            ranked = sorted((t for t in trials if t.rung == rung), key=lambda t: (-t.score, t.val_loss, -t.freeze))  # ties: the cheaper, deeper freeze
            alive = sorted(t.freeze for t in ranked[:keep])
            shared.keep_only(alive)  # free the cached features of eliminated freeze points
    best, epochs = alive[0], schedule[-1][1]
    final_rung = len(schedule) - 1
    _log(progress, f"sweep: best freeze point {best} ({blocks[best]} up trains); training it for {epochs} epochs")
    summary = {"points": candidate_points(blocks, points), "eta": eta, "best_freeze": best,
               "best_block": blocks[best], "trials": [t.row() for t in trials]}
    advice = dict(cfg.advice or {})
    advice["freeze_search"] = summary
    advice.setdefault("explanation", "")
    advice["explanation"] = (advice["explanation"] + " " if advice["explanation"] else "") + (
        f"Freeze search (successive halving over freeze points {summary['points']}, eta {eta}): "
        f"freezing {best} blocks (training from {blocks[best]}) had the best validation "
        f"{'mAP' if multilabel else 'accuracy'}.")
    t0 = time.perf_counter()
    final_cfg = dataclasses.replace(cfg, freeze=best, epochs=epochs, advice=advice)
    run = Trainer(task(), data, final_cfg, out, progress=progress, budget=budget,
                  trackers=search.trackers(out.name, final=True)).fit()
    trials.append(trial(final_rung, epochs, best, run, time.perf_counter() - t0))
    write_sweep(out, trials, blocks)
    metric = "val_map" if multilabel else "val_acc"
    search.end([t.row() for t in trials], {f"best_{metric}": run.metrics[metric], "best_freeze": best},
               [out / "sweep.csv", out / "sweep.json", out / "sweep.png"])
    _log(progress, format_trials(trials))
    return run


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr)


def format_trials(trials: list[Trial]) -> str:
    """The search's trials as a terminal table (val mAP instead of val acc for multi-label data)."""
    metric = "val mAP" if any(t.val_map is not None for t in trials) else "val acc"
    lines = [f"{'rung':>4} {'epochs':>6} {'freeze':>6} {'trains from':<14} {'trainable':>10} {metric:>8} "
             f"{'val loss':>8} {'time':>7}"]
    lines += [f"{t.rung + 1:>4} {t.epochs:>6} {t.freeze:>6} {t.block:<14} {t.trainable_params:>10,} "
              f"{t.score:>8.3f} {t.val_loss:>8.4f} {t.seconds:>6.1f}s" for t in trials]
    return "\n".join(lines)


def write_sweep(out: Path, trials: list[Trial], blocks: list[str]) -> None:
    """sweep.json, sweep.csv and sweep.png in the winner's run folder, each written atomically."""
    rows = [t.row() for t in trials]
    atomic_write_json(out / "sweep.json", rows)
    write_metrics(out / "sweep.csv", rows)
    plot_sweep(trials, blocks, out / "sweep.png")
