"""Reliability and safety: bad images, bad datasets, killed runs, full disks, untrusted files, numerical faults.

Every failure mode must end in one clean line (`transferlab: error: ...`, exit code 2, no traceback) and
never lose or tear data already written. Long fault-injection loops are marked slow (`pytest -m slow`).
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import pickle
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import transferlab
from transferlab.cli import main as cli
from transferlab.data.folders import DecodedImages, check_image, drop_failed, scan_dataset
from transferlab.core.errors import CheckpointError, ImageReadError, TransferlabError
from transferlab.data.images import open_image, walk_images
from transferlab.core.io import atomic_torch_save, safe_torch_load
from transferlab.api import train
from transferlab.tasks.classification import ClassificationTask

FAST = dict(image_size=48, batch_size=16, augment="none", seed=0, device="cpu", workers=0)
FAST_CLI = ["--image-size", "48", "--batch-size", "16", "--augment", "none", "--seed", "0", "--device", "cpu",
            "--workers", "0", "--quiet"]
# the run the kill tests interrupt: a head-only epoch, then two fine-tuning epochs (several seconds each)
KILL_CLI = ["--strategy", "two-stage", "--epochs", "3", "--head-epochs", "1", "--cache-features", "off", *FAST_CLI]


# --- helpers -----------------------------------------------------------------------------------------
def run_cli(*args, timeout=300, **popen) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "transferlab", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, errors="replace", **popen)


def assert_one_line_error(rc: int, err: str, *words: str) -> str:
    """Exit code 2, no traceback, exactly one `transferlab: error:` line that contains every word."""
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("transferlab: error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


def main_in_process(capsys, *args) -> tuple[int, str]:
    """cli.main in this process (monkeypatches apply); an exception escaping main is a test failure."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def write_digits(root: Path, per_class: int = 12, classes: int = 2, size: int = 32) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in range(classes):
        folder = root / f"digit_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(np.flatnonzero(d.target == c)[:per_class]):
            arr = (d.images[i] * 16).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr, mode="L").resize((size, size), Image.BILINEAR).save(folder / f"{j:03d}.png")
    return root


def is_temp_name(name: str) -> bool:
    # ours: .NAME.XXXX.tmp; safetensors' own atomic writer (Rust tempfile): .tmpXXXXXX
    return name.startswith(".") and (name.endswith(".tmp") or re.fullmatch(r"\.tmp[A-Za-z0-9]{6}", name) is not None)


def check_run_folder_intact(run: Path) -> list[str]:
    """Every non-temporary file in a run folder parses/loads completely; returns the files checked."""
    checked = []
    for path in sorted(run.rglob("*")):
        if not path.is_file() or is_temp_name(path.name):
            continue
        name = path.name
        if name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
        elif name.endswith(".csv"):
            rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
            assert rows and all(len(r) == len(rows[0]) for r in rows), f"torn {path}"
        elif name.endswith(".pt"):
            state = safe_torch_load(path)
            assert {"model", "optimizer", "history", "phase"} <= set(state), path
        elif name.endswith(".safetensors"):
            tensors = load_file(str(path))
            assert tensors and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
        elif name.endswith(".png"):
            with Image.open(path) as img:
                img.load()
        elif name.endswith(".md"):
            assert path.read_text(encoding="utf-8")
        elif name.endswith(".html"):  # report.html: the whole page, closed
            assert path.read_text(encoding="utf-8").rstrip().endswith("</html>"), f"torn {path}"
        else:
            raise AssertionError(f"unexpected file in run folder: {path}")
        checked.append(str(path.relative_to(run)))
    return checked


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


class Evil:
    """A pickle payload that runs a shell command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Two digit classes, 12 images each, 32x32 PNG: trains in seconds."""
    return write_digits(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_data, model="efficientnet_lite0", strategy="feature-extract", out=out, epochs=2, progress=False, **FAST)
    return out


