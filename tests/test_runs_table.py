"""`transferlab runs`: every folder under DIR as a row (a classifier run, a detector run, an interrupted
run, a folder that is no run), as a table, JSON or CSV, sorted and filtered; `runs compare`."""
from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from transferlab.api import compare_runs, runs, train
from transferlab.cli.main import main

FAST = dict(image_size=48, batch_size=16, augment="none", workers=0)


def interrupted_run(data, out, **options) -> None:
    """A classifier run stopped (as by Ctrl-C) after its first epoch: checkpoints and metrics.csv, no model.json."""
    def interrupt(trainer, row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, model="efficientnet_lite0", epochs=3, out=out, progress=False, callbacks=[interrupt],
              **{**FAST, **options})


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory, digits_folder, trained_run):
    """runs/ with a finished classifier run, a detector run, a run interrupted after its first epoch and
    a folder of notes that is no run."""
    from detect.synthetic import write_csv_dataset  # tests/detect: the small real-pixel face set

    root = tmp_path_factory.mktemp("runs-table") / "runs"
    shutil.copytree(trained_run, root / "digits-lite0")
    faces = write_csv_dataset(tmp_path_factory.mktemp("faces"), 40, seed=0)
    train(faces, model="blazeface_front", out=root / "faces-blazeface", epochs=1, batch_size=32, patience=0,
          progress=False)
    interrupted_run(digits_folder, root / "stopped", strategy="two-stage")
    (root / "notes").mkdir()
    (root / "notes" / "ideas.txt").write_text("try resnet18\n")
    return root


def test_every_folder_is_one_row(runs_folder, trained_run):
    rows = {r["name"]: r for r in runs(runs_folder)}
    assert set(rows) == {"digits-lite0", "faces-blazeface", "stopped", "notes"}
    clf, det, stopped, notes = (rows[n] for n in ("digits-lite0", "faces-blazeface", "stopped", "notes"))
    meta = json.loads((trained_run / "model.json").read_text())
    assert (clf["status"], clf["kind"], clf["model"], clf["strategy"], clf["data"]) == (
        "complete", "classifier", "efficientnet_lite0", "feature-extract", "data")
    assert (clf["metric"], clf["best"], clf["best_epoch"]) == ("val_acc", meta["metrics"]["val_acc"],
                                                               meta["metrics"]["best_epoch"])
    assert clf["epochs"] == 3 and clf["wall_s"] > 0 and clf["created"] == meta["created"]
    assert (det["status"], det["kind"], det["model"], det["metric"], det["epochs"]) == (
        "complete", "detector", "blazeface_front", "val_ap50", 1)
    assert (stopped["status"], stopped["kind"], stopped["model"], stopped["strategy"], stopped["epochs"]) == (
        "interrupted", "classifier", "efficientnet_lite0", "two-stage", 1)
    assert stopped["metric"] == "val_acc" and stopped["best_epoch"] == 1
    assert notes["status"] == "not a run" and notes["kind"] is None


def test_sort_and_filter(runs_folder):
    by_metric = runs(runs_folder, sort="metric")
    values = [r["best"] for r in by_metric if r["best"] is not None]
    assert values == sorted(values, reverse=True) and by_metric[-1]["name"] == "notes"
    assert [r["name"] for r in runs(runs_folder, sort="name")] == ["digits-lite0", "faces-blazeface", "notes", "stopped"]
    assert [r["name"] for r in runs(runs_folder, kind="detector")] == ["faces-blazeface"]
    assert {r["name"] for r in runs(runs_folder, model="efficientnet_lite0")} == {"digits-lite0", "stopped"}


def test_the_cli_prints_four_lines_json_and_csv(runs_folder, capsys, tmp_path):
    assert main(["runs", str(runs_folder)]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 5 and lines[0].split()[:3] == ["name", "kind", "model"]  # the header and four folders
    assert "Traceback" not in out + err
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert by_name["stopped"].endswith("interrupted") and by_name["notes"].endswith("not a run")
    assert "val_ap50" in by_name["faces-blazeface"] and "val_acc" in by_name["digits-lite0"]

    assert main(["runs", str(runs_folder), "--json", "--sort", "metric"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == [r["name"] for r in runs(runs_folder, sort="metric")]
    assert main(["runs", str(runs_folder), "--csv", "-", "--kind", "classifier"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["name"] for r in table} == {"digits-lite0", "stopped"}
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_compare_shows_metrics_side_by_side_and_config_differences(runs_folder, digits_folder, tmp_path, capsys):
    other = train(digits_folder, model="efficientnet_lite0", strategy="feature-extract", epochs=2, out=tmp_path / "b",
                  progress=False, **{**FAST, "batch_size": 32})
    a = runs_folder / "digits-lite0"
    result = compare_runs(a, other.path)
    assert result["runs"] == ["digits-lite0", "b"]
    assert result["metrics"]["val_acc"] == [json.loads((a / "model.json").read_text())["metrics"]["val_acc"],
                                            other.metrics["val_acc"]]
    assert result["config"]["epochs"] == [3, 2] and result["config"]["batch_size"] == [16, 32]
    assert "model" not in result["config"] and "seed" not in result["config"]  # the same in both
    assert main(["runs", "compare", str(a), str(other.path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["metric", "digits-lite0", "b"]
    assert any(line.split()[:3] == ["batch_size", "16", "32"] for line in out.splitlines())
    assert main(["runs", "compare", str(a), str(runs_folder / "stopped")]) == 2
    assert "no model.json" in capsys.readouterr().err
