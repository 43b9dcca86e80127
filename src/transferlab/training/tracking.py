"""Experiment trackers (train --log, sweep --log): a run's epochs, its config as parameters, tags (kind,
strategy, model, data), artifacts (model.json, report.html, the weights) and its best metric, logged to
TensorBoard (torch.utils.tensorboard's SummaryWriter, into RUN/tensorboard) or MLflow (the user's
MLFLOW_TRACKING_URI, else a local store in ./mlruns), as the Trainer goes.

The seam is the Tracker protocol: on_start(trainer), on_epoch(trainer, row) for every row of metrics.csv
(the pretrained baseline, epoch 0, included), on_end(trainer, run) where run is None when training failed
or was interrupted. The Trainer calls them on rank 0 only, through Trackers, which guards each call: a
tracker that raises is reported in one line, once, and dropped; the run goes on and is written as
without it. An adaptive trial phase (`--strategy auto`'s fine-tuning) is also logged as a nested run with
its verdict; a sweep (advice/sweep.py) is a parent run with its rungs' trials and its final run nested.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Protocol

from ..core.errors import TransferlabError
from ..core.options import TRACKERS
from ..data.tables import dataset_name

EXTRA = "pip install 'transferlab[track]'"
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # the module each tracker imports
EXPERIMENT = "transferlab"  # MLflow experiment, unless MLFLOW_EXPERIMENT_NAME names another
ARTIFACTS = ("model.json", "metrics.csv", "report.html", "report.md", "model.safetensors")
MAX_PARAM = 500  # characters of a parameter value (MLflow's limit is 6000; nested dicts go to artifacts)


class Tracker(Protocol):
    """What the Trainer calls (rank 0 only); any of them may raise: Trackers reports and drops it."""

    name: str

    def on_start(self, trainer) -> None:
        """The run begins (or resumes): open the run, log config and tags."""

    def on_epoch(self, trainer, row: dict) -> None:
        """A row of metrics.csv was written (epoch 0 is the pretrained baseline where the task has one)."""

    def on_end(self, trainer, run) -> None:
        """The run folder is written (run: the Run), or training stopped on an error (run None)."""


def parse_trackers(spec: str | None) -> list[str]:
    """'tensorboard', 'mlflow' or both comma-separated (None: none); an unknown name is a user error."""
    names = [s.strip().lower() for s in (spec or "").split(",") if s.strip()]
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise TransferlabError(f"--log must be {' or '.join(TRACKERS)} (or both, comma-separated), got {bad[0]!r}")
    return list(dict.fromkeys(names))


def check_installed(names: list[str]) -> None:
    """Before training: a tracker whose library is missing is a one-line error, not a run without logs."""
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise TransferlabError(f"--log {name} needs the {PACKAGES[name]} package: {EXTRA}")


def create_trackers(spec: str | None) -> list:
    """The trackers --log names, each for a run of its own."""
    names = parse_trackers(spec)
    check_installed(names)
    return [TensorBoardTracker() if n == "tensorboard" else MLflowTracker() for n in names]


def _say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


class Trackers:
    """The trackers of one run, each call guarded: the first error of a tracker is one warning line and
    that tracker is dropped; training never stops for logging."""

    def __init__(self, trackers=(), say=_say):
        self.active = list(trackers)
        self.failed: list[str] = []
        self.say = say

    def _call(self, hook: str, *args) -> None:
        for tracker in list(self.active):
            try:
                getattr(tracker, hook)(*args)
            except Exception as e:  # noqa: BLE001  (whatever a tracker raises, the run goes on)
                self.active.remove(tracker)
                self.failed.append(tracker.name)
                detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                self.say(f"transferlab: warning: {tracker.name} logging failed in {hook} ({type(e).__name__}"
                         f"{': ' + detail if detail else ''}); the run goes on without it")
                if hook != "on_end":
                    try:  # close what it opened, quietly
                        tracker.on_end(None, None)
                    except Exception:  # noqa: BLE001
                        pass

    def start(self, trainer) -> None:
        """Every tracker's on_start."""
        self._call("on_start", trainer)

    def epoch(self, trainer, row: dict) -> None:
        """Every tracker's on_epoch."""
        self._call("on_epoch", trainer, row)

    def end(self, trainer, run) -> None:
        """Every tracker's on_end, then none is active."""
        self._call("on_end", trainer, run)
        self.active = []


