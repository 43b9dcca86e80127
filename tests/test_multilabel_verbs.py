"""Every verb on a multi-label run or table, on generated shape images (tests/conftest.py: a red disc, a
green square and a blue bar, several per image): predict's table and CSV, evaluate's Run view, the
served API, export and its int8 form measured in mAP, audit's multi-label label issues, advise's
multi-label probe, and sweep's trials compared by mAP."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SHAPE_LABELS, write_label_table, write_shape_images
from transferlab.cli.main import main


@pytest.fixture()
def run_copy(multilabel_run, tmp_path) -> Path:
    """A copy of the multi-label run that a test may write into (evaluation.json, exports)."""
    return Path(shutil.copytree(multilabel_run, tmp_path / multilabel_run.name))


def _val_images(shape_tables) -> list[Path]:
    with open(shape_tables[1], newline="") as f:
        return [shape_tables[1].parent / row["image"] for row in csv.DictReader(f)]


def _json(capsys, argv) -> object:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


# --- predict ----------------------------------------------------------------------------------------------
def test_predict_shows_the_labels_in_the_table_and_the_csv(multilabel_run, shape_tables, tmp_path, capsys):
    records = _json(capsys, ["predict", str(shape_tables[1]), "--model", str(multilabel_run), "--json", "--top", "1"])
    assert all("labels" in r for r in records)
    assert any(len(r["labels"]) > 1 for r in records)  # several labels on one image, whatever --top says
    capsys.readouterr()
    assert main(["predict", str(shape_tables[1]), "--model", str(multilabel_run), "--top", "1",
                 "--csv", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "status", "rank", "label", "index", "prob", "predicted"]
    for r in records:
        mine = [row for row in rows if row["path"] == r["path"]]
        assert {row["label"] for row in mine if row["predicted"] == "1"} == {g["label"] for g in r["labels"]}
        assert mine[0]["label"] == r["top"][0]["label"]  # the top label first, then by score
        assert [float(row["prob"]) for row in mine] == sorted((float(row["prob"]) for row in mine), reverse=True)
    assert main(["predict", str(_val_images(shape_tables)[0]), "--model", str(multilabel_run)]) == 0
    first = records[0]
    table = capsys.readouterr().out
    given = ", ".join(f"{g['label']} {g['score']:.2f}" for g in first["labels"]) or "(none at or above its threshold)"
    assert f"  labels: {given}" in table


# --- evaluate and the Run view ----------------------------------------------------------------------------
def test_evaluate_writes_a_multilabel_run_view(run_copy, shape_tables, capsys):
    from transferlab.runs.view import run_view

    result = _json(capsys, ["evaluate", str(run_copy), str(shape_tables[1]), "--json"])
    data, images = run_view(run_copy)
    ev = data["evaluation"]
    assert ev["kind"] == "multilabel" and ev["split"] == "evaluate" and ev["map"] == result["map"]
    assert [r["label"] for r in ev["per_label"]] == sorted(SHAPE_LABELS)
    curves = {c["label"]: c for c in ev["pr_curves"]}
    assert set(curves) == set(SHAPE_LABELS)
    for r in ev["per_label"]:  # each curve carries its label's AP, and ends at full recall
        assert curves[r["label"]]["ap"] == pytest.approx(r["ap"], abs=1e-4)
        assert curves[r["label"]]["recall"][-1] == 1.0
    errors = result["most_confident_errors"]
    assert [images[e["id"]] for e in ev["errors"]] == [w["path"] for w in errors[:len(ev["errors"])]]
    html = (run_copy / "report.html").read_text()
    assert '"kind": "multilabel"' in html and '"pr_curves"' in html


def test_report_of_a_multilabel_run(multilabel_run):
    meta = json.loads((multilabel_run / "model.json").read_text())
    report = (multilabel_run / "report.md").read_text()
    assert "best val mAP" in report and "| label | AP |" in report
    assert (multilabel_run / "pr_curves.png").stat().st_size > 0
    assert len(meta["thresholds"]) == len(SHAPE_LABELS)


# --- the served API ---------------------------------------------------------------------------------------
def test_the_api_returns_several_labels_with_the_thresholds_applied(multilabel_run, shape_tables):
    from fastapi.testclient import TestClient

    from transferlab.api import load
    from transferlab.serve import create_app

    paths = _val_images(shape_tables)[:6]
    clf = load(multilabel_run)
    with TestClient(create_app([multilabel_run])) as client:
        described = client.get("/api/models").json()[0]
        assert described["multilabel"] and described["thresholds"] == pytest.approx(clf.thresholds)
        for threshold in (None, 0.0, 1.0):
            params = {"top": 3} if threshold is None else {"top": 3, "threshold": threshold}
            files = [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]
            served = client.post(f"/api/models/{multilabel_run.name}/predict", files=files, params=params).json()
            local = clf.predict(paths, top=3, threshold=threshold, backend="torch")
            for s, c in zip(served, local):
                assert [g["label"] for g in s["labels"]] == [g["label"] for g in c["labels"]]
                assert np.allclose([g["score"] for g in s["labels"]], [g["score"] for g in c["labels"]], atol=1e-4)
                assert len(s["labels"]) == {None: len(c["labels"]), 0.0: len(SHAPE_LABELS), 1.0: 0}[threshold]


# --- export -----------------------------------------------------------------------------------------------
def test_export_keeps_parity_and_int8_is_measured_in_map(run_copy, shape_tables, capsys):
    from transferlab.api import export, load

    for fmt in ("onnx", "torchscript"):
        result = export(run_copy, format=fmt)
        assert result.max_abs_diff < 1e-4
        sidecar = json.loads(result.sidecar.read_text())
        assert sidecar["multilabel"] and len(sidecar["thresholds"]) == len(SHAPE_LABELS)
        assert sidecar["output"]["apply"].startswith("sigmoid")
    capsys.readouterr()
    assert main(["export", str(run_copy), "--quantize", "int8", "--calibration", "4", "--calibration-method",
                 "minmax", "--max-drop", "100"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((run_copy / "quantization.json").read_text())["int8"]
    val_map = json.loads((run_copy / "evaluation.json").read_text())["val"]["map"]
    assert report["metric"] == "map" and report["float"]["map"] == pytest.approx(val_map, abs=1e-4)
    assert report["drop_points"] == pytest.approx(100 * (report["float"]["map"] - report["quantized"]["map"]), abs=1e-3)
    assert 0 <= report["agreement"] <= 1 and "mAP points" in printed
    assert report["validation"]["images"] == len(_val_images(shape_tables))  # the run's own val table
    # predict on the int8 export gives labels too
    records = load(run_copy).predict(_val_images(shape_tables)[:2], backend="onnxruntime-int8")
    assert all("labels" in r for r in records)


def test_a_quantized_multilabel_export_over_max_drop_is_refused(run_copy, monkeypatch):
    """The refusal does not wait for a real drop: the measured quantized mAP is lowered by 5 points."""
    from transferlab.api import export
    from transferlab.core.errors import TransferlabError
    from transferlab.inference import export as exporting

    measured = exporting.measure

    def lowered(*args, **kwargs):
        numbers = measured(*args, **kwargs)
        numbers["quantized"]["map"] -= 0.05
        numbers["drop_points"] += 5
        return numbers

    monkeypatch.setattr(exporting, "measure", lowered)
    with pytest.raises(TransferlabError, match=r"int8 quantization would cost \d+\.\d\d mAP points .*label-decision"):
        export(run_copy, quantize="int8", calibration=4, calibration_method="minmax", max_drop=1.0)
    assert not (run_copy / "model-int8.onnx").exists() and not (run_copy / "quantization.json").exists()


# --- audit ------------------------------------------------------------------------------------------------
def test_audit_finds_planted_multilabel_label_errors_and_leakage(tmp_path):
    from transferlab.api import audit

    rows = write_shape_images(tmp_path, 120, seed=7)
    planted = set()
    for k, i in enumerate(np.random.default_rng(7).choice(len(rows), 8, replace=False)):
        path, labels = rows[i]
        flip = SHAPE_LABELS[k % len(SHAPE_LABELS)]  # a shape that is there unlabelled, or one labelled that is not
        rows[i] = (path, [x for x in labels if x != flip] if flip in labels else labels + [flip])
        planted.add(str((tmp_path / path).resolve()))
    copy = tmp_path / "img" / "copy.png"
    shutil.copy(tmp_path / rows[0][0], copy)
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels", "split"])
        w.writerows((p, " ".join(labels), "val" if i % 5 == 4 else "train") for i, (p, labels) in enumerate(rows))
        w.writerow(["img/copy.png", " ".join(rows[0][1]), "val"])
    result = audit(table, image_size=64, out=tmp_path / "audit", progress=False)
    assert result.multilabel and result.classes == sorted(SHAPE_LABELS)
    found = {str(Path(i["path"]).resolve()) for i in result.of_kind("label_issue")}
    assert len(found & planted) >= 6, result.of_kind("label_issue")
    assert len(found - planted) <= 4, result.of_kind("label_issue")
    issue = next(i for i in result.of_kind("label_issue") if str(Path(i["path"]).resolve()) in planted)
    assert issue["given"] != issue["suggested"] and issue["score"] < 0.5
    dup = result.of_kind("exact_duplicate")
    assert len(dup) == 1 and dup[0]["cross_split"] and result.cross_split_duplicates == 1
    assert dup[0]["given"] == " + ".join(sorted(rows[0][1])) or dup[0]["given"] == "(none)"
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["multilabel"] and saved["counts"]["label_issue"] == len(found)
    assert "Images per label" in (tmp_path / "audit" / "audit.html").read_text()


def test_the_multilabel_probe_scores_out_of_fold():
    from transferlab.auditing.audit import out_of_fold_label_scores
    from transferlab.inference.multilabel import mean_average_precision

    rng = np.random.default_rng(0)
    targets = rng.random((90, 3)) < 0.4
    informative = targets * 1.0 + rng.normal(0, 0.3, targets.shape)
    noise = rng.normal(0, 1, (90, 8))
    good = out_of_fold_label_scores(np.hstack([informative, noise]), targets)
    bad = out_of_fold_label_scores(noise, targets)
    assert good.shape == targets.shape and mean_average_precision(good, targets) > 0.95
    assert mean_average_precision(bad, targets) < 0.7
    constant = out_of_fold_label_scores(noise, np.c_[targets[:, :1], np.zeros((90, 1), bool)])
    assert np.allclose(constant[:, 1], 1e-6)  # a label no image carries scores 0 (clipped)


# --- advise and sweep -------------------------------------------------------------------------------------
def test_advise_measures_a_multilabel_table_with_the_one_vs_rest_probe(shape_tables, capsys):
    advice = _json(capsys, ["advise", str(shape_tables[0]), "--val", str(shape_tables[1]), "--image-size", "64",
                            "--json"])
    m = advice["measurements"]
    with open(shape_tables[0], newline="") as f:
        counts = {name: 0 for name in SHAPE_LABELS}
        for row in csv.DictReader(f):
            for label in row["labels"].split():
                counts[label] += 1
    assert m["multilabel"] and m["num_classes"] == 3 and m["min_per_class"] == min(counts.values())
    assert m["probe_accuracy"] > 0.85 and m["separability"] > 0.6  # mAP of the probe; the shapes separate
    assert any("one-vs-rest logistic-regression probe" in r and "mAP" in r for r in advice["decision"]["reasons"])
    assert advice["decision"]["decided_by"][0].startswith("smallest label")
    assert advice["strategy"] in ("feature-extract", "partial", "finetune")
    capsys.readouterr()
    assert main(["advise", str(shape_tables[0]), "--val", str(shape_tables[1]), "--image-size", "64"]) == 0
    table = capsys.readouterr().out
    assert "probe mAP" in table and "smallest label" in table and "3 labels, several per image" in table


def test_sweep_compares_multilabel_trials_by_map(shape_tables, tmp_path, capsys):
    capsys.readouterr()
    assert main(["sweep", str(shape_tables[0]), "--val", str(shape_tables[1]), "--points", "8,9", "--epochs", "2",
                 "--image-size", "48", "--batch-size", "16", "--augment", "none", "--out", str(tmp_path / "sweep"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    trials = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    meta = json.loads((tmp_path / "sweep" / "model.json").read_text())
    assert all(t["val_map"] is not None and t["val_acc"] is None for t in trials)
    first = [t for t in trials if t["rung"] == 0]
    best = max(first, key=lambda t: (t["val_map"], -t["val_loss"], t["freeze"]))
    assert trials[-1]["freeze"] == best["freeze"] == meta["freeze"]
    assert meta["thresholds"] and meta["metrics"]["val_map"] == pytest.approx(trials[-1]["val_map"])
    assert "val mAP" in out and "had the best validation mAP" in meta["advice"]["explanation"]
    with open(tmp_path / "sweep" / "sweep.csv", newline="") as f:
        assert "val_map" in next(csv.reader(io.StringIO(f.read())))


def test_a_single_label_table_is_not_multilabel_in_the_advice(tmp_path, capsys):
    rows = [(p, labels[:1] or ["none"]) for p, labels in write_shape_images(tmp_path, 40, seed=9)]
    table = write_label_table(tmp_path / "one.csv", rows)
    advice = _json(capsys, ["advise", str(table), "--image-size", "48", "--json"])
    assert not advice["measurements"]["multilabel"]
    assert advice["decision"]["decided_by"][0].startswith("smallest class")


def test_train_auto_measures_a_multilabel_table_first(shape_tables, tmp_path):
    from transferlab.api import train

    run = train(shape_tables[0], val_data=shape_tables[1], strategy="auto", epochs=2, image_size=48, batch_size=16,
                augment="none", out=tmp_path / "auto", progress=False)
    meta = json.loads((run.path / "model.json").read_text())
    assert meta["thresholds"] and "val_map" in run.metrics
    assert meta["advice"]["measurements"]["multilabel"]
    assert "one-vs-rest logistic-regression probe" in meta["advice"]["explanation"]
