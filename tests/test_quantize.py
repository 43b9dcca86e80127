"""Quantized exports (issue 17): int8 and fp16 ONNX models of a trained run, measured at export time,
refused when they cost accuracy, and used by predict only when asked."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.api import export, load
from transferlab.cli.main import main
from transferlab.data.folders import scan_dataset
from transferlab.deploy.runtime import cpu_session
from transferlab.inference.export import load_tensors

FAST = {"speed_seconds": 0.05}  # the images/s figures are the bench's business, not these tests'


@pytest.fixture()
def run_copy(trained_run, tmp_path) -> Path:
    """The shared run, copied: exports here do not change it for other tests."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def validation_top1(run: Path):
    """(PyTorch top-1, preprocessed images) on the run's own validation split."""
    clf = load(str(run))
    meta = clf.meta
    scan = scan_dataset(meta["dataset"]["root"], meta["config"]["val_split"], meta["config"]["seed"])
    x, _, skipped = load_tensors(scan.splits["val"], clf.transform, clf.preprocessing.resize)
    assert not skipped and len(x) >= 20
    with torch.inference_mode():
        return clf.model.eval()(x).argmax(1).numpy(), x.numpy()


@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_quantized_export_agrees_with_pytorch_and_writes_its_report(run_copy, mode):
    result = export(str(run_copy), format="onnx", quantize=mode, **FAST)
    assert result.path == run_copy / f"model-{mode}.onnx" and result.path.is_file()
    expected, x = validation_top1(run_copy)
    got = np.concatenate([cpu_session(result.path).run(["logits"], {"image": x[i:i + 16]})[0]
                          for i in range(0, len(x), 16)]).argmax(1)
    assert (got == expected).mean() >= 0.98
    report = json.loads((run_copy / "quantization.json").read_text())[mode]
    assert report == {k: v for k, v in result.quantization.items() if k != "report"}
    assert report["validation"]["images"] == len(x)
    assert report["agreement"] >= 0.98 and report["accuracy_drop_points"] <= 1.0
    assert report["quantized"]["size_bytes"] < report["float"]["size_bytes"] * (0.35 if mode == "int8" else 0.6)
    assert set(report["quantized"]["images_per_s"]) == {"1", "32"}
    if mode == "int8":
        assert report["calibration"]["method"] == "percentile" and report["calibration"]["images"] > 0
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["classes"] == load(str(run_copy)).classes and sidecar["quantization"]["mode"] == mode
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def _split_dataset(root: Path, digits: Path, train_image) -> Path:
    """train/ with images from `train_image(source path)`, val/ with the real digits."""
    for class_dir in sorted(p for p in digits.iterdir() if p.is_dir()):
        for split in ("train", "val"):
            (root / split / class_dir.name).mkdir(parents=True)
        for i, f in enumerate(sorted(class_dir.glob("*.png"))):
            if i % 4 == 0:
                shutil.copy(f, root / "val" / class_dir.name / f.name)
            else:
                train_image(f, root / "train" / class_dir.name / f.name)
    return root


def test_max_drop_zero_refuses_a_real_drop_and_writes_nothing(run_copy, digits_folder, tmp_path, capsys):
    # calibrated on black images, every activation range is wrong for real digits: a real drop
    def black(src, dst):
        Image.new("L", (32, 32)).save(dst)

    data = _split_dataset(tmp_path / "black", digits_folder, black)
    before = sorted(p.name for p in run_copy.iterdir())
    code = main(["export", str(run_copy), "--quantize", "int8", "--max-drop", "0", "--data", str(data),
                 "--calibration", "16"])
    err = capsys.readouterr().err
    assert code == 2
    assert "accuracy points" in err and "--max-drop 0" in err and "nothing was written" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run_copy.iterdir()) == before  # no model, no sidecar, no report, no temp


def test_corrupt_calibration_image_is_skipped_and_reported(run_copy, digits_folder, tmp_path):
    def copy(src, dst):
        shutil.copy(src, dst)

    data = _split_dataset(tmp_path / "data", digits_folder, copy)
    bad = data / "train" / "digit_0" / "truncated.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad)
    bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])  # passes the folder scan, fails to decode
    result = export(str(run_copy), quantize="int8", data=str(data), calibration=200, max_drop=100, **FAST)
    skipped = result.quantization["calibration"]["skipped"]
    assert [p for p, _ in skipped] == [str(bad)] and "unreadable" in skipped[0][1]
    assert json.loads((run_copy / "quantization.json").read_text())["int8"]["calibration"]["skipped"] == skipped


def test_predict_uses_the_int8_export_only_when_asked(run_copy, digits_folder, capsys):
    clf = load(str(run_copy))
    images = sorted((digits_folder / "digit_2").glob("*.png"))[:12]
    assert main(["predict", *map(str, images), "--model", str(run_copy), "--backend", "onnxruntime-int8"]) == 2
    assert "transferlab export" in capsys.readouterr().err
    assert clf.predict(images, max_drop=5.0, backend="auto") and clf.last_backend != "onnxruntime-int8"  # none yet
    export(str(run_copy), quantize="int8", **FAST)
    clf = load(str(run_copy))
    float_records = clf.predict(images, backend="torch")
    assert clf.last_backend == "torch"
    int8_records = clf.predict(images, backend="onnxruntime-int8")
    assert clf.last_backend == "onnxruntime-int8"
    assert [r.keys() for r in int8_records] == [r.keys() for r in float_records]
    agree = np.mean([a["top"][0]["index"] == b["top"][0]["index"] for a, b in zip(int8_records, float_records)])
    assert agree >= 0.9
    recorded = json.loads((run_copy / "quantization.json").read_text())["int8"]["accuracy_drop_points"]
    fresh = load(str(run_copy))
    fresh.predict(images, max_drop=recorded - 0.5)  # a stricter threshold than the recorded drop: float
    assert fresh.last_backend != "onnxruntime-int8"
    fresh.predict(images, max_drop=recorded + 0.5)
    assert fresh.last_backend == "onnxruntime-int8"


def test_quantize_option_errors_are_one_line(trained_run, capsys):
    assert main(["export", str(trained_run), "--format", "torchscript", "--quantize", "int8",
                 "--out", "/nonexistent/x.pt"]) == 2
    assert "--quantize applies to --format onnx" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--calibration-method", "entropy"]) == 2
    assert "only with --quantize" in capsys.readouterr().err
    assert main(["export", "efficientnet_lite0", "--quantize", "int8", "--out", "/nonexistent/x.onnx"]) == 2
    assert "--data FOLDER" in capsys.readouterr().err
