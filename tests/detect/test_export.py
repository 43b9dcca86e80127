"""ONNX export agrees with PyTorch through onnxruntime."""
import numpy as np
import pytest

from transferlab.detect.detector import load_detector
from transferlab.detect.export import export_onnx

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", ["blazeface_front", "blazeface_back"])
def test_pretrained_export_parity(tmp_path, name):
    result = export_onnx(load_detector(name), tmp_path / f"{name}.onnx")
    print(f"{name}: onnxruntime max abs diff {result.max_abs_diff:.2e}")
    assert result.max_abs_diff < 1e-3


def test_fine_tuned_export_has_dynamic_batch(tmp_path, trained_run):
    result = export_onnx(load_detector(trained_run.run_dir), tmp_path / "ft.onnx")
    assert result.max_abs_diff < 1e-3
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    reg, logits = session.run(None, {"image": np.zeros((3, 3, 128, 128), np.float32)})
    assert reg.shape == (3, 896, 16) and logits.shape == (3, 896)
