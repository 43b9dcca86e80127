"""train --log tensorboard|mlflow: what the trackers logged, read back with their own readers
(TensorBoard's EventAccumulator, mlflow.search_runs on the local file store), equals metrics.csv; auto's
trial phase and a sweep's trials are nested runs; a tracker that fails mid-run costs one warning line."""
from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("tensorboard", reason="the track extra is not installed: pip install 'transferlab[track]'")
mlflow = pytest.importorskip("mlflow", reason="the track extra is not installed: pip install 'transferlab[track]'")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from transferlab.api import train  # noqa: E402

FAST = dict(image_size=48, batch_size=16, augment="none", workers=0)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local MLflow store for the test, as a user's MLFLOW_TRACKING_URI would name it."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def metrics_csv(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def numeric_columns(rows: list[dict]) -> list[str]:
    return [k for k in rows[0] if k not in ("epoch", "phase") and any(r[k] for r in rows)]


def scalars(logdir) -> EventAccumulator:
    events = EventAccumulator(str(logdir))
    events.Reload()
    return events


def test_both_trackers_log_what_metrics_csv_holds(digits_folder, tmp_path, store):
    out = tmp_path / "runs" / "two-stage"
    # a fine-tuning trial (as --strategy auto plans it): the phase is also a nested run with its verdict
    run = train(digits_folder, model="efficientnet_lite0", strategy="two-stage", epochs=3, finetune_trial=1,
                out=out, progress=False, log="tensorboard,mlflow", **FAST)
    rows = metrics_csv(out)
    columns = numeric_columns(rows)
    assert {"val_acc", "val_loss", "train_loss", "lr"} <= set(columns)

    # TensorBoard: every metrics.csv column, every epoch, same numbers; the best metric and the trial
    events = scalars(out / "tensorboard")
    for column in columns:
        logged = {e.step: e.value for e in events.Scalars(column)}
        expected = {int(r["epoch"]): float(r[column]) for r in rows if r[column]}
        assert logged.keys() == expected.keys(), column
        assert all(logged[k] == pytest.approx(v, rel=1e-6) for k, v in expected.items()), column
    best = events.Scalars("best/val_acc")
    assert best[0].value == pytest.approx(run.metrics["val_acc"]) and best[0].step == run.metrics["best_epoch"]
    trial = scalars(out / "tensorboard" / "trial-finetune")
    assert [e.step for e in trial.Scalars("val_acc")] == [int(r["epoch"]) for r in rows if r["phase"] == "finetune"]

    # MLflow: the run with tags, the config as params, per-epoch metrics, the best metric, artifacts
    found = mlflow.search_runs(experiment_names=["transferlab"], output_format="list")
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 1
    parent, child = parents[0], children[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "two-stage"
    tags = parent.data.tags
    assert (tags["kind"], tags["strategy"], tags["model"]) == ("classifier", "two-stage", "efficientnet_lite0")
    assert tags["run_folder"] == str(out.resolve())
    params = parent.data.params
    assert params["epochs"] == "3" and params["finetune_trial"] == "1" and params["image_size"] == "48"
    assert parent.data.metrics["best_val_acc"] == pytest.approx(run.metrics["val_acc"])
    assert parent.data.metrics["best_epoch"] == run.metrics["best_epoch"]
    client = mlflow.tracking.MlflowClient()
    for column in columns:
        history = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, column)}
        assert history == pytest.approx({int(r["epoch"]): float(r[column]) for r in rows if r[column]}), column
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"model.json", "report.html", "model.safetensors", "metrics.csv", "decisions.json"} <= artifacts
    # the trial phase: nested, with its epochs and the verdict recorded in model.json's decisions
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
    decision = next(d for d in json.loads((out / "model.json").read_text())["decisions"] if d["event"] == "trial")
    assert child.data.tags["verdict"] == ("kept" if decision["kept"] else "abandoned")
    assert child.data.tags["decision"] == decision["text"]
    trial_epochs = [int(r["epoch"]) for r in rows if r["phase"] == "finetune"]
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_acc")) == trial_epochs


