"""Using a finished run: load, predict through the CLI, evaluate, export with parity."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

import transferlab
from transferlab.inference.evaluation import confusion_matrix, per_class_report
from transferlab.api import export


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "transferlab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_predict_cli_accepts_a_run_folder(trained_run, digits_folder):
    images = sorted(digits_folder.glob("digit_1/*.png"))[:3]
    result = cli("predict", *images, "--model", trained_run, "--top", "2", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert len(records) == 3
    assert all(r["status"] == "ok" and r["top"][0]["label"].startswith("digit_") for r in records)


def test_loaded_run_predicts_like_the_trained_weights(trained_run, digits_folder):
    clf = transferlab.load(str(trained_run))
    assert clf.preprocessing.input_size == 48
    image = sorted(digits_folder.glob("digit_0/*.png"))[0]
    x = clf.transform(transferlab.data.images.open_image(image)).unsqueeze(0)
    probs = torch.softmax(clf.logits(x), 1)[0]
    record = clf.predict([image], top=1, progress=False)[0]
    assert record["top"][0]["index"] == int(probs.argmax())
    assert record["top"][0]["prob"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_evaluate_cli_reports_metrics_and_confusion(trained_run, digits_folder, tmp_path):
    png = tmp_path / "cm.png"
    result = cli("evaluate", trained_run, digits_folder, "--plot", png)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "precision" in result.stdout and "confusion matrix" in result.stdout
    assert png.stat().st_size > 1000
    data = json.loads(cli("evaluate", trained_run, digits_folder, "--json").stdout)
    assert data["images"] == 160
    assert np.array(data["confusion"]).sum() == 160
    assert data["accuracy"] > 0.6
    assert len(data["per_class"]) == 4


def test_confusion_and_per_class_metrics_by_hand():
    y_true = torch.tensor([0, 0, 0, 1, 1, 2])
    y_pred = torch.tensor([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    report = {r["class"]: r for r in per_class_report(cm, ["a", "b", "c"])}
    assert report["a"]["precision"] == pytest.approx(1.0) and report["a"]["recall"] == pytest.approx(2 / 3)
    assert report["b"]["precision"] == pytest.approx(0.5) and report["b"]["recall"] == pytest.approx(0.5)
    assert report["c"]["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_reproduces_pytorch_outputs(trained_run, tmp_path, fmt):
    out = tmp_path / ("model.pt" if fmt == "torchscript" else "model.onnx")
    result = export(str(trained_run), format=fmt, out=out)
    assert result.max_abs_diff < 1e-4 and result.path == out
    sidecar = json.loads((tmp_path / (out.name + ".json")).read_text())
    assert sidecar["preprocessing"]["input_size"] == 48 and sidecar["classes"][0] == "digit_0"
    clf = transferlab.load(str(trained_run))
    x = torch.randn(3, 3, 48, 48)  # another batch size than the export's example
    expected = clf.logits(x).numpy()
    if fmt == "onnx":
        got = ort.InferenceSession(str(out)).run(None, {"image": x.numpy()})[0]
    else:
        got = torch.jit.load(str(out))(x).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_export_cli_prints_the_difference(trained_run, tmp_path):
    result = cli("export", trained_run, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert result.returncode == 0, result.stderr
    assert "max abs diff vs PyTorch" in result.stdout
