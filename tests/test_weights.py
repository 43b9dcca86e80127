"""Weight files: round trips, layouts, refusals (pickled code, truncation, wrong architecture), offline errors."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from PIL import Image
from safetensors.torch import save_file

from transferlab.core.errors import CheckpointError, WeightsUnavailableError
from transferlab.core.io import load_state_dict_file
from transferlab.models import create_model, get_spec



@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def resnet18_random():
    torch.manual_seed(123)
    return create_model("resnet18", weights="none")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_round_trip(tmp_path, suffix, resnet18_random, batch):
    state = resnet18_random.state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    torch.manual_seed(999)  # a different random init underneath, which the file must fully overwrite
    loaded = create_model("resnet18", weights=path)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(batch), resnet18_random(batch), rtol=0, atol=0)
    fresh = create_model("resnet18", weights="none")
    with torch.inference_mode():
        assert not torch.allclose(fresh(batch), resnet18_random(batch))


def test_transferlab_layout_with_other_class_count(tmp_path, batch):
    torch.manual_seed(5)
    model = create_model("resnet18", weights="none", num_classes=5)
    path = tmp_path / "five.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = create_model("resnet18", weights=path)
    assert loaded.num_classes == 5
    with torch.inference_mode():
        torch.testing.assert_close(loaded(batch), model(batch), rtol=0, atol=0)


def test_torchvision_layout_loads(tmp_path, batch):
    torch.manual_seed(7)
    original = tvm.resnet18(weights=None).eval()
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": original.state_dict()}, path)  # training-checkpoint wrapping is accepted too
    loaded = create_model("resnet18", weights=path)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(batch), original(batch), rtol=1e-5, atol=1e-5)


def test_other_architecture_is_refused_naming_layers(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(tvm.resnet50(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        create_model("resnet18", weights=path)
    msg = str(err.value)
    assert "does not fit" in msg and str(path) in msg
    assert "layer1.0" in msg  # names actual layers
    assert "\n" not in msg


def test_other_class_count_in_torchvision_layout_is_refused(tmp_path):
    path = tmp_path / "r18_10.pth"
    torch.save(tvm.resnet18(weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape mismatch: fc\.weight \(10, 512\) vs \(1000, 512\)"):
        create_model("resnet18", weights=path)


def test_blocknet_layout_of_other_architecture_is_refused(tmp_path):
    path = tmp_path / "mnv2.safetensors"
    model = create_model("mobilenet_v2", weights="none")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"blocks\."):
        create_model("resnet18", weights=path)


class _Payload:
    """Unpickling this object runs code: it creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_state_dict_file(path)
    with pytest.raises(CheckpointError, match="refused"):
        create_model("resnet18", weights=path)
    assert not marker.exists()
    # the payload is live: an unrestricted unpickler does create the marker
    live = tmp_path / "LIVE"
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(_Payload(live), f)
    with open(tmp_path / "plain.pkl", "rb") as f:
        pickle.load(f).close()
    assert live.exists()


def test_truncated_files_are_detected(tmp_path, resnet18_random):
    state = {k: v.contiguous() for k, v in resnet18_random.state_dict().items()}
    st = tmp_path / "cut.safetensors"
    save_file(state, str(st))
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_state_dict_file(st)
    pth = tmp_path / "cut.pth"
    torch.save(state, pth)
    data = pth.read_bytes()
    pth.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_state_dict_file(pth)
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pth")
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_dict_file(notdict)


def test_package_weights_efficientnet_lite0(sample_photos):
    import transferlab

    spec = get_spec("efficientnet_lite0")
    assert spec.weights.available()
    clf = transferlab.load("efficientnet_lite0")
    records = clf.predict([sample_photos["flower"], sample_photos["china"]], top=3, num_workers=0)
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert records[0]["top"][0]["label"] == "daisy"
    assert records[1]["top"][0]["label"] == "palace"


def test_missing_torchvision_weights_in_process(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    spec = get_spec("resnet18")
    assert not spec.weights.available()
    assert str(tmp_path / "torch_home") in str(spec.weights.path)

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        create_model("resnet18")
    msg = str(err.value)
    assert str(spec.weights.path) in msg and "curl -L https://" in msg and "\n" not in msg


def test_offline_cli_error_is_one_line(tmp_path):
    img = tmp_path / "x.jpg"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(img)
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch_home"), HF_HUB_OFFLINE="1")
    # no network on the test machine; also point proxies at a closed port so a connected one fails fast too
    env.update(https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    proc = subprocess.run(
        [sys.executable, "-m", "transferlab", "predict", str(img), "--model", "resnet18"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in lines[0]
    assert "curl -L https://download.pytorch.org/models/resnet18-f37072fd.pth" in lines[0]
    assert not expected.exists()
