"""Freeze-depth search: candidates, the successive-halving schedule, and a real sweep end to end."""
from __future__ import annotations

import csv
import importlib
import json
import time

import pytest

from transferlab.advice import sweep as S
from transferlab.cli.main import build_parser
from transferlab.core.errors import TransferlabError
from transferlab.models import create_model
from transferlab.api import train
from transferlab.training.config import TrainConfig

train_module = importlib.import_module("transferlab.training.batches")
task_module = importlib.import_module("transferlab.tasks.classification")

FAST = dict(image_size=32, batch_size=32, augment="none", seed=0, workers=0)


LITE0_BLOCKS = create_model("efficientnet_lite0", weights="none").block_names


def test_default_points_span_zero_to_all_but_head():
    assert S.candidate_points(LITE0_BLOCKS) == [0, 2, 5, 8, 10]
    assert S.candidate_points(LITE0_BLOCKS, ["stage7", "0", 10, "stage7"]) == [0, 7, 10]
    with pytest.raises(TransferlabError, match="out of range"):
        S.candidate_points(LITE0_BLOCKS, [11])  # freezing the head too trains nothing
    with pytest.raises(TransferlabError, match="unknown block"):
        S.candidate_points(LITE0_BLOCKS, ["layer9"])


@pytest.mark.parametrize("candidates,epochs,eta,expected", [
    (5, 9, 3, [(5, 1), (2, 3), (1, 9)]),
    (5, 8, 2, [(5, 1), (3, 2), (2, 4), (1, 8)]),
    (3, 2, 3, [(3, 1), (1, 2)]),
    (1, 4, 3, [(1, 4)]),
])
def test_successive_halving_schedule(candidates, epochs, eta, expected):
    assert S.rung_schedule(candidates, epochs, eta) == expected


def test_sweep_keeps_the_best_run_and_reuses_cached_features(digits_folder, tmp_path, monkeypatch):
    calls = []
    real = train_module.prefix_features

    def counting(model, n, *args, **kwargs):
        calls.append(n)
        return real(model, n, *args, **kwargs)

    monkeypatch.setattr(train_module, "prefix_features", counting)
    leakage_checks = []
    real_check = task_module.cross_split_exact_duplicates
    monkeypatch.setattr(task_module, "cross_split_exact_duplicates",
                        lambda scan: leakage_checks.append(scan) or real_check(scan))
    cfg = TrainConfig(model="efficientnet_lite0", strategy="partial", freeze="auto", epochs=2, **FAST)
    run = S.freeze_search(digits_folder, cfg, out=tmp_path / "run", progress=False, points=[0, 8, 10])
    trials = json.loads((run.path / "sweep.json").read_text())
    first, final = trials[:3], trials[3]
    assert [t["freeze"] for t in first] == [0, 8, 10] and {t["epochs"] for t in first} == {1}
    best = max(first, key=lambda t: (t["val_acc"], -t["val_loss"], t["freeze"]))
    assert final["freeze"] == best["freeze"] and final["epochs"] == 2 and final["rung"] == 1
    assert [t["trainable_params"] for t in first] == sorted((t["trainable_params"] for t in first), reverse=True)
    # one prefix pass (train + val) per cached freeze point: the final run reused the trial's features
    assert sorted(calls) == [8, 8, 10, 10]
    # the data's leakage check runs once per sweep (in the final run), not once per trial
    assert len(leakage_checks) == 1
    meta = json.loads((run.path / "model.json").read_text())
    assert meta["leakage"]["exact"] == 0
    assert meta["strategy"] == "partial" and meta["freeze"] == best["freeze"]
    assert meta["advice"]["freeze_search"]["best_freeze"] == best["freeze"]
    assert meta["metrics"]["val_acc"] == pytest.approx(final["val_acc"])
    assert (run.path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(run.path / "sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # trial runs are not left behind


# ~22 s: freeze="auto" is also searched in test_sweep_keeps_the_best_run_and_reuses_cached_features and
# test_tracking.py, the sweep CLI in test_sweep_stays_within_its_budget
@pytest.mark.slow
def test_train_partial_freeze_auto_and_the_cli(digits_folder, tmp_path, capsys):
    from sklearn.datasets import load_digits

    from conftest import write_digit_folder

    d = load_digits()
    keep = [i for c in range(2) for i in (d.target == c).nonzero()[0][:10]]
    tiny = write_digit_folder(tmp_path / "tiny", d.images[keep], d.target[keep])
    run = train(tiny, strategy="partial", freeze="auto", epochs=1, out=tmp_path / "api",
                progress=False, **FAST, model="resnet18", weights="none")
    trials = json.loads((run.path / "sweep.json").read_text())
    assert {t["freeze"] for t in trials if t["rung"] == 0} == {0, 2, 3, 4, 6}  # resnet18's 7 blocks
    parser = build_parser()
    args = parser.parse_args(["sweep", str(digits_folder), "--model", "resnet18", "--weights", "none",
                              "--points", "layer4,pool", "--epochs", "1", "--image-size", "32", "--augment", "none",
                              "--out", str(tmp_path / "cli"), "--quiet"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "best freeze point" in out and "sweep.png" in out
    bad = parser.parse_args(["sweep", str(digits_folder), "--model", "resnet18", "--points", "stage9"])
    with pytest.raises(TransferlabError, match="unknown block"):
        bad.func(bad)


def test_sweep_stays_within_its_budget(digits_folder, tmp_path, capsys):
    budget = 20.0
    args = build_parser().parse_args(["sweep", str(digits_folder), "--points", "0,8,10", "--epochs", "60",
                                      "--image-size", "32", "--augment", "none", "--workers", "0",
                                      "--budget", f"{budget:g}s", "--out", str(tmp_path / "run"), "--quiet"])
    t0 = time.monotonic()
    assert args.func(args) == 0
    assert time.monotonic() - t0 <= 1.1 * budget
    trials = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert [t["rung"] for t in trials] == [0, 0, 0, 1]  # every rung ran, the final one included
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["budget"]["seconds"] == budget and meta["metrics"]["epochs_run"] < 60