def test_a_tracker_that_fails_mid_run_leaves_the_run_complete(digits_folder, tmp_path, store, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient
    from torch.utils.tensorboard import SummaryWriter

    calls = {"tb": 0, "mlflow": 0}
    real_scalar, real_batch = SummaryWriter.add_scalar, MlflowClient.log_batch

    def failing_scalar(self, *args, **kwargs):  # the second epoch's first scalar fails
        calls["tb"] += 1
        if kwargs.get("global_step", args[2] if len(args) > 2 else None) == 2:
            raise OSError("disk full")
        return real_scalar(self, *args, **kwargs)

    def failing_batch(self, run_id, metrics=(), *args, **kwargs):
        if metrics and metrics[0].step == 2:
            calls["mlflow"] += 1
            raise ConnectionError("tracking server went away")
        return real_batch(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", failing_scalar)
    monkeypatch.setattr(MlflowClient, "log_batch", failing_batch)
    out = tmp_path / "run"
    run = train(digits_folder, model="efficientnet_lite0", strategy="feature-extract", epochs=3, out=out,
                progress=False, log="tensorboard,mlflow", **FAST)
    assert json.loads((out / "model.json").read_text())["metrics"]["epochs_run"] == 3
    assert [int(r["epoch"]) for r in metrics_csv(out)] == [1, 2, 3]
    assert run.predictor is not None and (out / "report.html").is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "logging failed" in line]
    assert len(warnings) == 2, warnings  # one line per tracker, once
    assert any(w.startswith("transferlab: warning: tensorboard logging failed") and "disk full" in w for w in warnings)
    assert any(w.startswith("transferlab: warning: mlflow logging failed") and "went away" in w for w in warnings)
    assert calls["mlflow"] == 1  # dropped after its first failure
    # what was logged before the failure stays readable; the MLflow run is closed as failed
    assert [e.step for e in scalars(out / "tensorboard").Scalars("val_acc")] == [1]
    (logged,) = mlflow.search_runs(experiment_names=["transferlab"], output_format="list")
    assert logged.info.status == "FAILED"


def test_log_names_a_known_tracker(digits_folder, tmp_path):
    from transferlab.core.errors import TransferlabError

    with pytest.raises(TransferlabError, match="--log must be tensorboard or mlflow"):
        train(digits_folder, strategy="feature-extract", epochs=1, out=tmp_path / "r", progress=False,
              log="wandb", **FAST)
    assert not (tmp_path / "r").exists()


def test_a_sweep_logs_its_trials_as_nested_runs(digits_folder, tmp_path, store):
    from transferlab.advice.sweep import freeze_search
    from transferlab.training.config import TrainConfig

    cfg = TrainConfig(model="efficientnet_lite0", strategy="partial", freeze="auto", epochs=2, image_size=32,
                      batch_size=32, augment="none", workers=0, log="tensorboard,mlflow")
    out = tmp_path / "sweep"
    run = freeze_search(digits_folder, cfg, out=out, progress=False, points=[8, 10])
    trials = json.loads((out / "sweep.json").read_text())
    found = mlflow.search_runs(experiment_names=["transferlab"], output_format="list")
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    nested = {r.info.run_name: r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert parent.info.run_name == "sweep sweep" and parent.info.status == "FINISHED"
    assert set(nested) == {"rung1-freeze8", "rung1-freeze10", "sweep"}
    assert parent.data.metrics["best_val_acc"] == pytest.approx(run.metrics["val_acc"])
    assert parent.data.metrics["best_freeze"] == trials[-1]["freeze"]
    for t in trials[:-1]:
        trial = nested[f"rung1-freeze{t['freeze']}"]
        assert trial.data.metrics["best_val_acc"] == pytest.approx(t["val_acc"])
        assert trial.data.params["freeze"] == str(t["freeze"])
    client = mlflow.tracking.MlflowClient()
    assert "sweep.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "model.json" in {a.path for a in client.list_artifacts(nested["sweep"].info.run_id)}
    # TensorBoard: the final run in RUN/tensorboard, each trial under RUN/tensorboard/sweep/
    assert len(scalars(out / "tensorboard").Scalars("val_acc")) == trials[-1]["epochs"]
    for t in trials[:-1]:
        steps = scalars(out / "tensorboard" / "sweep" / f"rung1-freeze{t['freeze']}").Scalars("val_acc")
        assert steps[-1].value == pytest.approx(t["val_acc"])
    rung = {e.step: e.value for e in scalars(out / "tensorboard" / "sweep").Scalars("rung1/val_acc")}
    assert rung == pytest.approx({t["freeze"]: t["val_acc"] for t in trials[:-1]})


def test_a_detector_run_logs_its_pretrained_baseline_as_epoch_0(tmp_path, store):
    from detect.synthetic import write_csv_dataset  # tests/detect: the small real-pixel face set

    faces = write_csv_dataset(tmp_path / "faces", 40, seed=0)
    out = tmp_path / "faces-run"
    run = train(faces, model="blazeface_front", out=out, epochs=2, batch_size=32, patience=0, progress=False,
                log="tensorboard,mlflow")
    expected = {int(r["epoch"]): float(r["val_ap50"]) for r in metrics_csv(out)}
    assert sorted(expected) == [0, 1, 2]
    logged = {e.step: e.value for e in scalars(out / "tensorboard").Scalars("val_ap50")}
    assert logged == pytest.approx(expected)
    (found,) = mlflow.search_runs(experiment_names=["transferlab"], output_format="list")
    assert (found.data.tags["kind"], found.data.tags["strategy"]) == ("detector", "finetune")
    history = mlflow.tracking.MlflowClient().get_metric_history(found.info.run_id, "val_ap50")
    assert {m.step: m.value for m in history} == pytest.approx(expected)
    assert found.data.metrics["best_val_ap50"] == pytest.approx(run.metrics["val_ap50"])
