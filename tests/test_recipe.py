"""The training recipe's ingredients (issue 29): mixup/cutmix, the weight average (EMA), augmentation
policies, progressive resizing; each on real tensors and a real training run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import v2 as T

from transferlab.advice.rules import advise, format_advice
from transferlab.api import train
from transferlab.cli.main import main
from transferlab.core.errors import TransferlabError
from transferlab.data.transforms import Preprocessing
from transferlab.training import trainer as trainer_module
from transferlab.training.config import TrainConfig
from transferlab.training.loop import TrainForward
from transferlab.models import get_spec
from transferlab.training.presets import PRESETS, best_under_budget, input_size_for_pixels, quality_settings
from transferlab.training.recipe import BatchMixer, WeightAverage, progressive_side

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
    config = json.loads((run.path / "model.json").read_text())["config"]
    assert config["ema"] == 0.9 and config["label_smoothing"] == 0.0  # one label per image: not smoothed unless told


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
                                            (dict(augment_policy="cutout"), "--augment-policy"),
                                            (dict(progressive=1.0), "--progressive"),
                                            (dict(progressive=-0.5), "--progressive"),
                                            (dict(label_smoothing=-0.1), "--label-smoothing"),
                                            (dict(label_smoothing=1.0), "--label-smoothing")])
def test_bad_recipe_options_get_one_line(option, message):
    with pytest.raises(TransferlabError, match=message):
        TrainConfig(**option).validate()


# --- progressive resizing -------------------------------------------------------------------------------
def test_progressive_side_ramps_linearly_to_the_full_size_for_the_last_third():
    assert [progressive_side(224, 0.6, e, 10) for e in range(10)] == [128, 160, 160, 160, 192, 192, 224, 224, 224, 224]
    for n in range(1, 13):
        sides = [progressive_side(224, 0.5, e, n) for e in range(n)]
        assert sides == sorted(sides) and all(s % 32 == 0 and 32 <= s <= 224 for s in sides)
        assert sides[n - max(1, n // 3):] == [224] * max(1, n // 3)  # the last third, at least one epoch
        assert n == 1 or sides[0] == 128  # the first epoch at scale x size
    assert [progressive_side(224, 0.0, e, 10) for e in range(10)] == [224] * 10  # 0: off
    assert progressive_side(64, 0.1, 0, 10) == 32  # never below 32
    assert progressive_side(250, 0.9, 6, 10) == 250  # 246 px would round to 256: never above the size


@pytest.fixture
def input_sides(monkeypatch):
    """(epochs, callback): per finished epoch, the sides of the images the trained net saw in training and in
    validation (cached features are not images: not counted)."""
    seen, epochs = {"train": set(), "val": set()}, []
    real = TrainForward.forward

    def recorded(self, x):
        if self.start == 0:
            seen["train" if self.model.training else "val"].add(x.shape[-1])
        return real(self, x)

    def epoch_done(trainer, row):
        epochs.append({split: sorted(sides) for split, sides in seen.items()})
        for sides in seen.values():
            sides.clear()

    monkeypatch.setattr(TrainForward, "forward", recorded)
    return epochs, epoch_done


def test_progressive_resizing_trains_the_image_phase_small_first_and_validates_at_full_size(
        digits_folder, tmp_path, capsys, input_sides):
    epochs, record = input_sides
    run = train(digits_folder, strategy="two-stage", epochs=4, head_epochs=1, progressive=0.5, out=tmp_path / "run",
                progress=True, callbacks=[record], **dict(TRAIN, image_size=64))
    # the head trains from cached features; fine-tuning (epochs 2-4) from the images, 32 px, then its last third at 64
    assert [e["train"] for e in epochs] == [[], [32], [64], [64]]
    assert [e["val"] for e in epochs] == [[], [64], [64], [64]]
    err = capsys.readouterr().err
    assert "progressive resizing: not in the head phase, which trains from cached features" in err
    assert "progressive resizing: 32 -> 64 px over epochs 2-4 (64 px from epoch 3)" in err
    assert json.loads((run.path / "model.json").read_text())["config"]["progressive"] == 0.5


def test_a_resumed_run_trains_at_the_progressive_sides_it_would_have(digits_folder, tmp_path, input_sides):
    epochs, record = input_sides

    def stop_after_epoch_2(trainer, row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(digits_folder, strategy="finetune", epochs=4, progressive=0.5, out=tmp_path / "run", progress=False,
              callbacks=[record, stop_after_epoch_2], **dict(TRAIN, image_size=64))
    train(digits_folder, out=tmp_path / "run", resume=True, progress=False, callbacks=[record])
    assert [e["train"] for e in epochs] == [[progressive_side(64, 0.5, e, 4)] for e in range(4)] == [[32], [32], [64], [64]]


def test_a_bad_progressive_scale_is_one_line_on_the_command_line(digits_folder, tmp_path, capsys):
    assert main(["train", str(digits_folder), "--progressive", "1.5", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "transferlab: error: --progressive must be between 0 (off) and 1, e.g. 0.6\n"


@pytest.mark.parametrize("options, named", [
    ({"progressive": 0.6}, "--progressive is"),
    ({"label_smoothing": 0.1, "tta": True}, "--label-smoothing, --tta are"),
    ({"augment_policy": "randaugment", "balance": "weights", "threshold": 0.3}, "--augment-policy, --balance, --threshold are"),
    ({"label_col": "tags", "label_delim": ","}, "--label-col, --label-delim are"),
])
def test_classifier_options_are_refused_for_a_detector_in_one_line(tmp_path, options, named):
    """A detector would ignore them: the run stops before reading any data, naming each one given."""
    with pytest.raises(TransferlabError, match=f"^{named} for classifiers; a detector") as info:
        train(tmp_path, model="blazeface_front", out=tmp_path / "run", progress=False, **options)
    assert "\n" not in str(info.value) and not [f for f in (tmp_path / "run").rglob("*") if f.is_file()]


@pytest.mark.parametrize("options, message", [
    ({"data_format": "wider", "lr_scaling": "relative"}, "--format, --lr-scaling are for face detectors"),
    ({"threshold": 0.3}, "--threshold is for multi-label data"),
])
def test_options_a_single_label_classifier_would_ignore_are_refused(digits_folder, tmp_path, options, message):
    with pytest.raises(TransferlabError, match=f"^{message}.*: drop (it|them)$"):
        train(digits_folder, out=tmp_path / "run", progress=False, **options)



# --- --quality presets ------------------------------------------------------------------------------------
def test_best_takes_the_largest_installed_backbone_and_leaves_given_options_alone():
    settings, reasons = quality_settings("best", ["efficientnet_lite0", "efficientnet_lite2"], given={"epochs"})
    assert settings == {"model": "efficientnet_lite2"} and set(reasons) == {"model"}
    assert quality_settings("best", ["resnet18"], given=set())[0]["model"] == "efficientnet_lite0"
    assert quality_settings("best", [], given={"model"})[0].get("model") is None
    with pytest.raises(TransferlabError, match="--quality must be one of fast, default, best"):
        quality_settings("max", [], set())


def write_colour_folder(root, per_class: int, shape: tuple[int, int]) -> None:
    """Two classes (red and blue noise) of `per_class` PNG images of `shape` (height, width)."""
    rng = np.random.default_rng(0)
    for cls, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 30, (*shape, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def test_the_input_size_follows_the_pixels_the_images_hold():
    lite0, lite2 = get_spec("efficientnet_lite0").preprocessing, get_spec("efficientnet_lite2").preprocessing
    assert input_size_for_pixels(256, lite0) is None  # resized to 256 for 224: the backbone's own size
    assert input_size_for_pixels(64, lite0) is None  # small tiles are not upsampled further
    assert input_size_for_pixels(300, lite0)[0] == 256  # 300 px hold 262 px of crop: the next step of 32
    size, why = input_size_for_pixels(384, lite0)
    assert size == 288 and "384 px" in why and "--image-size 224" in why
    assert input_size_for_pixels(4000, lite0)[0] == 288  # at most 1.3x the backbone's own
    assert input_size_for_pixels(384, lite2)[0] == 320
    # each level: default and best take it (best at its own backbone's), fast keeps its own, a given size stays
    assert quality_settings("default", [], set(), short_side=384)[0] == {"image_size": 288}
    assert quality_settings("default", [], set(), short_side=240) == ({}, {})
    assert quality_settings("best", ["efficientnet_lite2"], {"epochs"}, short_side=384)[0]["image_size"] == 320
    assert quality_settings("best", ["efficientnet_lite2"], {"model"}, "resnet18", 384)[0]["image_size"] == 288
    assert quality_settings("fast", [], set(), short_side=384)[0]["image_size"] == PRESETS["fast"]["image_size"][0]
    assert "image_size" not in quality_settings("default", [], {"image_size"}, short_side=384)[0]


def test_large_images_train_at_the_size_their_pixels_hold_and_the_run_says_why(tmp_path):
    write_colour_folder(tmp_path / "data", 4, (340, 400))
    options = dict(strategy="feature-extract", epochs=1, batch_size=8, workers=0, augment="none", val_split=0.5,
                   weights="none", progress=False)
    run = train(tmp_path / "data", out=tmp_path / "run", **options)
    cfg = json.loads((run.path / "model.json").read_text())["config"]
    assert cfg["image_size"] == 288 and run.predictor.preprocessing.input_size == 288
    assert "340 px" in cfg["quality_reasons"]["image_size"] and "340 px" in (run.path / "report.md").read_text()
    advice = advise(tmp_path / "data", weights="none", val_split=0.5)  # measures what train will see
    assert advice.measurements.input_size == 288 and "at 288 px" in format_advice(advice)
    given = train(tmp_path / "data", out=tmp_path / "given", image_size=64, **options)
    assert given.predictor.preprocessing.input_size == 64
    assert json.loads((given.path / "model.json").read_text())["config"]["quality_reasons"] is None


def test_best_under_a_budget_takes_the_largest_schedule_that_fits():
    cost = {"efficientnet_lite2": 100, "efficientnet_lite1": 60, "efficientnet_lite0": 40}  # seconds an epoch

    def price(backbone, size, epochs):
        return cost[backbone] * epochs

    installed = list(cost)
    settings, reasons = best_under_budget(installed, {}, 384, 1000, price)  # lite2 x 10 epochs = 1000 fits
    assert settings == {"model": "efficientnet_lite2", "image_size": 320}
    assert reasons["budget"] == "budget 1000s: efficientnet_lite2 at 320 px for 10 epochs ~1000s fits"
    settings, reasons = best_under_budget(installed, {}, None, 700, price)
    assert settings == {"model": "efficientnet_lite1", "image_size": 240}
    assert "lite1 at 240 px for 10 epochs ~600s fits (over it: efficientnet_lite2 at 260 px" in reasons["budget"]
    assert best_under_budget(installed, {"epochs": 15}, None, 700, price)[0] == {
        "model": "efficientnet_lite0", "image_size": 224}
    assert best_under_budget(installed, {"model": "efficientnet_lite0", "image_size": 96}, None, 500, price)[0] == {}
    settings, reasons = best_under_budget(installed, {}, None, 100, price)
    assert settings == {} and "no schedule of best fits" in reasons["budget"]


def test_best_with_a_budget_times_the_backbones_and_trains_what_fits(tmp_path):
    write_colour_folder(tmp_path / "data", 5, (40, 40))
    run = train(tmp_path / "data", quality="best", budget=15, batch_size=8, workers=0, val_split=0.2,
                out=tmp_path / "run", progress=False)
    meta = json.loads((run.path / "model.json").read_text())
    why = meta["config"]["quality_reasons"]["budget"]
    assert why.startswith("budget 1") and "no schedule" not in why, why
    assert f"{meta['config']['model']} at {meta['config']['image_size']} px for {meta['config']['epochs']} epochs" in why
    assert meta["budget"]["used_s"] <= 15


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
