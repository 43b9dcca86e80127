"""Prediction through the CLI and the Python API with the real EfficientNet-Lite0 ImageNet weights."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import transferlab
from transferlab.cli.main import main
from transferlab.core.errors import TransferlabError



@pytest.fixture(scope="module")
def clf():
    return transferlab.load("efficientnet_lite0")


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_mode_zoo(folder, photo):
    """The same photo in many modes and containers, plus broken files. Returns (good, bad) names."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(photo).convert("RGB")
    base.convert("L").save(folder / "l.png")
    la = base.convert("LA")
    la.putalpha(200)
    la.save(folder / "la.png")
    p = base.convert("P", palette=Image.ADAPTIVE, colors=64)
    p.save(folder / "p.png", transparency=0)
    rgba = base.convert("RGBA")
    rgba.putalpha(235)
    rgba.save(folder / "rgba.png")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    arr16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(arr16).save(folder / "i16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    base.transpose(Image.Transpose.ROTATE_90).save(folder / "exif6.jpg", exif=exif.tobytes())
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "one.png")
    frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=40)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a picture\n")
    good = ["anim.gif", "cmyk.jpg", "exif6.jpg", "i16.png", "l.png", "la.png", "one.png", "p.png", "rgba.png"]
    return good, ["empty.jpg", "text.jpg"]


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_top3_table(sample_photos):
    proc = subprocess.run(
        [shutil.which("transferlab") or "transferlab", "predict", sample_photos["flower"], sample_photos["china"],
         "--top", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    i = lines.index(str(sample_photos["flower"]))
    assert lines[i + 1].split()[:2] == ["1.", "daisy"]
    assert len([line for line in lines[i + 1:i + 4] if line.lstrip()[:2] in ("1.", "2.", "3.")]) == 3
    j = lines.index(str(sample_photos["china"]))
    assert lines[j + 1].split()[:2] == ["1.", "palace"]
    assert "2 image(s) labelled, 0 unreadable" in proc.stdout


def test_cli_json(capsys, sample_photos):
    code, out, _ = run_cli(capsys, "predict", sample_photos["flower"], sample_photos["china"], "--top", "4", "--json")
    assert code == 0
    records = json.loads(out)
    assert [r["path"] for r in records] == [str(sample_photos["flower"]), str(sample_photos["china"])]
    assert all(r["status"] == "ok" and len(r["top"]) == 4 for r in records)
    probs = [t["prob"] for t in records[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert records[0]["top"][0] == {"label": "daisy", "index": 985, "prob": pytest.approx(probs[0])}


def test_cli_csv(capsys, tmp_path, sample_photos):
    out_csv = tmp_path / "out" / "pred.csv"
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    code, _, err = run_cli(capsys, "predict", sample_photos["china"], bad, "--top", "2", "--csv", out_csv)
    assert code == 0 and "wrote 2 record(s)" in err
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["rank"] for r in rows if r["status"] == "ok"] == ["1", "2"]
    assert rows[0]["label"] == "palace" and 0 < float(rows[0]["prob"]) <= 1
    bad_rows = [r for r in rows if r["path"] == str(bad)]
    assert len(bad_rows) == 1 and "not an image" in bad_rows[0]["status"]


def test_cli_custom_labels(capsys, tmp_path, sample_photos):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing_{i}\n" for i in range(1000)))
    code, out, _ = run_cli(capsys, "predict", sample_photos["flower"], "--labels", labels, "--json", "--top", "1")
    assert code == 0
    assert json.loads(out)[0]["top"][0]["label"] == "thing_985"
    as_json = tmp_path / "labels.json"
    as_json.write_text(json.dumps([f"j{i}" for i in range(1000)]))
    code, out, _ = run_cli(capsys, "predict", sample_photos["china"], "--labels", as_json, "--json", "--top", "1")
    assert json.loads(out)[0]["top"][0]["label"] == "j698"


def test_cli_wrong_length_labels_is_clean_error(capsys, tmp_path, sample_photos):
    labels = tmp_path / "short.txt"
    labels.write_text("cat\ndog\n\nbird\n")
    code, out, err = run_cli(capsys, "predict", sample_photos["flower"], "--labels", labels)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "3 labels for a model with 1000 outputs" in err
    code, _, err = run_cli(capsys, "predict", sample_photos["flower"], "--labels", tmp_path / "nope.txt")
    assert code == 2 and "labels file not found" in err


def test_cli_folder_recursion_with_corrupt_file(capsys, tmp_path, sample_photos):
    root = tmp_path / "album"
    (root / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(sample_photos["flower"], root / "flower.jpg")
    shutil.copy(sample_photos["china"], root / "sub" / "deeper" / "china.jpg")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    code, out, _ = run_cli(capsys, "predict", root, "--json", "--top", "1")
    assert code == 0
    records = {os.path.relpath(r["path"], root): r for r in json.loads(out)}
    assert set(records) == {"flower.jpg", "sub/broken.jpg", "sub/deeper/china.jpg"}
    assert records["flower.jpg"]["top"][0]["label"] == "daisy"
    assert records["sub/deeper/china.jpg"]["top"][0]["label"] == "palace"
    assert records["sub/broken.jpg"]["status"] != "ok" and records["sub/broken.jpg"]["top"] == []
    code, out, _ = run_cli(capsys, "predict", root, "--top", "1")
    assert "ERROR:" in out and "2 image(s) labelled, 1 unreadable" in out


def test_cli_glob(capsys, tmp_path, sample_photos):
    shutil.copy(sample_photos["flower"], tmp_path / "a.jpg")
    shutil.copy(sample_photos["china"], tmp_path / "b.jpg")
    Image.open(sample_photos["china"]).save(tmp_path / "c.png")
    code, out, _ = run_cli(capsys, "predict", str(tmp_path / "*.jpg"), "--json", "--top", "1")
    assert code == 0
    assert [os.path.basename(r["path"]) for r in json.loads(out)] == ["a.jpg", "b.jpg"]


def test_cli_all_unreadable_exits_1_and_missing_input_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    code, out, _ = run_cli(capsys, "predict", bad)
    assert code == 1 and "0 image(s) labelled, 1 unreadable" in out
    code, _, err = run_cli(capsys, "predict", tmp_path / "missing.jpg")
    assert code == 2 and "no such file" in err


def test_python_m_help():
    proc = subprocess.run([sys.executable, "-m", "transferlab", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "predict" in proc.stdout and "models" in proc.stdout
    assert proc.stdout.startswith("usage: transferlab")


def test_cli_models(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == set(transferlab.list_models()) | {"blazeface_front", "blazeface_back"}
    assert rows["blazeface_back"]["task"] == "detect" and rows["resnet18"]["task"] == "classify"
    assert rows["blazeface_front"]["input_size"] == 128 and rows["blazeface_front"]["params"] > 0
    assert {"resnet18", "vgg16", "densenet121", "inception_v3", "efficientnet_lite2"} <= set(rows)
    assert rows["efficientnet_lite0"]["weights"] == "available"
    assert rows["resnet18"]["weights"] == "needs download"
    assert rows["inception_v3"]["input_size"] == 299
    assert 11.6e6 < rows["resnet18"]["params"] < 11.8e6


# --- Python API -----------------------------------------------------------------------------------

def test_probabilities_over_all_classes(clf, sample_photos):
    records = transferlab.predict([sample_photos["flower"]], model=clf, top=1000, num_workers=0)
    top = records[0]["top"]
    assert len(top) == 1000 and len({t["index"] for t in top}) == 1000
    assert sum(t["prob"] for t in top) == pytest.approx(1.0, abs=1e-4)
    assert top[0]["label"] == "daisy"
    assert transferlab.predict([sample_photos["flower"]], model=clf, top=5000, num_workers=0)[0]["top"] == top


def test_mode_zoo_all_predicted_broken_reported(clf, tmp_path, sample_photos):
    good, bad = write_mode_zoo(tmp_path / "zoo", sample_photos["flower"])
    os.symlink(tmp_path / "zoo", tmp_path / "zoo" / "loop")
    records = clf.predict(tmp_path / "zoo", top=3, num_workers=0)
    by_name = {os.path.basename(r["path"]): r for r in records}
    assert sorted(by_name) == sorted(good + bad)
    for name in good:
        assert by_name[name]["status"] == "ok", name
        assert len(by_name[name]["top"]) == 3
    for name in bad:
        assert "not an image" in by_name[name]["status"]
    # colour-preserving copies of the daisy photo are still daisies
    for name in ("rgba.png", "exif6.jpg", "anim.gif", "cmyk.jpg"):
        assert by_name[name]["top"][0]["label"] == "daisy", (name, by_name[name]["top"])


def test_workers_give_same_results(clf, tmp_path, sample_photos):
    good, bad = write_mode_zoo(tmp_path / "zoo", sample_photos["china"])
    a = clf.predict(tmp_path / "zoo", top=2, num_workers=0, batch_size=4)
    b = clf.predict(tmp_path / "zoo", top=2, num_workers=2, batch_size=3)
    assert [r["path"] for r in a] == [r["path"] for r in b]
    assert [r["status"] for r in a] == [r["status"] for r in b]
    for ra, rb in zip(a, b):
        assert [t["index"] for t in ra["top"]] == [t["index"] for t in rb["top"]]
        for ta, tb in zip(ra["top"], rb["top"]):
            assert ta["prob"] == pytest.approx(tb["prob"], abs=1e-4)


def test_decompression_bomb_reported(clf, tmp_path, monkeypatch, sample_photos):
    shutil.copy(sample_photos["flower"], tmp_path / "ok.jpg")
    Image.new("RGB", (3000, 3000), (9, 9, 9)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)
    records = {os.path.basename(r["path"]): r for r in clf.predict(tmp_path, top=1, num_workers=0)}
    assert "too large" in records["bomb.png"]["status"]
    assert records["ok.jpg"]["top"][0]["label"] == "daisy"


def test_classifier_rejects_wrong_label_count(clf):
    with pytest.raises(TransferlabError, match="2 labels"):
        transferlab.Classifier(clf.model, ["a", "b"], clf.preprocessing)


# --- speed paths must not change results ------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "inception_v3", "mobilenet_v2"])
def test_fast_eval_transform_matches_reference(name, sample_photos):
    from transferlab.inference.classifier import EvalTransform
    from transferlab.models import get_spec

    pre = get_spec(name).preprocessing
    fast, ref = EvalTransform(pre), pre.eval_transform()
    base = Image.open(sample_photos["flower"]).convert("RGB")
    for size in [(640, 427), (427, 640), (300, 300), (pre.resize, pre.resize), (257, 400), (1001, 999), (100, 50),
                 (1, 1), (2000, 1500)]:
        img = base.resize(size)
        x, y = fast(img), ref(img)
        assert x.shape == y.shape == (3, pre.input_size, pre.input_size), size
        assert x.dtype == torch.float32
        # Pillow resamples in fixed point: resampling only the crop window may move a pixel by a few levels
        levels = ((x - y).abs() * torch.tensor(pre.std).view(3, 1, 1) * 255).max()
        assert levels <= 3.01, (size, float(levels))
        assert (x - y).abs().mean() < 0.01, size
    grey = base.convert("L")  # not RGB: the reference transform is used
    assert torch.equal(fast(grey), ref(grey))


def test_large_jpeg_decoded_at_reduced_scale_predicts_the_same(clf, tmp_path, sample_photos):
    from transferlab.data.images import open_image

    big = tmp_path / "big.jpg"
    Image.open(sample_photos["flower"]).resize((2560, 1708), Image.BICUBIC).save(big, quality=95)
    full = open_image(big)
    small = open_image(big, min_size=256)
    assert full.size == (2560, 1708)
    assert small.size == (1280, 854) and min(small.size) >= 2 * 256  # DCT-scaled by 1/2, margin kept
    assert open_image(big, min_size=600).size == (2560, 1708)  # not enough margin: full decode
    png = tmp_path / "big.png"
    Image.open(big).save(png)
    assert open_image(png, min_size=256).size == (854, 570)  # decoded whole, then box-averaged by 3
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rot.jpg"
    Image.open(big).save(rotated, exif=exif.tobytes(), quality=95)
    assert open_image(rotated, min_size=256).size == (854, 1280)

    fast = clf.predict([big], top=5, num_workers=0)[0]["top"]
    x = clf.preprocessing.eval_transform()(full).unsqueeze(0)
    with torch.inference_mode():
        exact = torch.softmax(clf.model(x), 1)[0]
    assert fast[0]["label"] == "daisy" and fast[0]["index"] == int(exact.argmax())
    for t in fast:
        assert t["prob"] == pytest.approx(float(exact[t["index"]]), abs=0.02)
