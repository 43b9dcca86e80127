"""The trainer: every strategy end to end on real digits, what each freezes, run folders, resume."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import transferlab
from transferlab.models import create_model
from transferlab.training.strategies import param_groups, plan_phases
from transferlab.api import train
from transferlab.training.config import TrainConfig
from transferlab.tasks.classification import ClassificationTask
from transferlab.training.trainer import Trainer

FAST = dict(image_size=48, batch_size=16, augment="none", seed=0)


def _bn_modes(module):
    return {m.training for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize("strategy,freeze,expected", [
    ("feature-extract", None, [10]),
    ("partial", 4, [4]),
    ("partial", "stage5", [5]),
    ("finetune", None, [0]),
    ("scratch", None, [0]),
    ("two-stage", None, [10, 0]),
])
def test_strategy_plans_freeze_the_right_blocks(strategy, freeze, expected):
    model = create_model("efficientnet_lite0", num_classes=3, weights="none")
    phases = plan_phases(strategy, model, epochs=6, freeze=freeze)
    assert [p.freeze for p in phases] == expected
    for phase in phases:
        model.freeze(phase.freeze, "frozen")
        model.train()
        for i, name in enumerate(model.block_names):
            block = model.blocks[name]
            grads = {p.requires_grad for p in block.parameters()}
            if grads:
                assert grads == {i >= phase.freeze}, (name, phase)
            if i < phase.freeze and _bn_modes(block):
                assert _bn_modes(block) == {False}, f"frozen BN in {name} must stay in eval mode"
        groups = param_groups(model, phase, weight_decay=0.01)
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        in_groups = {id(p) for g in groups for p in g["params"]}
        assert in_groups == trainable
        with_params = {b for b in model.block_names[phase.freeze:] if any(True for _ in model.blocks[b].parameters())}
        assert {g["block"] for g in groups} == with_params


def test_two_stage_phase_two_has_rising_per_block_learning_rates():
    model = create_model("resnet18", num_classes=3, weights="none")
    head, finetune = plan_phases("two-stage", model, epochs=6, lr=1e-3, lr_mult=10)
    assert head.freeze == len(model.block_names) - 1 and finetune.freeze == 0
    model.freeze(0)
    lrs = {}
    for g in param_groups(model, finetune, 0.01):
        lrs[g["block"]] = g["lr"]
    ordered = [lrs[b] for b in model.block_names if b in lrs]
    assert ordered == sorted(ordered) and ordered[0] == pytest.approx(1e-4) and ordered[-1] == pytest.approx(1e-3)


def test_bn_policies():
    model = create_model("resnet18", num_classes=3, weights="none")
    model.freeze(3, "train")
    model.train()
    assert _bn_modes(model.blocks["stem"]) == {True}
    model.freeze(3, "eval")  # statistics kept everywhere, affine weights of trainable blocks still learn
    model.train()
    assert _bn_modes(model.blocks["stem"]) == _bn_modes(model.blocks["layer4"]) == {False}
    assert all(p.requires_grad for p in model.blocks["layer4"].parameters())
    model.freeze(3, "frozen")
    model.train()
    assert _bn_modes(model.blocks["stem"]) == {False} and _bn_modes(model.blocks["layer4"]) == {True}


@pytest.mark.parametrize("strategy", ["feature-extract", "partial", "finetune", "scratch", "two-stage"])
def test_every_strategy_learns_digits(strategy, digits_folder, tmp_path):
    options = dict(FAST, epochs=4 if strategy != "scratch" else 6)
    if strategy == "partial":
        options["freeze"] = "stage6"
    if strategy == "scratch":
        options["lr"] = 3e-3
    run = train(digits_folder, model="efficientnet_lite0", strategy=strategy, out=tmp_path / "run",
                progress=False, **options)
    chance = 0.25
    assert run.metrics["val_acc"] >= (0.7 if strategy != "scratch" else chance + 0.15), run.history
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["strategy"] == strategy
    assert meta["bn_policy"] == ("frozen" if strategy == "scratch" else "eval")
    assert meta["classes"] == [f"digit_{i}" for i in range(4)]
    assert len(run.history) == options["epochs"]


def test_run_folder_is_complete_and_loads(digits_folder, tmp_path):
    out = tmp_path / "run"
    train(digits_folder, model="efficientnet_lite0", strategy="feature-extract", out=out, epochs=3,
          progress=False, **FAST)
    for name in ("model.safetensors", "model.json", "checkpoints/last.pt", "checkpoints/best.safetensors",
                 "metrics.csv", "curves.png", "confusion.png", "report.md"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "model.json").read_text())
    assert meta["preprocessing"]["input_size"] == 48
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["freeze"] == len(meta["blocks"]) - 1
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 4
    clf = transferlab.load(str(out))
    assert clf.classes == meta["classes"]
    image = sorted(digits_folder.glob("digit_2/*.png"))[0]
    records = clf.predict([image], top=2, progress=False)
    assert records[0]["status"] == "ok" and len(records[0]["top"]) == 2
    # the trained model's predictions are the run's own, not the ImageNet head's
    assert records[0]["top"][0]["label"].startswith("digit_")
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in clf.model.state_dict().items())


def test_resume_after_interruption_matches_uninterrupted_run(digits_folder, tmp_path):
    # head for epoch 1, fine-tuning for 2-3; cut after epoch 2, so the resume replays fine-tuning mid-phase
    options = dict(FAST, epochs=3, augment="light", cache_features="off", workers=0)
    full = train(digits_folder, model="efficientnet_lite0", strategy="two-stage", head_epochs=1,
                 out=tmp_path / "full", progress=False, **options)

    def stop_after_epoch_2(trainer, row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    cfg = TrainConfig(model="efficientnet_lite0", strategy="two-stage", head_epochs=1, **options)
    with pytest.raises(KeyboardInterrupt):
        Trainer(ClassificationTask(), digits_folder, cfg, out=tmp_path / "cut", progress=False, callbacks=[stop_after_epoch_2]).fit()
    assert not (tmp_path / "cut" / "model.json").exists()
    resumed = train(digits_folder, out=tmp_path / "cut", resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run must end with the same weights"
    assert [r["val_loss"] for r in full.history] == [r["val_loss"] for r in resumed.history]


def test_lr_find_beats_a_bad_fixed_learning_rate(digits_folder, tmp_path):
    found = train(digits_folder, model="efficientnet_lite0", strategy="feature-extract", out=tmp_path / "find",
                  epochs=2, lr="find", progress=False, **FAST)
    lr = json.loads((tmp_path / "find" / "model.json").read_text())["phases"][0]["lr"]
    assert 1e-5 < lr < 1.0
    bad = train(digits_folder, model="efficientnet_lite0", strategy="feature-extract", out=tmp_path / "bad",
                epochs=2, lr=1e-6, progress=False, **FAST)
    assert found.metrics["val_acc"] >= bad.metrics["val_acc"] + 0.2


@pytest.fixture(scope="module")
def imbalanced_digits(tmp_path_factory):
    """train/: 80 images of digit 0, 5 of each of digits 1-3; val/: 20 of each."""
    import numpy as np
    from sklearn.datasets import load_digits

    from conftest import write_digit_folder

    d = load_digits()
    root = tmp_path_factory.mktemp("imbalanced")
    train_idx, val_idx = [], []
    for c in range(4):
        idx = np.flatnonzero(d.target == c)
        train_idx += list(idx[:80 if c == 0 else 5])
        val_idx += list(idx[100:120])
    write_digit_folder(root / "train", d.images[train_idx], d.target[train_idx])
    write_digit_folder(root / "val", d.images[val_idx], d.target[val_idx])
    return root


def _majority_calls_and_minority_recall(run, data) -> tuple[int, float]:
    result = transferlab.evaluate(run.predictor, data, progress=False)
    majority_calls = sum(row[0] for row in result["confusion"])  # val images predicted as digit 0
    return majority_calls, sum(r["recall"] for r in result["per_class"] if r["class"] != "digit_0") / 3


@pytest.mark.parametrize("balance", ["weights", "sampler"])
def test_balance_shifts_predictions_to_rare_classes(balance, imbalanced_digits, tmp_path):
    options = dict(FAST, model="efficientnet_lite0", strategy="feature-extract", epochs=3, progress=False)
    plain = train(imbalanced_digits, out=tmp_path / "none", balance="none", **options)
    balanced = train(imbalanced_digits, out=tmp_path / balance, balance=balance, **options)
    plain_calls, plain_recall = _majority_calls_and_minority_recall(plain, imbalanced_digits)
    calls, recall = _majority_calls_and_minority_recall(balanced, imbalanced_digits)
    # measured: 40 of the 80 val images called digit 0 without balancing, 20-23 with it
    assert calls <= 0.75 * plain_calls and recall >= plain_recall + 0.05


def test_public_api_names_stay_functions_after_submodule_imports():
    import subprocess
    import sys

    # a fresh interpreter: every submodule imported first, then the lazily bound API names
    code = (
        "import importlib, pkgutil, types, transferlab, transferlab.detect\n"
        "for pkg in (transferlab, transferlab.detect):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        if m.name != '__main__':\n"
        "            importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
        "    for name in pkg.__all__:\n"
        "        assert not isinstance(getattr(pkg, name), types.ModuleType), (pkg.__name__, name)\n"
        "assert callable(transferlab.train) and callable(transferlab.detect.detect)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_command_line_parser_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom transferlab.cli.main import build_parser\nbuild_parser()\n"
            "assert 'torch' not in sys.modules, 'building the parser imported torch'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_partial_trains_the_head_at_the_head_rate_and_upper_blocks_lower():
    model = create_model("efficientnet_lite0", num_classes=3, weights="none")
    (phase,) = plan_phases("partial", model, epochs=2, freeze="stage6")
    model.freeze(phase.freeze)
    lrs = {g["block"]: g["lr"] for g in param_groups(model, phase, 0.01)}
    assert lrs["head"] == pytest.approx(3e-3) and lrs["stage6"] == pytest.approx(3e-4)


def _one_batch_gradients(trainer: Trainer, micro_batch: str) -> dict:
    trainer.cfg.micro_batch = micro_batch
    model = trainer.model
    model.freeze(0, "eval")
    model.train()
    model.zero_grad(set_to_none=True)
    x, y = next(iter(trainer.task.batches.image_loader("train", train=False)))
    passes = []
    hook = model.blocks["stem"].register_forward_pre_hook(lambda m, args: passes.append(len(args[0])))
    loop = trainer.loop
    loss, correct, finite = loop.backward(loop.training_net(0), x, y, trainer.task.loss_fn(), loop.grad_scaler(),
                                          chunk=loop.micro_batch(x))
    hook.remove()
    assert finite
    return {"passes": passes, "loss": loss / len(y), "correct": correct,
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


@pytest.mark.parametrize("balance", ["none", "weights"])
def test_micro_batches_give_the_whole_batch_gradient(balance, digits_folder, tmp_path):
    cfg = TrainConfig(model="efficientnet_lite0", strategy="finetune", balance=balance, workers=0,
                      **dict(FAST, batch_size=12))
    trainer = Trainer(ClassificationTask(), digits_folder, cfg, out=tmp_path / "run", progress=False)
    whole = _one_batch_gradients(trainer, "off")
    split = _one_batch_gradients(trainer, "5")
    auto = _one_batch_gradients(trainer, "auto")
    assert whole["passes"] == [12] and split["passes"] == [5, 5, 2] and auto["passes"] == [8, 4]
    for other in (split, auto):
        assert other["loss"] == pytest.approx(whole["loss"], rel=1e-5) and other["correct"] == whole["correct"]
        for name, g in whole["grads"].items():
            torch.testing.assert_close(other["grads"][name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_batches_stay_whole_and_are_recomputed_when_batchnorm_learns_statistics(digits_folder, tmp_path):
    cfg = TrainConfig(model="efficientnet_lite0", strategy="scratch", epochs=1, workers=0, **FAST)
    trainer = Trainer(ClassificationTask(), digits_folder, cfg, out=tmp_path / "run", progress=False)
    trainer.fit()
    x = torch.zeros(16, 3, 48, 48)
    trainer.model.train()  # as in a training epoch
    assert trainer.loop.micro_batch(x) == 16  # batch statistics over 8 images would change the model
    assert trainer.model.checkpointed_blocks == trainer.model.high_resolution_blocks(48) > 0
    finetune = Trainer(ClassificationTask(), digits_folder, TrainConfig(model="efficientnet_lite0", strategy="finetune", epochs=1,
                                                  workers=0, **FAST), out=tmp_path / "ft", progress=False)
    finetune.fit()
    finetune.model.train()
    assert finetune.loop.micro_batch(x) == 8 and finetune.model.checkpointed_blocks == 0
