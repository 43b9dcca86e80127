"""The ONNX Runtime predict engine: same labels and probabilities as PyTorch, rebuilt when weights change."""
from __future__ import annotations

import os

import pytest
import torch

import transferlab
from transferlab.deploy import runtime
from transferlab.cli.main import main
from transferlab.core.errors import TransferlabError
from tests.test_predict import write_mode_zoo


@pytest.fixture(scope="module")
def clf():
    return transferlab.load("efficientnet_lite0")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, sample_photos):
    folder = tmp_path_factory.mktemp("zoo")
    good, bad = write_mode_zoo(folder, sample_photos["flower"])
    return folder, good, bad


def by_name(records):
    return {os.path.basename(r["path"]): r for r in records}


def test_onnxruntime_gives_pytorch_labels_and_probabilities(clf, zoo):
    folder, good, bad = zoo
    a = by_name(clf.predict(folder, top=5, num_workers=0, backend="torch"))
    b = by_name(clf.predict(folder, top=5, num_workers=2, batch_size=3, backend="onnxruntime"))
    assert sorted(a) == sorted(b) == sorted(good + bad)
    for name in good:
        assert b[name]["status"] == "ok"
        assert [t["index"] for t in a[name]["top"]] == [t["index"] for t in b[name]["top"]], name
        for ta, tb in zip(a[name]["top"], b[name]["top"]):
            assert tb["prob"] == pytest.approx(ta["prob"], abs=1e-4)
    for name in bad:  # unreadable files are reported by either engine, the rest still predicted
        assert b[name]["status"] == a[name]["status"] != "ok"
    assert b["rgba.png"]["top"][0]["label"] == "daisy"


def test_engine_is_reused_and_rebuilt_when_the_weights_change(sample_photos):
    torch.manual_seed(0)
    net = transferlab.create_model("resnet18", num_classes=3, weights="none")
    clf = transferlab.Classifier(net, ["a", "b", "c"], net.preprocessing)
    first = clf.onnx_forward(1)
    assert clf.onnx_forward(1) is first
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        clf.model.eval()
        torch.testing.assert_close(first(x), clf.model(x), atol=1e-4, rtol=1e-4)
        for p in clf.model.parameters():
            p.add_(0.01)
        second = clf.onnx_forward(1)
        assert second is not first
        torch.testing.assert_close(second(x), clf.model(x), atol=1e-4, rtol=1e-4)
    # a cached engine makes 'auto' choose it even for a single image
    rec_auto = clf.predict([sample_photos["flower"]], top=3, num_workers=0)
    rec_torch = clf.predict([sample_photos["flower"]], top=3, num_workers=0, backend="torch")
    assert [t["index"] for t in rec_auto[0]["top"]] == [t["index"] for t in rec_torch[0]["top"]]


def test_auto_picks_onnxruntime_on_cpu_for_large_jobs_only():
    cpu = torch.device("cpu")
    assert runtime.resolve_backend("auto", cpu, runtime.ONNX_MIN_IMAGES) == "onnxruntime"
    assert runtime.resolve_backend("auto", cpu, 3) == "torch"
    assert runtime.resolve_backend("auto", cpu, 3, engine_ready=True) == "onnxruntime"
    assert runtime.resolve_backend("auto", torch.device("cuda"), 10_000) == "torch"
    assert runtime.resolve_backend("torch", cpu, 10_000) == "torch"


def test_backend_errors_are_one_line(monkeypatch):
    with pytest.raises(TransferlabError, match="--backend must be one of"):
        runtime.resolve_backend("tensorrt", torch.device("cpu"), 1)
    with pytest.raises(TransferlabError, match="runs on the CPU"):
        runtime.resolve_backend("onnxruntime", torch.device("cuda"), 1)
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    assert runtime.resolve_backend("auto", torch.device("cpu"), 10_000) == "torch"
    with pytest.raises(TransferlabError, match="pip install onnx onnxruntime"):
        runtime.resolve_backend("onnxruntime", torch.device("cpu"), 1)


def test_cli_backend_flag(capsys, sample_photos):
    code = main(["predict", str(sample_photos["flower"]), "--top", "1", "--backend", "onnxruntime"])
    assert code == 0 and "daisy" in capsys.readouterr().out
