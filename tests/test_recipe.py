"""The training recipe's ingredients (issue 29): mixup/cutmix, the weight average (EMA), augmentation
policies; each on real tensors and a real training run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import v2 as T

from transferlab.api import train
from transferlab.core.errors import TransferlabError
from transferlab.data.transforms import Preprocessing
from transferlab.training import trainer as trainer_module
from transferlab.training.config import TrainConfig
from transferlab.training.presets import PRESETS, quality_settings
from transferlab.training.recipe import BatchMixer, WeightAverage

TRAIN = dict(image_size=48, batch_size=16, workers=0)


def test_mixup_mixes_images_and_one_hot_targets_by_the_same_share():
    torch.manual_seed(0)
    x = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    mixed, soft = BatchMixer(mixup=0.4, cutmix=0.0, num_classes=4)(x, torch.arange(4))
    assert soft.shape == (4, 4) and torch.allclose(soft.sum(1), torch.ones(4))
    # each image is lam * itself + (1 - lam) * its neighbour, and its target carries the same lam
    lam = soft[0, 0].item()
    assert 0 < lam < 1 and torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[3])
    assert torch.allclose(soft[0], torch.tensor([lam, 0, 0, 1 - lam]))


def test_cutmix_pastes_a_box_and_weighs_targets_by_its_area():
    torch.manual_seed(1)
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(2)])
    mixed, soft = BatchMixer(mixup=0.0, cutmix=1.0, num_classes=2)(x, torch.tensor([0, 1]))
    pasted = (mixed[0, 0] == 1.0).float().mean().item()  # the share of image 0 taken from image 1
    assert soft[0, 1].item() == pytest.approx(pasted)


def test_multilabel_targets_are_mixed_as_they_are():
    torch.manual_seed(0)
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    _, soft = BatchMixer(mixup=0.4, cutmix=0.0, num_classes=3)(torch.rand(2, 3, 8, 8), y)
    lam = soft[0, 0].item()
    assert torch.allclose(soft[0], lam * y[0] + (1 - lam) * y[1])


def test_weight_average_follows_timm_warm_up_and_swaps_weights_back():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = WeightAverage(model, decay=0.999)
    for step in range(1, 4):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.update(model)
    # timm's warm-up: step 1 copies (decay 0), then decay 1 - (1 + k)^-2/3 for k = step - 1
    expected = 1.0
    for step in (2, 3):
        d = 1 - (1 + (step - 1)) ** (-2 / 3)
        expected = d * expected + (1 - d) * step
    assert ema.state_dict()["weight"][0, 0].item() == pytest.approx(expected, rel=1e-5)
    with ema.applied(model):
        assert model.weight[0, 0].item() == pytest.approx(expected, rel=1e-5)
    assert model.weight[0, 0].item() == 3.0


def test_ema_weights_are_the_ones_validated_and_kept(digits_folder, tmp_path, monkeypatch):
    made = []

    class Recorded(WeightAverage):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(trainer_module, "WeightAverage", Recorded)
    run = train(digits_folder, strategy="finetune", epochs=1, ema=0.9, lr=3e-3, out=tmp_path / "run", progress=False,
                **TRAIN)
    (ema,) = made
    saved = load_file(run.path / "model.safetensors")
    averaged = ema.state_dict()
    assert ema.steps == 8  # 128 training images in batches of 16
    assert all(torch.equal(saved[k], averaged[k].contiguous()) for k in saved)
    assert json.loads((run.path / "model.json").read_text())["config"]["ema"] == 0.9


def test_mixup_trains_the_image_phases_only(digits_folder, tmp_path, capsys, monkeypatch):
    calls = []
    real = BatchMixer.__call__

    def counted(self, x, y):
        calls.append(x.shape)
        return real(self, x, y)

    monkeypatch.setattr(BatchMixer, "__call__", counted)
    run = train(digits_folder, strategy="two-stage", epochs=2, head_epochs=1, mixup=0.2, cutmix=1.0,
                out=tmp_path / "run", progress=True, **TRAIN)
    # the head trains from cached features: not mixed; fine-tuning trains from the images: every batch
    assert len(calls) == 8 and all(len(s) == 4 for s in calls)
    assert "not in the head phase" in capsys.readouterr().err
    assert run.metrics["epochs_run"] == 2 and np.isfinite(run.history[-1]["train_loss"])


def test_augmentation_policies_are_torchvisions():
    pre = Preprocessing(input_size=32, resize=36)
    kinds = lambda t: [type(op).__name__ for op in t.transforms]  # noqa: E731
    assert "RandAugment" in kinds(pre.train_transform("light", "randaugment"))
    assert "TrivialAugmentWide" in kinds(pre.train_transform("strong"))  # strong's own policy
    assert not any("Augment" in k for k in kinds(pre.train_transform("light")))
    assert not any("Augment" in k for k in kinds(pre.train_transform("strong", "none")))
    assert isinstance(pre.train_transform("light", "autoaugment").transforms[2], T.AutoAugment)


@pytest.mark.parametrize("option,message", [(dict(ema=1.0), "--ema"), (dict(mixup=-1), "--mixup"),
                                            (dict(augment_policy="cutout"), "--augment-policy")])
def test_bad_recipe_options_get_one_line(option, message):
    with pytest.raises(TransferlabError, match=message):
        TrainConfig(**option).validate()


# --- --quality presets ------------------------------------------------------------------------------------
def test_best_takes_the_largest_installed_backbone_and_leaves_given_options_alone():
    settings, reasons = quality_settings("best", ["efficientnet_lite0", "efficientnet_lite2"], given={"epochs"})
    assert settings == {"model": "efficientnet_lite2"} and set(reasons) == {"model"}
    assert quality_settings("best", ["resnet18"], given=set())[0]["model"] == "efficientnet_lite0"
    assert quality_settings("best", [], given={"model"})[0].get("model") is None
    with pytest.raises(TransferlabError, match="--quality must be one of fast, default, best"):
        quality_settings("max", [], set())


def test_a_preset_fills_what_the_user_left_and_the_run_says_why(digits_folder, tmp_path):
    run = train(digits_folder, strategy="feature-extract", quality="fast", out=tmp_path / "run", progress=False,
                **TRAIN)
    cfg = json.loads((run.path / "model.json").read_text())["config"]
    assert cfg["quality"] == "fast" and cfg["image_size"] == 48  # given: kept
    assert cfg["epochs"] == PRESETS["fast"]["epochs"][0] and set(cfg["quality_reasons"]) == {"epochs"}  # left: the preset's
    report = (run.path / "report.md").read_text()
    assert "Quality preset `fast`" in report and PRESETS["fast"]["epochs"][1] in report


def test_quality_is_refused_for_a_detector_in_one_line(tmp_path):
    with pytest.raises(TransferlabError, match="--quality is for classifiers"):
        train(tmp_path, model="blazeface_front", quality="fast")
