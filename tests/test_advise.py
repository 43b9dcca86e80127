"""The advisor: LogME against the evidence it maximises, the probe, the decision rules on engineered
measurements, and the measurements on real images with real pretrained weights."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from transferlab.cli.main import build_parser
from transferlab.api import train
from transferlab.training.config import TrainConfig
from transferlab.advice.measure import (half_per_class, logme, logme_fit, measure, Measurements, probe_accuracy,
                                        separability)
from transferlab.advice.plan import advise_for_training
from transferlab.advice.rules import (BN_SHIFT_FAR, LOW_HEAD_CONFIDENCE, MIN_FROZEN_FRACTION, SIMILAR_BN_SHIFT,
                                      SMALL_PER_CLASS, VERY_LARGE_PER_CLASS, advise, decide, format_advice,
                                      freeze_point)


LITE0_BLOCKS = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "conv_head", "pool",
                "head"]


def _clusters(n_per_class: int, classes: int, dim: int, spread: float, seed: int = 0):
    """Gaussian blobs: `spread` is the noise around class means at unit distance (small: separable)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    return means[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def _direct_evidence(f, y, alpha, beta):
    """log N(y | 0, I/beta + F F^T/alpha) / n: the marginal likelihood LogME maximises."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return (-0.5 * logdet - 0.5 * y @ np.linalg.solve(cov, y) - n / 2 * math.log(2 * math.pi)) / n


@pytest.mark.parametrize("n,d", [(60, 20), (30, 80)])  # more samples than dims, and fewer
def test_logme_fixed_point_is_the_maximum_of_the_evidence(n, d):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(n, d))
    y = (0.3 * rng.normal(size=n) + f[:, 0] > 0).astype(float)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    evidence, alpha, beta = logme_fit(u, s**2, y, n, d)
    assert evidence == pytest.approx(_direct_evidence(f, y, alpha, beta), abs=1e-9)  # the SVD form is exact
    for da, db in [(1.2, 1), (1 / 1.2, 1), (1, 1.2), (1, 1 / 1.2)]:  # and the fixed point is a maximum
        assert _direct_evidence(f, y, alpha * da, beta * db) < evidence + 1e-6


@pytest.mark.parametrize("n_per_class,dim,spread", [(10, 100, 3.0), (30, 8, 1.6)])  # n < features, and n > features
def test_probe_is_the_exact_leave_one_out_accuracy(n_per_class, dim, spread):
    """The closed form against refitting sklearn's ridge (with its intercept) n times per strength."""
    from sklearn.linear_model import Ridge

    features, labels = _clusters(n_per_class, 4, dim, spread=spread, seed=4)
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)  # the probe standardises once, up front
    onehot = np.eye(4)[labels]
    scale = np.linalg.eigvalsh(x @ x.T).clip(0).sum() / len(x)
    best = 0.0
    for lam in scale * np.logspace(-3, 1, 9):
        hits = [Ridge(alpha=lam).fit(np.delete(x, i, 0), np.delete(onehot, i, 0)).predict(x[i:i + 1]).argmax()
                == labels[i] for i in range(len(x))]
        best = max(best, float(np.mean(hits)))
    assert probe_accuracy(features, labels) == pytest.approx(best)
    assert 0.4 < best < 0.95  # neither chance nor the interpolating ridge "predicting" its left-out labels


def test_logme_and_probe_rank_separable_features_above_noise():
    separable, labels = _clusters(30, 4, 64, spread=0.3)
    noise = np.random.default_rng(2).normal(size=separable.shape)
    assert logme(separable, labels) > logme(noise, labels) + 0.5
    assert probe_accuracy(separable, labels) == 1.0
    assert probe_accuracy(noise, labels) < 0.5
    assert separability(0.25, 4) == 0.0 and separability(1.0, 4) == 1.0


def _measured(features, labels, min_per_class, bn_shift=0.05, head_confidence=0.5, per_block=None):
    """Measurements as `measure` builds them, from engineered features and chosen size/shift numbers."""
    accuracy = probe_accuracy(features, labels)
    classes = len(np.unique(labels))
    return Measurements(
        num_images=min_per_class * classes, num_classes=classes, min_per_class=min_per_class, sampled=len(labels),
        logme=logme(features, labels), probe_accuracy=accuracy, separability=separability(accuracy, classes),
        probe_accuracy_half=probe_accuracy(*(a[half_per_class(labels)] for a in (features, labels))),
        bn_shift=bn_shift, bn_shift_per_block=per_block or {b: bn_shift for b in LITE0_BLOCKS[:-2]},
        head_confidence=head_confidence, head_entropy=0.5, blocks=LITE0_BLOCKS,
    )


SEPARABLE = _clusters(30, 4, 64, spread=0.3)
ENTANGLED = _clusters(30, 4, 64, spread=30.0)
SMALL, LARGE = SMALL_PER_CLASS // 2, SMALL_PER_CLASS * 3


NEAR, SHIFTED = SIMILAR_BN_SHIFT / 2, SIMILAR_BN_SHIFT * 1.5


