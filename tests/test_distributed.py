"""The same training on two processes through torchrun + DistributedDataParallel (gloo on CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from transferlab.api import train

TRAIN_ARGS = ["--image-size", "48", "--augment", "none", "--workers", "0", "--quiet", "--seed", "0"]


def torchrun(nproc: int, args: list[str], **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "transferlab", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def test_two_processes_match_one_process_with_the_same_effective_batch(digits_folder, tmp_path):
    out = tmp_path / "runs" / "ddp"
    proc = torchrun(2, ["train", str(digits_folder), "--strategy", "feature-extract", "--epochs", "4",
                        "--batch-size", "8", "--out", str(out), *TRAIN_ARGS])
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"], "only rank 0 writes a run folder"
    assert stdout.count("run folder:") == 1, "only rank 0 reports"
    meta = json.loads((out / "model.json").read_text())
    single = train(digits_folder, model="efficientnet_lite0", strategy="feature-extract", epochs=4, batch_size=16,
                   image_size=48, augment="none", workers=0, out=tmp_path / "single", progress=False)
    assert meta["metrics"]["val_acc"] > 0.6
    assert abs(meta["metrics"]["val_acc"] - single.metrics["val_acc"]) <= 0.1
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 5  # header + one row per epoch, written once


def test_two_process_run_resumes_on_one_process(digits_folder, tmp_path):
    out = tmp_path / "ddp"
    proc = torchrun(2, ["train", str(digits_folder), "--strategy", "finetune", "--epochs", "4", "--batch-size", "8",
                        "--out", str(out), *TRAIN_ARGS])
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 400
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert last.exists(), proc.stderr.read()[-2000:] if proc.poll() is not None else "no checkpoint in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole torchrun group, as a crash would
    proc.wait()
    assert not (out / "model.json").exists()
    result = subprocess.run([sys.executable, "-m", "transferlab", "train", str(digits_folder), "--resume", str(out),
                             "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((out / "model.json").read_text())
    assert meta["metrics"]["epochs_run"] == 4
    assert [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]] == list(range(1, 5))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (nccl)")
def test_nccl_run_on_every_gpu_up_to_two(digits_folder, tmp_path):
    import torch

    nproc = min(2, torch.cuda.device_count())
    proc = torchrun(nproc, ["train", str(digits_folder), "--strategy", "two-stage", "--epochs", "2", "--device",
                            "cuda", "--out", str(tmp_path / "gpu"), *TRAIN_ARGS], )
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    meta = json.loads((tmp_path / "gpu" / "model.json").read_text())
    assert meta["distributed"]["world_size"] == nproc and meta["distributed"]["backend"] == "nccl"
