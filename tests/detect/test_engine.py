"""A detector trains on the classifier's engine, so it has every engine feature: several processes
(torchrun/DDP), --budget, early stopping on its own metric (AP@0.5), --lr find, clipping and accumulation,
the non-finite-loss guard, resume; and a checkpoint written before the one engine gets one line."""
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from transferlab.api import train
from transferlab.core.errors import TransferlabError
from transferlab.core.io import atomic_torch_save

FAST = dict(model="blazeface_front", batch_size=16, workers=0, box_augment={"zoom_out_p": 0.0}, progress=False)


def _cli(*args, timeout=600, torchrun=0):
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"] if torchrun else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, *launcher, "-m", "transferlab", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_torchrun_two_processes_train_one_detector_run(tmp_path, synthetic_test):
    out = tmp_path / "runs" / "ddp"
    proc = _cli("train", synthetic_test, "--model", "blazeface_front", "--epochs", "2", "--batch-size", "8",
                "--workers", "0", "--out", out, "--quiet", torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"], "only rank 0 writes a run folder"
    assert proc.stdout.count("run folder:") == 1 and "validation AP@0.5" in proc.stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "detector"
    assert meta["distributed"] == {"world_size": 2, "backend": "gloo"}
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 4  # header, epoch 0 (pretrained) and two epochs, written once
    evaluated = _cli("evaluate", out, synthetic_test)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "pretrained blazeface_front" in evaluated.stdout


def test_budget_bounds_a_detector_run_and_keeps_the_best_epoch(tmp_path, synthetic_train):
    budget = 20.0
    t0 = time.monotonic()
    run = train(synthetic_train, out=tmp_path / "run", epochs=200, budget=budget, **FAST)
    took = time.monotonic() - t0
    meta = json.loads((run.path / "model.json").read_text())
    assert took <= 1.1 * budget, f"{took:.1f}s for a {budget:.0f}s budget"
    trained = [r for r in run.history if r["epoch"] > 0]
    assert 0 < len(trained) < 200
    assert any(d["event"] == "budget" for d in meta["decisions"])
    assert meta["budget"]["seconds"] == budget
    best = max(run.history, key=lambda r: r["val_ap50"])
    assert run.metrics["best_epoch"] == best["epoch"]


def test_early_stopping_watches_validation_ap(tmp_path, synthetic_test):
    # an lr far too high: AP falls below the pretrained model's and does not come back
    run = train(synthetic_test, out=tmp_path / "run", epochs=12, patience=2, lr=1.0, warmup_epochs=0, **FAST)
    trained = [r for r in run.history if r["epoch"] > 0]
    assert len(trained) < 12, [r["val_ap50"] for r in run.history]
    ap = [r["val_ap50"] for r in run.history]
    assert all(a <= max(ap[: len(ap) - 2]) for a in ap[-2:])  # stopped after two epochs without a new best


def test_lr_find_picks_the_detectors_learning_rate(tmp_path, synthetic_test, capsys):
    run = train(synthetic_test, out=tmp_path / "run", epochs=1, lr="find", **{**FAST, "progress": True})
    assert "lr find [finetune]: suggested lr" in capsys.readouterr().err
    meta = json.loads((run.path / "model.json").read_text())
    lr = meta["phases"][0]["lr"]
    assert 0 < lr < 1 and lr != 3e-3


def test_clipping_and_accumulation_reach_the_detector(tmp_path, synthetic_test):
    plain = train(synthetic_test, out=tmp_path / "plain", epochs=1, patience=0, **FAST)
    tuned = train(synthetic_test, out=tmp_path / "tuned", epochs=1, patience=0, grad_clip=0.1, accum_steps=2, **FAST)
    assert math.isfinite(tuned.history[-1]["train_loss"])
    assert tuned.history[-1]["train_loss"] != pytest.approx(plain.history[-1]["train_loss"], rel=1e-6)
    assert json.loads((tuned.path / "model.json").read_text())["config"]["accum_steps"] == 2


def test_non_finite_loss_stops_a_detector_run_in_one_line(tmp_path, synthetic_test, monkeypatch):
    from transferlab.tasks.detection import DetectionTask

    monkeypatch.setattr(DetectionTask, "batch_loss", lambda self, loss_fn, out, y: loss_fn(*out, y)["loss"] * math.nan)
    with pytest.raises(TransferlabError, match="NaN/inf .* lower --lr") as info:
        train(synthetic_test, out=tmp_path / "run", epochs=2, max_bad_steps=2, **FAST)
    assert "\n" not in str(info.value)


def test_a_checkpoint_from_before_the_one_engine_gets_one_line(tmp_path, synthetic_test):
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    # what detect/trainer.py wrote: its own epoch counter and config, no phases
    atomic_torch_save({"format": "transferlab-checkpoint/1", "epoch": 1, "model": {}, "optimizer": {},
                       "scheduler": {}, "history": [], "train_seconds": 1.0, "best": {"epoch": 0, "val_ap50": 0.5},
                       "config": {"model": "blazeface_front", "epochs": 3, "lr_scaling": "relative",
                                  "augment": {"jitter": 0.3}, "loss": {}}},
                      run / "checkpoints" / "last.pt")
    with pytest.raises(TransferlabError, match="start the run again") as info:
        train(synthetic_test, out=run, resume=True, progress=False)
    assert "\n" not in str(info.value)
    proc = _cli("train", synthetic_test, "--resume", run)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "start the run again" in proc.stderr


def test_only_the_detector_strategies_are_accepted(tmp_path, synthetic_test):
    with pytest.raises(TransferlabError, match="a detector trains with --strategy finetune, partial"):
        train(synthetic_test, out=tmp_path / "run", strategy="two-stage", epochs=2, **FAST)