@pytest.mark.parametrize("bn_shift,per_class,expected_cell,expected", [
    (NEAR, SMALL, "small+similar", "feature-extract"),
    (SHIFTED, SMALL, "small+different", "partial"),
    (NEAR, LARGE, "large+similar", "finetune"),
    (SHIFTED, LARGE, "large+different", "finetune"),
])
def test_playbook_cells_from_domain_shift_and_size(bn_shift, per_class, expected_cell, expected):
    m = _measured(*ENTANGLED, per_class, bn_shift=bn_shift)
    d = decide(m)
    assert (d.cell, d.strategy) == (expected_cell, expected)
    assert d.strategy in d.reasons[-1] and len(d.reasons) >= 6
    assert f"smallest class {per_class} images" in d.decided_by[0] and expected_cell.split("+")[1] in d.decided_by[1]
    if expected == "feature-extract":
        assert d.freeze == len(LITE0_BLOCKS) - 1 and d.freeze_block == "head"
    if expected == "partial":
        assert 1 <= d.freeze <= len(LITE0_BLOCKS) - 3 and d.freeze_block == LITE0_BLOCKS[d.freeze]


def test_separable_classes_alone_do_not_make_the_data_similar():
    """The probe measures how hard the classes are, not how far the images are from ImageNet's."""
    assert decide(_measured(*SEPARABLE, SMALL, bn_shift=SHIFTED)).strategy == "partial"
    assert decide(_measured(*ENTANGLED, SMALL, bn_shift=NEAR)).strategy == "feature-extract"


def test_scratch_only_when_very_large_and_very_far():
    far = dict(bn_shift=2 * BN_SHIFT_FAR, head_confidence=LOW_HEAD_CONFIDENCE / 2)
    noise = (np.random.default_rng(3).normal(size=(120, 64)), np.repeat(np.arange(4), 30))
    assert decide(_measured(*noise, VERY_LARGE_PER_CLASS, **far)).strategy == "scratch"
    assert decide(_measured(*noise, VERY_LARGE_PER_CLASS - 1, **far)).strategy == "finetune"
    assert decide(_measured(*noise, VERY_LARGE_PER_CLASS)).strategy == "finetune"  # close to ImageNet


def test_partial_freeze_point_follows_the_first_shifted_block():
    per_block = {b: 0.01 for b in LITE0_BLOCKS[:-2]}
    per_block["stage7"] = per_block["conv_head"] = 1.0  # statistics break at stage7
    m = _measured(*ENTANGLED, SMALL, per_block=per_block)
    assert freeze_point(m) == LITE0_BLOCKS.index("stage7")
    per_block["stem"] = 1.0  # shifted from the start: still keep half the body frozen on small data
    assert freeze_point(_measured(*ENTANGLED, SMALL, per_block=per_block)) == math.ceil(
        MIN_FROZEN_FRACTION * (len(LITE0_BLOCKS) - 1))


@pytest.fixture(scope="module")
def faces_folder(tmp_path_factory):
    """scikit-image's LFW subset: 30 faces (of the first 100) and 30 non-faces (of the next 100), 25x25."""
    from PIL import Image
    from skimage.data import lfw_subset

    root = tmp_path_factory.mktemp("faces") / "data"
    images = lfw_subset()
    for name, start in (("face", 0), ("not_face", 100)):
        (root / name).mkdir(parents=True)
        for i in range(start, start + 30):
            Image.fromarray((255 * images[i]).astype(np.uint8), mode="L").save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def pretrained_and_random(faces_folder):
    """Real measurements of faces vs non-faces: pretrained efficientnet_lite0 vs the same net untrained."""
    return (measure(faces_folder, "efficientnet_lite0", image_size=112),
            measure(faces_folder, "efficientnet_lite0", weights="none", image_size=112))


def test_pretrained_features_transfer_better_than_random_init(pretrained_and_random):
    pretrained, random_init = pretrained_and_random
    assert pretrained.sampled == 2 * 24 and pretrained.min_per_class == 24
    assert pretrained.logme > random_init.logme + 0.1
    assert pretrained.probe_accuracy > 0.9
    # the untrained net's "ImageNet head" is near-uniform: the confidence measures the weights
    assert pretrained.head_confidence > 3 * random_init.head_confidence
    assert set(pretrained.bn_shift_per_block) <= set(pretrained.blocks)


def test_advise_api_cli_and_json(digits_folder, capsys):
    advice = advise(digits_folder, image_size=64)
    d = advice.to_dict()
    json.dumps(d)
    assert d["strategy"] == advice.decision.strategy and d["explanation"].startswith("size:")
    assert d["thresholds"]["small_per_class"] == SMALL_PER_CLASS
    args = build_parser().parse_args(["advise", str(digits_folder), "--models", "efficientnet_lite0,resnet18",
                              "--weights", "none", "--image-size", "64", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in out["ranking"]] and {r["model"] for r in out["ranking"]} == {
        "efficientnet_lite0", "resnet18"}
    assert out["model"] == out["ranking"][0]["model"]
    assert "cell:" in format_advice(advice) and "decided by: smallest class" in format_advice(advice)


def test_train_auto_records_the_advice(tmp_path):
    from sklearn.datasets import load_digits

    from conftest import write_digit_folder

    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:10] for c in range(2)])
    data = write_digit_folder(tmp_path / "data", d.images[keep], d.target[keep])
    cfg = advise_for_training(data, TrainConfig(strategy="auto", epochs=2), progress=False)
    assert cfg.strategy in ("feature-extract", "two-stage", "scratch")  # the adaptive plan, not the cell's strategy
    assert cfg.advice["plan"]["strategy"] == cfg.strategy and cfg.advice["explanation"]
    assert cfg.advice["strategy"] in ("feature-extract", "partial", "finetune", "scratch")
    run = train(data, strategy="auto", epochs=2, image_size=48, batch_size=16, augment="none",
                out=tmp_path / "run", progress=False)
    meta = json.loads((run.path / "model.json").read_text())
    assert meta["strategy"] == cfg.strategy and meta["advice"]["measurements"]["min_per_class"] == 8
