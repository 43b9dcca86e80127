"""Multi-label classification: the metrics against scikit-learn's, and runs on generated images whose
labels are coloured patches (several per image), trained, evaluated and predicted through the API
and the CLI, with the same mAP from every verb."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.api import evaluate, load, predict, train
from transferlab.core.errors import TransferlabError
from transferlab.inference.multilabel import (average_precision, mean_average_precision, multilabel_report,
                                              tune_thresholds)

LABELS = ("red", "green", "blue", "yellow")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
QUADRANTS = {"red": (0, 0), "green": (1, 0), "blue": (0, 1), "yellow": (1, 1)}
FAST = dict(image_size=48, batch_size=16, workers=0, augment="none", progress=False)


def write_patch_images(folder, n: int, seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """n grey-noise images, each label a coloured square in its quadrant with probability 0.45."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = rng.integers(90, 150, (64, 64, 3), dtype=np.uint8)
        labels = tuple(lab for lab in LABELS if rng.random() < 0.45)
        for lab in labels:
            qx, qy = QUADRANTS[lab]
            x, y = qx * 32 + rng.integers(2, 10), qy * 32 + rng.integers(2, 10)
            img[y:y + 20, x:x + 20] = COLOURS[lab]
        name = f"img{seed}_{i:03d}.png"
        Image.fromarray(img).save(folder / name)
        rows.append((name, labels))
    return rows