def make_bad_images(folder: Path) -> dict[str, str]:
    """Write every kind of awkward file into `folder`; returns name -> expected outcome ('ok' or a reason word)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = io.BytesIO()
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(photo, "JPEG", quality=90)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(photo.getvalue()[: len(photo.getvalue()) // 2])
    (folder / "text.jpg").write_text("this is not a JPEG\n")
    frames = [Image.new("P", (32, 32), i * 40) for i in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one_pixel.png")
    Image.new("L", (10000, 50), 128).save(folder / "wide_10000x50.png")
    Image.fromarray((rng.random((32, 32)) * 65535).astype(np.uint16)).save(folder / "deep16.png")
    Image.new("CMYK", (32, 32), (0, 100, 200, 0)).save(folder / "cmyk.jpg")
    rotated = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.save(folder / "exif_rotated.jpg", exif=exif)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(folder / "ünïcödé 画像.png")
    Image.new("RGB", (32, 32), (7, 7, 7)).save(os.path.join(os.fsencode(folder), b"latin1_\xe9\xff.png"))
    os.symlink("..", folder / "loop_to_parent")
    os.symlink(folder.resolve(), folder / "loop_to_self")
    return {
        "zero.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "identify", "animated.gif": "ok",
        "one_pixel.png": "ok", "wide_10000x50.png": "ok", "deep16.png": "ok", "cmyk.jpg": "ok",
        "exif_rotated.jpg": "ok", "ünïcödé 画像.png": "ok", os.fsdecode(b"latin1_\xe9\xff.png"): "ok",
        "loop_to_parent": "symlink loop", "loop_to_self": "symlink loop",
    }


@pytest.fixture(scope="session")
def bad_data(tiny_data, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("bad") / "data"
    shutil.copytree(tiny_data, root)
    expected = make_bad_images(root / "digit_0")
    return root, expected


# --- bad images --------------------------------------------------------------------------------------
def test_awkward_images_decode_to_upright_rgb(bad_data):
    root, _ = bad_data
    folder = root / "digit_0"
    gif = open_image(folder / "animated.gif")
    assert gif.mode == "RGB" and gif.size == (32, 32)
    assert open_image(folder / "one_pixel.png").size == (1, 1)
    assert open_image(folder / "wide_10000x50.png").size == (10000, 50)
    deep = np.asarray(open_image(folder / "deep16.png"))
    assert deep.dtype == np.uint8 and deep.min() < 30 and deep.max() > 225, "16-bit must be rescaled, not clipped"
    cmyk = open_image(folder / "cmyk.jpg")
    assert cmyk.mode == "RGB"
    assert open_image(folder / "exif_rotated.jpg").size == (20, 40), "EXIF orientation must be applied"
    assert open_image(folder / "ünïcödé 画像.png").mode == "RGB"
    assert open_image(os.path.join(os.fsencode(folder), b"latin1_\xe9\xff.png")).mode == "RGB"
    for name, why in [("zero.jpg", "."), ("text.jpg", "not an image"), ("truncated.jpg", "truncated")]:
        with pytest.raises(ImageReadError, match=why):
            open_image(folder / name)


def test_tiny_and_extreme_aspect_images_go_through_the_training_transform(bad_data, trained_run):
    root, _ = bad_data
    clf = transferlab.load(str(trained_run))
    for name in ("one_pixel.png", "wide_10000x50.png", "animated.gif", "deep16.png"):
        x = clf.preprocessing.train_transform("strong")(open_image(root / "digit_0" / name))
        assert tuple(x.shape) == (3, 48, 48) and torch.isfinite(x).all(), name


def test_decompression_bomb_is_skipped_not_decoded(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    big, over = tmp_path / "bomb.png", tmp_path / "over.png"
    Image.new("L", (100, 100)).save(big)  # > 2x the limit: Pillow refuses to open it
    Image.new("L", (40, 40)).save(over)  # between 1x and 2x: a warning, which transferlab treats as an error
    assert "DecompressionBomb" in check_image(big)
    for path in (big, over):
        with pytest.raises(ImageReadError, match="decompression-bomb"):
            open_image(path)
    decoded = DecodedImages([big, over], max_side=48, threads=1)
    assert set(decoded.failed) == {str(big), str(over)} and not decoded.images


def test_scan_skips_each_bad_file_with_a_reason_and_keeps_the_rest(bad_data):
    root, expected = bad_data
    scan = scan_dataset(root, val_split=0.2, seed=0)
    decoded = DecodedImages([s.path for split in scan.splits.values() for s in split], max_side=48, threads=2)
    drop_failed(scan, decoded)
    skipped = {Path(p).name: why for p, why in scan.skipped}
    used = {s.path.name for split in scan.splits.values() for s in split}
    for name, outcome in expected.items():
        if outcome == "ok":
            assert name in used and name not in skipped, name
        else:
            assert name in skipped and name not in used, (name, skipped)
            assert outcome in skipped[name].lower(), (name, skipped[name])
    assert len(skipped) == sum(v != "ok" for v in expected.values())
    assert scan.total_counts() == {"digit_0": 12 + 8, "digit_1": 12}, "the loop must not pull in digit_1's images"
    summary = scan.summary()
    assert f"skipped {len(skipped)} " in summary and "zero.jpg: empty file" in summary


def test_train_cli_on_a_folder_with_bad_images(bad_data, tmp_path):
    root, expected = bad_data
    out = tmp_path / "run"
    cp = run_cli("train", root, "--out", out, "--strategy", "feature-extract", "--epochs", "1", *FAST_CLI)
    assert cp.returncode == 0 and "Traceback" not in cp.stderr, cp.stderr
    meta = json.loads((out / "model.json").read_text())
    skipped = {Path(p).name: why for p, why in meta["dataset"]["skipped"]}
    assert set(skipped) == {n for n, v in expected.items() if v != "ok"}
    counts = meta["dataset"]["counts"]
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 12 + 8 + 12
    check_run_folder_intact(out)


def test_walk_images_does_not_escape_through_a_link_to_a_parent(bad_data):
    root, _ = bad_data
    found = walk_images(root / "digit_0")
    assert not any("digit_1" in str(p) for p in found), found[:3]


def test_predict_csv_with_a_non_utf8_file_name(bad_data, trained_run, tmp_path, capsys):
    root, _ = bad_data
    image = os.fsdecode(os.path.join(os.fsencode(root / "digit_0"), b"latin1_\xe9\xff.png"))
    rc, err = main_in_process(capsys, "predict", image, "--model", trained_run, "--csv", tmp_path / "p.csv",
                              "--workers", "0")
    assert rc == 0, err
    assert (tmp_path / "p.csv").is_file()


# --- bad datasets ------------------------------------------------------------------------------------
def _dataset(tmp_path: Path, kind: str, tiny: Path) -> Path:
    root = tmp_path / kind
    png = sorted((tiny / "digit_0").glob("*.png"))
    if kind == "empty":
        root.mkdir()
    elif kind == "single_class":
        shutil.copytree(tiny / "digit_0", root / "digit_0")
    elif kind == "empty_class":
        shutil.copytree(tiny / "digit_0", root / "digit_0")
        (root / "digit_1").mkdir()
    elif kind == "only_broken_class":
        shutil.copytree(tiny / "digit_0", root / "digit_0")
        (root / "digit_1").mkdir()
        (root / "digit_1" / "a.jpg").write_bytes(b"")
    elif kind == "class_only_in_val":
        shutil.copytree(tiny, root / "train")
        shutil.copytree(tiny, root / "val")
        shutil.copytree(tiny / "digit_0", root / "val" / "digit_9")
    elif kind == "loose_images":
        root.mkdir()
        for p in png[:3]:
            shutil.copy(p, root)
    elif kind == "missing":
        pass
    return root


@pytest.mark.parametrize("kind,words", [
    ("empty", ["no class sub-folders"]),
    ("single_class", ["single class", "at least two"]),
    ("empty_class", ["digit_1", "no readable images"]),
    ("only_broken_class", ["digit_1", "no readable images"]),
    ("class_only_in_val", ["digit_9", "not in"]),
    ("loose_images", ["one sub-folder per class"]),
    ("missing", ["not found"]),
])
def test_bad_dataset_is_one_line_error(kind, words, tiny_data, tmp_path, capsys):
    data = _dataset(tmp_path, kind, tiny_data)
    out = tmp_path / "run"
    rc, err = main_in_process(capsys, "train", data, "--out", out, "--epochs", "1", *FAST_CLI)
    assert_one_line_error(rc, err, *words)
    if out.exists():  # a failed start leaves nothing that blocks the same command once the data is fixed
        assert not [p for p in out.rglob("*") if p.is_file()]


def test_bad_dataset_in_a_subprocess_exits_2_without_traceback(tiny_data, tmp_path):
    data = _dataset(tmp_path, "empty_class", tiny_data)
    cp = run_cli("train", data, "--out", tmp_path / "run", *FAST_CLI)
    assert_one_line_error(cp.returncode, cp.stderr, "digit_1", "no readable images")


def test_same_out_folder_works_after_a_failed_start(tiny_data, tmp_path, capsys):
    data = _dataset(tmp_path, "empty_class", tiny_data)
    out = tmp_path / "run"
    rc, err = main_in_process(capsys, "train", data, "--out", out, *FAST_CLI)
    assert rc == 2
    shutil.copytree(tiny_data / "digit_1", data / "digit_1", dirs_exist_ok=True)
    rc, err = main_in_process(capsys, "train", data, "--out", out, "--strategy", "feature-extract",
                              "--epochs", "1", *FAST_CLI)
    assert rc == 0, err
    assert (out / "model.json").is_file()


def test_nested_folders_and_one_image_classes_are_used(tiny_data, tmp_path):
    root = tmp_path / "nested"
    shutil.copytree(tiny_data / "digit_0", root / "digit_0" / "a" / "b")
    (root / "digit_1" / "x").mkdir(parents=True)
    shutil.copy(sorted((tiny_data / "digit_1").glob("*.png"))[0], root / "digit_1" / "x" / "only.png")
    scan = scan_dataset(root, val_split=0.2, seed=0)
    assert scan.total_counts() == {"digit_0": 12, "digit_1": 1}
    assert scan.counts("train")["digit_1"] == 1, "a one-image class keeps its image for training"
    run = train(root, strategy="feature-extract", out=tmp_path / "run", epochs=1, progress=False, **FAST)
    assert run.metrics["epochs_run"] == 1


def test_labels_file_that_does_not_match_the_model(trained_run, tiny_data, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    image = sorted(tiny_data.rglob("*.png"))[0]
    rc, err = main_in_process(capsys, "predict", image, "--model", trained_run, "--labels", labels)
    assert_one_line_error(rc, err, "3 labels", "2 outputs")
    cp = run_cli("predict", image, "--labels", labels)  # the ImageNet model: 1000 outputs
    assert_one_line_error(cp.returncode, cp.stderr, "3 labels", "1000 outputs")


# --- killed runs -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def reference_run(tiny_data, tmp_path_factory) -> Path:
    """The uninterrupted run every killed-and-resumed run must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "run"
    cp = run_cli("train", tiny_data, "--out", out, *KILL_CLI)
    assert cp.returncode == 0, cp.stderr
    return out


