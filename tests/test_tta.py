"""Test-time augmentation (issue 29): one forward for every engine and verb, so evaluate, predict and
serve give the same records; a run trained with --tta on predicts with it; the page says so."""
from __future__ import annotations

import json

import httpx
import pytest
import torch
from torch import nn

from transferlab.api import evaluate, load, predict, train
from transferlab.cli.main import main as cli_main
from transferlab.core.errors import TransferlabError
from transferlab.inference.tta import mirrored

from test_serve import LiveServer  # noqa: E402  (tests/ is on sys.path)


def test_mirrored_averages_the_batch_and_its_mirror():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = (net(x) + net(x.flip(-1))) / 2
        assert torch.allclose(mirrored(net)(x), expected)
        symmetric = torch.cat([x[..., :4], x[..., :4].flip(-1)], dim=-1)  # its own mirror: TTA changes nothing
        assert torch.allclose(mirrored(net)(symmetric), net(symmetric), atol=1e-6)
        assert not torch.allclose(mirrored(net)(x), net(x))


def test_evaluate_and_predict_agree_with_tta_on_every_engine(trained_run, digits_folder):
    paths = sorted(digits_folder.rglob("*.png"))  # a folder without splits: evaluate scores every image
    clf = load(str(trained_run), tta=True)
    torch_records = clf.predict(paths, top=4, backend="torch", progress=False)
    onnx_records = clf.predict(paths[::5], top=4, backend="onnxruntime", progress=False)
    plain = load(str(trained_run)).predict(paths, top=4, backend="torch", progress=False)
    for a, b in zip(torch_records[::5], onnx_records):
        assert a["top"][0]["label"] == b["top"][0]["label"]
        assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=1e-4)
    assert any(abs(a["top"][0]["prob"] - c["top"][0]["prob"]) > 1e-4 for a, c in zip(torch_records, plain))
    right = sum(r["top"][0]["label"] == p.parent.name for r, p in zip(torch_records, paths))
    result = evaluate(str(trained_run), digits_folder, progress=False, tta=True)
    assert result["images"] == len(paths) and result["accuracy"] == pytest.approx(right / len(paths))


def test_a_run_trained_with_tta_predicts_with_it_unless_told_otherwise(digits_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", str(digits_folder), "--strategy", "feature-extract", "--epochs", "1",
                     "--image-size", "48", "--tta", "on", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "model.json").read_text())["tta"] is True
    image = str(next((digits_folder / "digit_1").glob("*.png")))
    on = predict(image, model=str(out))[0]["top"][0]["prob"]
    assert load(str(out)).tta is True
    capsys.readouterr()
    assert cli_main(["predict", image, "--model", str(out), "--tta", "off", "--json"]) == 0
    off = json.loads(capsys.readouterr().out)[0]["top"][0]["prob"]
    assert on != pytest.approx(off, abs=1e-6)
    assert predict(image, model=str(out), tta=False)[0]["top"][0]["prob"] == pytest.approx(off, abs=1e-6)


def test_the_server_predicts_with_tta_and_says_so(trained_run, digits_folder):
    from transferlab.serve import create_app

    image = next((digits_folder / "digit_3").glob("*.png"))
    expected = predict(str(image), model=str(trained_run), tta=True, top=4)[0]
    with LiveServer(create_app([trained_run], tta=True)) as live:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            (described,) = client.get("/api/models").json()
            assert described["tta"] is True
            r = client.post(f"/api/models/{trained_run.name}/predict", params={"top": 4},
                            files=[("images", (image.name, image.read_bytes(), "image/png"))])
    (record,) = r.json()
    assert record["top"][0]["label"] == expected["top"][0]["label"]
    assert record["top"][0]["prob"] == pytest.approx(expected["top"][0]["prob"], abs=1e-3)


def test_tta_for_a_detector_is_refused_in_one_line():
    with pytest.raises(TransferlabError, match="--tta applies to classifiers"):
        load("blazeface_front", tta=True)