def write_table(path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels"])
        w.writerows([(name, " ".join(labels)) for name, labels in rows])


@pytest.fixture(scope="module")
def patch_tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    write_table(root / "train.csv", write_patch_images(root, 64, seed=0))
    write_table(root / "val.csv", write_patch_images(root, 40, seed=1))
    return root / "train.csv", root / "val.csv"


@pytest.fixture(scope="module")
def patch_run(patch_tables, tmp_path_factory):
    train_csv, val_csv = patch_tables
    return train(train_csv, val_data=val_csv, strategy="feature-extract", epochs=6,
                 out=tmp_path_factory.mktemp("runs") / "patches", **FAST)


# --- metrics ----------------------------------------------------------------------------------------------
def test_average_precision_matches_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(50) < 0.3
        y[0] = True
        scores = np.round(rng.random(50), 1)  # many ties
        assert average_precision(scores, y) == pytest.approx(average_precision_score(y, scores))


def test_report_matches_scikit_learn_f1_and_exact_match():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(1)
    targets = rng.random((80, 5)) < 0.4
    scores = np.clip(targets * 0.4 + rng.random((80, 5)) * 0.7, 0, 1)
    thresholds = [0.5, 0.4, 0.6, 0.5, 0.55]
    report = multilabel_report(scores, targets, list("abcde"), thresholds)
    predicted = scores >= np.array(thresholds)
    assert report["micro_f1"] == pytest.approx(f1_score(targets, predicted, average="micro"))
    assert report["macro_f1"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert report["exact_match"] == pytest.approx(accuracy_score(targets, predicted))
    assert report["map"] == pytest.approx(mean_average_precision(scores, targets))


def test_thresholds_are_half_the_best_f1_and_beat_one_half_on_unseen_calibrated_scores():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(2)

    def calibrated(n):  # each label's probability drawn per image, the label drawn from it: scores = probabilities
        p = rng.beta([0.6, 0.4, 0.8, 0.5, 0.3, 1.0], 1.5, size=(n, 6))
        return p, rng.random(p.shape) < p

    scores, targets = calibrated(150)  # a validation set's size
    tuned = tune_thresholds(scores, targets)
    for j, t in enumerate(tuned):
        precision, recall, _ = precision_recall_curve(targets[:, j], scores[:, j])
        best = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
        assert t == pytest.approx(best / 2)
    unseen, truth = calibrated(20000)
    at_half = multilabel_report(unseen, truth, list("abcdef"), [0.5] * 6)["macro_f1"]
    assert multilabel_report(unseen, truth, list("abcdef"), tuned)["macro_f1"] > at_half + 0.02
    assert tune_thresholds(scores, np.zeros_like(targets)) == [0.5] * 6  # no positive image: the default


# --- a run ------------------------------------------------------------------------------------------------
def test_a_multilabel_table_trains_a_sigmoid_classifier(patch_run):
    meta = json.loads((patch_run.path / "model.json").read_text())
    assert meta["dataset"]["multilabel"] is True and meta["classes"] == sorted(LABELS)
    assert len(meta["thresholds"]) == 4
    assert meta["metrics"]["val_map"] > 0.8, meta["metrics"]  # coloured patches are easy for ImageNet features
    assert meta["metrics"]["best_epoch"] == max(patch_run.history, key=lambda r: (r["val_map"], -r["val_loss"]))["epoch"]
    report = (patch_run.path / "report.md").read_text()
    assert "mAP" in report and "threshold" in report
    assert (patch_run.path / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert patch_run.predictor.multilabel


def test_train_evaluate_and_predict_agree_on_map(patch_run, patch_tables, tmp_path):
    _, val_csv = patch_tables
    from_run = json.loads((patch_run.path / "model.json").read_text())["metrics"]["val_map_final"]
    evaluated = evaluate(str(patch_run.path), str(val_csv), progress=False)
    out = tmp_path / "records.json"
    proc = subprocess.run([sys.executable, "-m", "transferlab", "predict", str(val_csv), "--model",
                           str(patch_run.path), "--top", "4", "--json", str(out), "--backend", "torch"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())
    classes = sorted(LABELS)
    truth = {name: labels for name, labels in csv.reader(open(val_csv)) if name != "image"}
    scores = np.array([[next(t["prob"] for t in r["top"] if t["label"] == c) for c in classes] for r in records])
    targets = np.array([[c in truth[r["path"].split("/")[-1]].split() for c in classes] for r in records])
    recomputed = mean_average_precision(scores, targets)
    assert evaluated["map"] == pytest.approx(from_run, abs=1e-4)
    assert recomputed == pytest.approx(evaluated["map"], abs=1e-4)
    # the records' labels are the scores at or above the run's thresholds
    thresholds = dict(zip(classes, load(str(patch_run.path)).thresholds))
    for r in records:
        given = {lab["label"] for lab in r["labels"]}
        assert given == {t["label"] for t in r["top"] if t["prob"] >= thresholds[t["label"]]}


def test_threshold_overrides_the_tuned_ones(patch_run, patch_tables):
    _, val_csv = patch_tables
    (record,) = predict(str(val_csv).replace("val.csv", "img1_000.png"), model=str(patch_run.path), threshold=0.0,
                        backend="torch")
    assert len(record["labels"]) == 4  # every label clears a threshold of 0
    strict = evaluate(str(patch_run.path), str(val_csv), progress=False, threshold=0.999)
    assert all(r["threshold"] == 0.999 for r in strict["per_label"])


@pytest.mark.parametrize("strategy", ["two-stage", "partial"])
def test_every_strategy_trains_multilabel(patch_tables, tmp_path, strategy):
    train_csv, val_csv = patch_tables
    extra = {"freeze": "stage6"} if strategy == "partial" else {}
    run = train(train_csv, val_data=val_csv, strategy=strategy, epochs=3, out=tmp_path / strategy, **FAST, **extra)
    assert run.predictor.multilabel and 0 <= run.metrics["val_map"] <= 1
    assert {r["phase"] for r in run.history} == ({"head", "finetune"} if strategy == "two-stage" else {"partial"})


def test_the_multilabel_head_makes_many_passes_over_the_cache_in_few_epochs(patch_tables, tmp_path, monkeypatch,
                                                                            capsys):
    """One epoch of the head on cached features is MIN_HEAD_PASSES passes: it ends far closer to converged
    than a single pass (the sigmoid head's slow start that MIN_HEAD_PASSES answers)."""
    from transferlab.tasks import multilabel

    train_csv, val_csv = patch_tables
    one = dict(val_data=val_csv, strategy="feature-extract", epochs=1, **{**FAST, "progress": True})
    many = train(train_csv, out=tmp_path / "many", **one)
    assert f"{multilabel.MIN_HEAD_PASSES} passes over the cached features per epoch" in capsys.readouterr().err
    monkeypatch.setattr(multilabel, "MIN_HEAD_PASSES", 1)
    single = train(train_csv, out=tmp_path / "single", **one)
    assert "passes over the cached features" not in capsys.readouterr().err
    assert many.history[-1]["train_loss"] < 0.8 * single.history[-1]["train_loss"]
    assert many.metrics["val_loss"] < single.metrics["val_loss"]


def test_label_smoothing_pulls_multilabel_targets_toward_one_half(patch_run, patch_tables, tmp_path):
    """--label-smoothing 0.2 makes each 0/1 target 0.1/0.9: the training loss cannot fall below the entropy
    of 0.1 (0.325 nats), which the unsmoothed run's does, and its confident scores stay further from 1. A
    multi-label run smooths by 0.1 unless told (the run records it), a single-label one not at all."""
    train_csv, val_csv = patch_tables
    floor = -(0.1 * np.log(0.1) + 0.9 * np.log(0.9))
    runs = {s: train(train_csv, val_data=val_csv, strategy="feature-extract", epochs=6, label_smoothing=s,
                     out=tmp_path / str(s), **FAST) for s in (0.0, 0.2)}
    assert all(r["train_loss"] >= floor - 1e-3 for r in runs[0.2].history)
    assert runs[0.0].history[-1]["train_loss"] < floor
    share_near_one = lambda run: np.mean([t["prob"] > 0.95 for r in predict(str(val_csv.parent), model=str(run.path),
                                                                           progress=False) for t in r["top"]])
    assert share_near_one(runs[0.2]) < 0.5 * share_near_one(runs[0.0])
    smoothing = lambda run: json.loads((run.path / "model.json").read_text())["config"]["label_smoothing"]
    assert smoothing(patch_run) == 0.1 and smoothing(runs[0.0]) == 0.0


def test_balance_sampler_is_refused_for_multilabel_in_one_line(patch_tables, tmp_path):
    train_csv, val_csv = patch_tables
    with pytest.raises(TransferlabError, match="--balance weights") as info:
        train(train_csv, val_data=val_csv, strategy="feature-extract", epochs=1, balance="sampler",
              out=tmp_path / "r", **FAST)
    assert "\n" not in str(info.value)


def test_balance_weights_weigh_rare_labels(patch_tables, tmp_path):
    train_csv, val_csv = patch_tables
    run = train(train_csv, val_data=val_csv, strategy="feature-extract", epochs=2, balance="weights",
                out=tmp_path / "w", **FAST)
    assert torch.isfinite(torch.tensor(run.metrics["val_loss"]))


@pytest.mark.shared("aquarium")
def test_aquarium_trains_to_a_useful_map(tmp_path, shared_datasets):
    root = shared_datasets / "aquarium"
    run = train(root / "train.csv", val_data=root / "val.csv", strategy="feature-extract", epochs=2, image_size=96,
                workers=0, out=tmp_path / "aq", progress=False)
    assert run.metrics["val_map"] > 0.6, run.metrics
    assert len(run.predictor.classes) == 7