# KILL_CLI on tiny_data: 20 training images in batches of 16, so 2 batches per epoch and 6 in the run; the
# first checkpoint is written after batch 2 (the end of epoch 1)
RUN_BATCHES, FIRST_CHECKPOINT_AFTER = 6, 2
HOOK = Path(__file__).with_name("signal_at_step.py")


def hooked_train(signal_name: str, step: int, data: Path, out: Path, **popen) -> subprocess.Popen:
    """`transferlab train` on KILL_CLI that sends itself SIG<signal_name> just before training batch `step`."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(HOOK), signal_name, str(step), "train", str(data), "--out", str(out),
                             *KILL_CLI], env=env, **popen)


def kill_and_resume(data: Path, out: Path, reference: Path, step: int) -> str:
    """Start a training run, SIGKILL it just before training batch `step` (1..RUN_BATCHES), check the
    folder, resume (or restart) it, compare with `reference`. Returns what happened: "restarted" when
    the kill came before the first checkpoint, else "resumed"."""
    proc = hooked_train("KILL", step, data, out, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed at batch {step} ({proc.returncode}): {err}"
    assert not (out / "model.json").exists()  # killed mid-run: nothing final written yet
    check_run_folder_intact(out) if out.exists() else None
    last = out / "checkpoints" / "last.pt"
    if last.is_file():
        cp = run_cli("train", data, "--resume", out, "--device", "cpu", "--workers", "0", "--quiet")
        assert cp.returncode == 0 and "Traceback" not in cp.stderr, cp.stderr
        outcome = "resumed"
    else:
        cp = run_cli("train", data, "--resume", out, "--quiet")
        assert_one_line_error(cp.returncode, cp.stderr, "nothing to resume", "without --resume")
        cp = run_cli("train", data, "--out", out, *KILL_CLI)  # the same command again just works
        assert cp.returncode == 0 and "Traceback" not in cp.stderr, cp.stderr
        outcome = "restarted"
    check_run_folder_intact(out)
    assert same_weights(reference / "model.safetensors", out / "model.safetensors"), f"weights differ ({outcome})"
    assert (out / "metrics.csv").read_text().count("\n") == 4
    ref_rows = list(csv.DictReader((reference / "metrics.csv").open()))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in ref_rows]
    return outcome


# early: the first batch, before any checkpoint; checkpoint: the last batch of epoch 3, one optimizer step
# past epoch 2's checkpoint, in the middle of the fine-tuning phase: the resume must restore the
# optimizer, the schedule and the early stopping to replay the epoch exactly
@pytest.mark.parametrize("when, step, outcome", [("early", 1, "restarted"), ("checkpoint", 6, "resumed")])
def test_sigkill_then_resume_matches_the_uninterrupted_run(when, step, outcome, tiny_data, reference_run, tmp_path):
    assert kill_and_resume(tiny_data, tmp_path / "run", reference_run, step) == outcome


@pytest.mark.slow
def test_sigkill_at_random_points_twenty_times(tiny_data, reference_run, tmp_path):
    rng = random.Random(20261128)
    steps = [rng.randint(1, RUN_BATCHES) for _ in range(20)]
    outcomes = [kill_and_resume(tiny_data, tmp_path / f"run{i}", reference_run, step) for i, step in enumerate(steps)]
    assert outcomes == ["restarted" if s <= FIRST_CHECKPOINT_AFTER else "resumed" for s in steps]


def test_sigint_saves_and_exits_130(tiny_data, tmp_path):
    """Ctrl-C mid-way through epoch 2 (after epoch 1's checkpoint): exit 130, one line, the checkpoint
    intact and resumable."""
    out = tmp_path / "run"
    proc = hooked_train("INT", FIRST_CHECKPOINT_AFTER + 2, tiny_data, out, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    assert proc.returncode == 130, (proc.returncode, err)
    assert "interrupted" in err
    assert not (out / "model.json").exists()
    check_run_folder_intact(out)
    state = safe_torch_load(out / "checkpoints" / "last.pt")
    assert [row["epoch"] for row in state["history"] if row["epoch"] > 0] == [1]


class _CtrlCWhilePickled:
    """Sends SIGINT to this process while torch.save is half-way through writing."""

    def __reduce_ex__(self, protocol):
        signal.raise_signal(signal.SIGINT)
        return torch.zeros(1).__reduce_ex__(protocol)  # stored as a plain tensor, loadable with weights_only


def test_ctrl_c_in_the_middle_of_a_checkpoint_write_lets_the_write_finish(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, path)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2, "weights": torch.ones(1000), "late": _CtrlCWhilePickled()}, path)
    # the interrupt arrived after the rename: the new checkpoint is complete and nothing is left over
    assert safe_torch_load(path)["epoch"] == 2
    assert torch.equal(safe_torch_load(path)["weights"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- disk full / read-only output --------------------------------------------------------------------
def _fail_second_checkpoint(monkeypatch, err: int):
    real_replace = os.replace
    calls = []

    def replace(src, dst, *a, **kw):
        if str(dst).endswith("last.pt"):
            calls.append(dst)
            if len(calls) >= 2:
                raise OSError(err, os.strerror(err), str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("err", [errno.ENOSPC, pytest.param(errno.EROFS, marks=pytest.mark.slow)])
def test_write_failure_is_one_line_and_keeps_the_last_checkpoint(err, tiny_data, tmp_path, capsys, monkeypatch):
    _fail_second_checkpoint(monkeypatch, err)
    out = tmp_path / "run"
    rc, msg = main_in_process(capsys, "train", tiny_data, "--out", out, "--strategy", "feature-extract",
                              "--epochs", "2", *FAST_CLI)
    assert_one_line_error(rc, msg, os.strerror(err), "last.pt")
    monkeypatch.undo()
    state = safe_torch_load(out / "checkpoints" / "last.pt")
    assert len(state["history"]) == 1, "the checkpoint of epoch 1 must be intact"
    assert not [p for p in out.rglob("*.tmp")], "the failed temporary file is removed"
    check_run_folder_intact(out)
    rc, msg = main_in_process(capsys, "train", tiny_data, "--resume", out, "--quiet")
    assert rc == 0, msg


def mount_tmpfs(mnt: Path, size: str) -> Path:
    mnt.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    return mnt


@pytest.fixture
def mounts(tmp_path):
    made = []
    yield lambda name, size: made.append(mount_tmpfs(tmp_path / name, size)) or made[-1]
    for mnt in made:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_real_disk_full_during_training(tiny_data, mounts):
    out = mounts("disk", "34m") / "run"  # room for epoch 1 (best 13.7 MB + last 13.8 MB), not for epoch 2
    cp = run_cli("train", tiny_data, "--out", out, "--strategy", "feature-extract", "--epochs", "3", *FAST_CLI)
    assert_one_line_error(cp.returncode, cp.stderr, "No space left on device")
    assert len(safe_torch_load(out / "checkpoints" / "last.pt")["history"]) == 1
    check_run_folder_intact(out)


@pytest.mark.slow
def test_read_only_run_folder(trained_run, tiny_data, mounts):
    disk = mounts("disk", "128m")
    run = disk / "run"
    shutil.copytree(trained_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert subprocess.run(["mount", "-o", "remount,ro", str(disk)]).returncode == 0
    cp = run_cli("train", tiny_data, "--resume", run, "--device", "cpu", "--quiet")
    assert_one_line_error(cp.returncode, cp.stderr, "read-only")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    cp = run_cli("train", tiny_data, "--out", disk / "new", *FAST_CLI)
    assert_one_line_error(cp.returncode, cp.stderr, "read-only")


# --- untrusted files ---------------------------------------------------------------------------------
def _write_evil(path: Path, marker: Path, how: str) -> None:
    if how == "torch":
        torch.save({"weight": torch.zeros(2), "x": Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"weight": Evil(marker)}))


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_weights_file_with_code_is_refused(how, tiny_data, tmp_path, capsys):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    _write_evil(evil, marker, how)
    image = sorted(tiny_data.rglob("*.png"))[0]
    rc, err = main_in_process(capsys, "predict", image, "--weights", evil)
    assert_one_line_error(rc, err, "refused")
    rc, err = main_in_process(capsys, "train", tiny_data, "--weights", evil, "--out", tmp_path / "r", *FAST_CLI)
    assert_one_line_error(rc, err, "refused")
    assert not marker.exists(), "the pickle payload ran"


@pytest.mark.parametrize("with_meta", [True, False])
def test_tampered_last_checkpoint_is_refused_on_resume(with_meta, trained_run, tiny_data, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(trained_run, run)
    if not with_meta:
        (run / "model.json").unlink()
    _write_evil(run / "checkpoints" / "last.pt", marker, "torch")
    cp = run_cli("train", tiny_data, "--resume", run, "--quiet")
    assert_one_line_error(cp.returncode, cp.stderr, "refused", "last.pt")
    assert not marker.exists(), "the pickle payload ran"


def test_tampered_or_truncated_run_weights_are_refused(trained_run, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(trained_run, run)
    _write_evil(run / "model.safetensors", marker, "torch")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        transferlab.load(str(run))
    assert not marker.exists()
    data = (trained_run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        transferlab.load(str(run))
    (run / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(CheckpointError):
        transferlab.load(str(run))


def test_truncated_checkpoint_on_resume(trained_run, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100_000])
    rc, err = main_in_process(capsys, "train", tiny_data, "--resume", run, "--quiet")
    assert_one_line_error(rc, err, "corrupt or truncated", "last.pt")


def test_weights_for_another_architecture_name_the_layers(tmp_path, sample_photos, capsys):
    from transferlab.models import create_model

    other = tmp_path / "resnet18.pt"
    torch.save(create_model("resnet18", weights="none").state_dict(), other)
    rc, err = main_in_process(capsys, "predict", sample_photos["china"], "--weights", other)
    line = assert_one_line_error(rc, err, "does not fit", "shape mismatch")
    assert "blocks.stem.0.weight" in line and "missing" in line and "unexpected" in line


def test_weights_with_another_class_count(trained_run, tiny_data, tmp_path, capsys):
    """A run's weights (2 classes) as --weights for 2 other classes: backbone used, head fitted to the data."""
    from transferlab.models import create_model

    model = create_model("efficientnet_lite0", num_classes=5, weights=trained_run / "model.safetensors")
    assert model.num_classes == 5
    state = load_file(str(trained_run / "model.safetensors"))
    key = "blocks.stem.0.weight"
    assert torch.equal(model.state_dict()[key], state[key])


# --- numerical faults --------------------------------------------------------------------------------
def _nan_loss_from_epoch(monkeypatch, first_bad_epoch: int, every: bool = True):
    """Make the training loss NaN from an epoch on (every step) or on one step per epoch."""
    real = ClassificationTask.loss_fn
    epoch = {"n": 0, "step": 0}

    def loss_fn(self):
        base = real(self)

        def f(logits, y):
            loss = base(logits, y)
            if logits.requires_grad:
                epoch["step"] += 1
                bad = len(self.trainer.history) + 1 >= first_bad_epoch and (every or epoch["step"] % 3 == 1)
                if bad:
                    return loss * float("nan")
            return loss

        return f

    monkeypatch.setattr(ClassificationTask, "loss_fn", loss_fn)


def test_nan_steps_are_skipped_and_training_goes_on(tiny_data, tmp_path, monkeypatch):
    _nan_loss_from_epoch(monkeypatch, 1, every=False)
    run = train(tiny_data, strategy="feature-extract", out=tmp_path / "run", epochs=2, progress=False, **FAST)
    assert len(run.history) == 2 and all(np.isfinite(r["train_loss"]) for r in run.history)
    check_run_folder_intact(tmp_path / "run")


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    _nan_loss_from_epoch(monkeypatch, 2)
    out = tmp_path / "run"
    rc, err = main_in_process(capsys, "train", tiny_data, "--out", out, "--strategy", "feature-extract",
                              "--epochs", "3", *FAST_CLI)
    assert_one_line_error(rc, err, "lower --lr")
    state = safe_torch_load(out / "checkpoints" / "last.pt")
    assert len(state["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    check_run_folder_intact(out)
    monkeypatch.undo()
    rc, err = main_in_process(capsys, "train", tiny_data, "--resume", out, "--quiet")
    assert rc == 0, err


def test_absurd_learning_rate_is_reported(tiny_data, tmp_path, capsys):
    rc, err = main_in_process(capsys, "train", tiny_data, "--out", tmp_path / "run", "--strategy",
                              "feature-extract", "--epochs", "2", "--lr", "1e6", *FAST_CLI)
    assert_one_line_error(rc, err, "learning rate")


def test_config_errors_are_one_line(tiny_data, tmp_path, capsys):
    for args, word in [(["--lr", "fast"], "--lr"), (["--lr", "-1"], "positive"), (["--batch-size", "0"], "at least")]:
        rc, err = main_in_process(capsys, "train", tiny_data, "--out", tmp_path / "r", *FAST_CLI, *args)
        assert_one_line_error(rc, err, word)


def test_run_weights_with_another_class_count_name_the_head(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["num_classes"], meta["classes"] = 3, ["a", "b", "c"]
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*\(2, \d+\) vs \(3, \d+\)") as e:
        transferlab.load(str(run))
    assert "model.safetensors does not fit" in str(e.value)


def test_a_run_killed_between_its_first_best_weights_and_first_checkpoint_can_be_started_again(tmp_path):
    """Epoch 1 writes checkpoints/best.safetensors, then last.pt: a kill in between leaves a folder
    that --resume cannot use, so a plain restart must accept it (the 20-kill slow test found this)."""
    from transferlab.runs.folder import prepare_run_dir
    from transferlab.core.io import save_weights

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_weights({"w": torch.zeros(2)}, run / "checkpoints" / "best.safetensors")
    (run / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"partial")
    with pytest.raises(TransferlabError, match="nothing to resume"):
        transferlab.train(tmp_path / "unused", out=run, resume=True)
    prepare_run_dir(run)
    assert [p for p in run.rglob("*") if p.is_file()] == []

    # anything else in the folder (a user's file, a finished run) is never removed
    save_weights({"w": torch.zeros(2)}, run / "checkpoints" / "best.safetensors")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(TransferlabError, match="already exists and is not empty"):
        prepare_run_dir(run)
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoints" / "best.safetensors").is_file()
