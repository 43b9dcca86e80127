"""ONNX export agrees with PyTorch through onnxruntime."""
import numpy as np
import pytest

from transferlab.runs.folder import read_meta
from transferlab.detect.detector import load_detector
from transferlab.detect.export import export_onnx

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", ["blazeface_front", "blazeface_back"])
def test_pretrained_export_parity(tmp_path, name):
    result = export_onnx(load_detector(name), tmp_path / f"{name}.onnx")
    print(f"{name}: onnxruntime max abs diff {result.max_abs_diff:.2e}")
    assert result.max_abs_diff < 1e-3


def test_fine_tuned_export_has_dynamic_batch(tmp_path, trained_run):
    result = export_onnx(load_detector(trained_run.path), tmp_path / "ft.onnx")
    assert result.max_abs_diff < 1e-3
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    reg, logits = session.run(None, {"image": np.zeros((3, 3, 128, 128), np.float32)})
    assert reg.shape == (3, 896, 16) and logits.shape == (3, 896)


def test_int8_export_records_ap_before_and_after(tmp_path, trained_run):
    import json

    result = export_onnx(load_detector(trained_run.path), tmp_path / "ft-int8.onnx", quantize="int8",
                         calibration=32, max_drop=100.0, speed_seconds=0.05)
    q = result.quantization
    assert q["metric"] == "ap50" and q["validation"]["images"] == read_meta(trained_run.path)["data"]["val_images"]
    assert 0 <= q["quantized"]["ap50"] <= 1 and q["drop_points"] <= 5.0, q
    assert q["quantized"]["size_bytes"] < q["float"]["size_bytes"]
    assert json.loads((tmp_path / "quantization.json").read_text())["int8"]["drop_points"] == q["drop_points"]
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    reg, logits = session.run(None, {"image": np.zeros((3, 3, 128, 128), np.float32)})
    assert reg.shape == (3, 896, 16) and logits.shape == (3, 896)