# --- what a run is, for any tracker --------------------------------------------------------------
def run_tags(trainer) -> dict[str, str]:
    """kind, strategy (auto runs: auto/PLAN), model, data, and the run folder."""
    cfg = trainer.cfg
    advice = cfg.advice or {}
    strategy = f"auto/{cfg.strategy}" if "plan" in advice else cfg.strategy
    try:
        data = dataset_name(trainer.task.data_root)
    except Exception:  # noqa: BLE001  (a data frame, or a task that cannot say)
        data = ""
    return {"kind": trainer.task.name, "strategy": strategy, "model": cfg.model, "data": data,
            "run_folder": str(Path(trainer.out).resolve())}


def run_params(cfg) -> dict[str, str]:
    """The config as flat parameters; nested values (advice, box_augment) as short JSON."""
    from dataclasses import asdict

    params = {}
    for key, value in asdict(cfg).items():
        if key == "advice":
            continue  # logged whole as an artifact (advice.json)
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
        params[key] = text[:MAX_PARAM]
    return params


def numbers(row: dict) -> dict[str, float]:
    """The numeric cells of a metrics row, the epoch aside."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def trial_phase(trainer, row: dict):
    """The adaptive trial phase a row belongs to (auto's fine-tuning on probation), or None."""
    return next((p for p in trainer.phases if p.name == row.get("phase") and p.trial), None)


def verdict_of(decision: dict) -> str:
    """A trial decision's verdict: kept, extended or abandoned (runs before extensions: kept or abandoned)."""
    return decision.get("verdict") or ("kept" if decision.get("kept") else "abandoned")


def best_of(trainer, run) -> tuple[str, float, int | None] | None:
    """(metric, value, epoch) the run kept, from its metrics."""
    metric = trainer.task.metric
    metrics = getattr(run, "metrics", None) or {}
    if isinstance(metrics.get(metric), (int, float)):
        return metric, float(metrics[metric]), metrics.get("best_epoch")
    return None


# --- TensorBoard -----------------------------------------------------------------------------------
class TensorBoardTracker(Tracker):
    """Scalars per epoch under their metrics.csv names, config and tags as text and as HParams (with
    the best metric), decisions as text; auto's trial phase as the nested run trial-PHASE. Writes into
    `logdir` (default RUN/tensorboard): `tensorboard --logdir runs` shows every run."""

    name = "tensorboard"

    def __init__(self, logdir=None):
        self.logdir = Path(logdir) if logdir else None
        self.writer = None
        self.children: dict[str, object] = {}
        self.decisions = 0

    def on_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = self.logdir or Path(trainer.out) / "tensorboard"
        logged_before = self.logdir.is_dir() and any(self.logdir.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(str(self.logdir))
        tags = run_tags(trainer)
        self.writer.add_text("tags", "\n".join(f"- {k}: {v}" for k, v in tags.items()))
        self.writer.add_text("config", "```\n" + json.dumps(run_params(trainer.cfg), indent=1) + "\n```")
        self.decisions = len(trainer.decisions) if logged_before else 0
        if trainer.resume and not logged_before:  # resumed with --log for the first time: what came before
            for row in trainer.history:
                self.on_epoch(trainer, row)

    def _child(self, name: str):
        from torch.utils.tensorboard import SummaryWriter

        if name not in self.children:
            self.children[name] = SummaryWriter(str(self.logdir / name))
        return self.children[name]

    def on_epoch(self, trainer, row: dict) -> None:
        epoch = int(row["epoch"])
        values = numbers(row)
        for key, value in values.items():
            self.writer.add_scalar(key, value, epoch)
        phase = trial_phase(trainer, row)
        if phase is not None:
            child = self._child(f"trial-{phase.name}")
            for key, value in values.items():
                child.add_scalar(key, value, epoch)
        for d in trainer.decisions[self.decisions:]:
            self.writer.add_text("decisions", f"{d['event']}: {d['text']}", int(d.get("epoch") or epoch))
            if d["event"] == "trial" and d.get("phase"):
                self._child(f"trial-{d['phase']}").add_text("verdict", f"{verdict_of(d)}: {d['text']}",
                                                            int(d.get("epoch") or epoch))
        self.decisions = len(trainer.decisions)
        self.writer.flush()

    def on_end(self, trainer, run) -> None:
        if self.writer is None:
            return
        best = best_of(trainer, run) if run is not None else None
        if best is not None:
            from torch.utils.tensorboard.summary import hparams

            metric, value, epoch = best
            hp = {k: (v if isinstance(v, (int, float, bool)) else str(v))
                  for k, v in {**run_tags(trainer), **run_params(trainer.cfg)}.items()}
            experiment, start, end = hparams(hp, {f"best/{metric}": value})
            for summary in (experiment, start, end):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_scalar(f"best/{metric}", value, epoch or 0)
            self.writer.add_text("run", f"kept epoch {epoch}: {metric} {value:.4f}; run folder {Path(trainer.out).resolve()}")
        for child in self.children.values():
            child.close()
        self.writer.close()
        self.writer = None


# --- MLflow ----------------------------------------------------------------------------------------
def tracking_uri() -> str:
    """The user's MLFLOW_TRACKING_URI, else a local file store in ./mlruns. MLflow 3 keeps the file store
    in maintenance and asks for MLFLOW_ALLOW_FILE_STORE to use it; it needs no database (mlflow-skinny)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return Path("mlruns").resolve().as_uri()


def mlflow_client(uri: str | None = None):
    """An MlflowClient on `uri` (default tracking_uri()) and the id of the experiment runs go to."""
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    return client, experiment.experiment_id if experiment else client.create_experiment(name)


def log_params(client, run_id: str, params: dict) -> None:
    """Parameters in batches (MLflow takes at most 100 a call)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(client, run_id: str, values: dict, step: int) -> None:
    """Metrics at one step, in one call."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])


class MLflowTracker(Tracker):
    """One MLflow run per training run: params (the config), tags, per-epoch metrics (step = epoch),
    best_METRIC and best_epoch, artifacts; auto's trial phase as a nested run with its verdict.
    parent_run_id nests the run (a sweep's trials); artifacts=False for runs whose folder is temporary."""

    name = "mlflow"

    def __init__(self, uri: str | None = None, parent_run_id: str | None = None, run_name: str | None = None,
                 artifacts: bool = True):
        self.uri, self.parent_run_id, self.run_name, self.artifacts = uri, parent_run_id, run_name, artifacts
        self.client = self.run_id = None
        self.children: dict[str, str] = {}
        self.decisions = 0

    def on_start(self, trainer) -> None:
        self.client, experiment = mlflow_client(self.uri)
        tags = run_tags(trainer)
        if not self.artifacts:
            tags.pop("run_folder")
        existing = self._earlier_run(experiment, tags["run_folder"]) if trainer.resume and self.artifacts else None
        if existing is not None:  # resuming a run logged before: carry on in it
            self.run_id = existing
            self.client.update_run(self.run_id, status="RUNNING")
            self.decisions = len(trainer.decisions)
            return
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        self.run_id = self.client.create_run(experiment, tags=tags,
                                             run_name=self.run_name or Path(trainer.out).name).info.run_id
        log_params(self.client, self.run_id, run_params(trainer.cfg))
        if trainer.cfg.advice:
            self.client.log_dict(self.run_id, trainer.cfg.advice, "advice.json")
        for row in trainer.history:  # a resumed run logged for the first time
            self.on_epoch(trainer, row)

    def _earlier_run(self, experiment: str, folder: str) -> str | None:
        found = self.client.search_runs([experiment], filter_string=f"tags.run_folder = '{folder}'", max_results=1,
                                        order_by=["attributes.start_time DESC"])
        return found[0].info.run_id if found else None

    def on_epoch(self, trainer, row: dict) -> None:
        epoch, values = int(row["epoch"]), numbers(row)
        log_metrics(self.client, self.run_id, values, epoch)
        phase = trial_phase(trainer, row)
        if phase is not None:
            log_metrics(self.client, self._child(trainer, phase), values, epoch)
        for i, d in enumerate(trainer.decisions[self.decisions:], start=self.decisions):
            self.client.set_tag(self.run_id, f"decision.{i + 1}", f"epoch {d.get('epoch')}, {d['event']}: {d['text']}"[:5000])
            if d["event"] == "trial" and d.get("phase"):
                child = self._child(trainer, next(p for p in trainer.phases if p.name == d["phase"]))
                self.client.set_tag(child, "verdict", verdict_of(d))
                self.client.set_tag(child, "decision", d["text"][:5000])
        self.decisions = len(trainer.decisions)

    def _child(self, trainer, phase) -> str:
        """The nested run of an adaptive trial phase."""
        if phase.name not in self.children:
            run = self.client.get_run(self.run_id)
            tags = {**{k: v for k, v in run.data.tags.items() if not k.startswith(("mlflow.", "decision."))},
                    "mlflow.parentRunId": self.run_id, "phase": phase.name}
            child = self.client.create_run(run.info.experiment_id, tags=tags,
                                           run_name=f"{run.info.run_name} trial {phase.name}").info.run_id
            log_params(self.client, child, {"phase": phase.name, "trial_epochs": phase.trial, "epochs": phase.epochs,
                                            "lr": phase.lr, "freeze": phase.freeze})
            self.children[phase.name] = child
        return self.children[phase.name]

    def on_end(self, trainer, run) -> None:
        if self.client is None or self.run_id is None:
            return
        client, run_id = self.client, self.run_id
        self.client = None  # closed, whatever happens below
        best = best_of(trainer, run) if run is not None else None
        if best is not None:
            metric, value, epoch = best
            log_metrics(client, run_id, {f"best_{metric}": value, **({"best_epoch": epoch} if epoch is not None else {})},
                        epoch or 0)
        if run is not None and trainer.decisions:
            client.log_dict(run_id, trainer.decisions, "decisions.json")
        if run is not None and self.artifacts:
            for name in ARTIFACTS:
                if (Path(trainer.out) / name).is_file():
                    client.log_artifact(run_id, str(Path(trainer.out) / name))
        status = "FINISHED" if run is not None else "FAILED"
        for child in self.children.values():
            if client.get_run(child).info.status == "RUNNING":
                client.set_terminated(child, status)
        client.set_terminated(run_id, status)


# --- a search of several runs (sweep) ----------------------------------------------------------------
class SearchTrackers:
    """A sweep's trackers, as a context manager: in MLflow a parent run with each trial and the final run
    nested under it; in TensorBoard each trial under FINAL/tensorboard/sweep/TRIAL (a trial's run folder
    is temporary: its logs wait in a temporary folder until the final run is written) and the search's
    results in FINAL/tensorboard/sweep. Leaving on an error marks the parent run failed."""

    def __init__(self, spec: str | None, say=_say):
        self.names = parse_trackers(spec)
        check_installed(self.names)
        self.say = say
        self.out = self.tmp = self.client = self.parent_id = None

    def __enter__(self) -> "SearchTrackers":
        if "tensorboard" in self.names:
            import tempfile

            self.tmp = Path(tempfile.mkdtemp(prefix="transferlab-sweep-tensorboard-"))
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None and self.client is not None and self.parent_id:
            try:
                self.client.set_terminated(self.parent_id, "FAILED")
            except Exception:  # noqa: BLE001
                pass
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _failed(self, name: str, e: Exception) -> None:
        if name in self.names:
            self.names.remove(name)
            self.say(f"transferlab: warning: {name} logging failed ({type(e).__name__}: {str(e)[:200]}); "
                     "the search goes on without it")

    def start(self, out, tags: dict, params: dict) -> None:
        """The search into run folder `out` begins: open the parent run (MLflow)."""
        self.out = Path(out)
        if "mlflow" not in self.names:
            return
        try:
            self.client, experiment = mlflow_client()
            self.parent_id = self.client.create_run(experiment, tags={**tags, "run_folder": str(self.out.resolve())},
                                                    run_name=f"{self.out.name} sweep").info.run_id
            log_params(self.client, self.parent_id, {k: str(v)[:MAX_PARAM] for k, v in params.items()})
        except Exception as e:  # noqa: BLE001
            self._failed("mlflow", e)

    def trackers(self, name: str, final: bool = False) -> list:
        """Trackers for one run of the search: a trial (`name`) or the final run."""
        found = []
        if "tensorboard" in self.names:
            found.append(TensorBoardTracker(None if final else self.tmp / name))
        if "mlflow" in self.names and self.parent_id:
            found.append(MLflowTracker(parent_run_id=self.parent_id, run_name=None if final else name,
                                       artifacts=final))
        return found

    def end(self, trials: list[dict], best: dict, artifacts=()) -> None:
        """Close the parent run with the search's result and tables; move the trials' TensorBoard logs."""
        if "tensorboard" in self.names:
            try:
                self._tensorboard_end(trials)
            except Exception as e:  # noqa: BLE001
                self._failed("tensorboard", e)
        if "mlflow" in self.names and self.parent_id:
            try:
                log_metrics(self.client, self.parent_id, best, 0)
                for path in artifacts:
                    if Path(path).is_file():
                        self.client.log_artifact(self.parent_id, str(path))
                self.client.set_terminated(self.parent_id, "FINISHED")
            except Exception as e:  # noqa: BLE001
                self._failed("mlflow", e)

    def _tensorboard_end(self, trials: list[dict]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        sweep = self.out / "tensorboard" / "sweep"
        shutil.copytree(self.tmp, sweep, dirs_exist_ok=True)
        writer = SummaryWriter(str(sweep))
        for t in trials:  # per rung, validation accuracy by freeze point
            writer.add_scalar(f"rung{t['rung'] + 1}/val_acc", t["val_acc"], t["freeze"])
        writer.close()
