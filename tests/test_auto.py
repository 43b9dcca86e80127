"""`--strategy auto` and `--budget`: the plan's rules on constructed measurements, the adaptive
fine-tuning trial on real training (abandoned when it does not help, kept when it does), and the
budget on the wall clock."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from safetensors.torch import load_file

from transferlab.api import train
from transferlab.cli.main import main as cli_main
from transferlab.core.errors import TransferlabError
from transferlab.models import create_model, installed_models
from transferlab.training.budget import Budget, Pacer, parse_duration
from transferlab.training.config import TrainConfig
from transferlab.training.strategies import DEFAULT_LR, Phase, judge_trial
from transferlab.advice.measure import Measurements, separability
from transferlab.advice.plan import AutoPlan, plan_auto
from transferlab.advice.rules import (BN_SHIFT_FAR, LOW_HEAD_CONFIDENCE, NO_HEADROOM, SIMILAR_BN_SHIFT,
                                      SMALL_PER_CLASS, VERY_LARGE_PER_CLASS, Advice, decide, freeze_point)


BLOCKS = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "conv_head", "pool", "head"]
TRAIN = dict(image_size=48, batch_size=16, augment="none", workers=0)


def _measured(probe_accuracy: float, per_class: int, classes: int = 4, bn_shift: float = 0.05,
              head_confidence: float = 0.5, seconds_per_image: float = 0.01) -> Measurements:
    """Measurements with chosen numbers (the rules read nothing else)."""
    return Measurements(
        num_images=per_class * classes, num_classes=classes, min_per_class=per_class, sampled=min(per_class, 50) * classes,
        logme=0.0, probe_accuracy=probe_accuracy, separability=separability(probe_accuracy, classes),
        probe_accuracy_half=probe_accuracy,
        bn_shift=bn_shift, bn_shift_per_block={b: bn_shift for b in BLOCKS[:-2]}, head_confidence=head_confidence,
        head_entropy=0.5, blocks=BLOCKS, seconds_per_image=seconds_per_image, input_size=224,
        num_val_images=per_class * classes // 4)


def _plan(m: Measurements, budget=None, **cfg) -> AutoPlan:
    advice = Advice("efficientnet_lite0", m, decide(m), 1.0)
    return plan_auto(advice, TrainConfig(strategy="auto", **cfg), budget)


# --- the rules, on constructed measurements ----------------------------------------------------------
def test_no_headroom_trains_the_head_only():
    plan = _plan(_measured(1 - NO_HEADROOM / 2, per_class=20), epochs=6)
    assert (plan.strategy, plan.finetune_trial, plan.epochs) == ("feature-extract", 0, 6)
    assert any("fine-tuning skipped" in r for r in plan.reasons)


def test_headroom_tries_fine_tuning_after_a_full_head_phase():
    plan = _plan(_measured(0.9, per_class=SMALL_PER_CLASS * 2), epochs=6)
    assert plan.strategy == "two-stage" and plan.head_epochs == 6  # the head as long as feature extraction
    finetune = plan.epochs - plan.head_epochs
    assert finetune == 4 and 1 <= plan.finetune_trial < finetune
    # small and different: the upper blocks from a fresh head, judged at the end
    small = _plan(_measured(0.9, per_class=20, bn_shift=2 * SIMILAR_BN_SHIFT), epochs=6)
    assert small.finetune_trial == small.epochs - small.head_epochs == 6  # as long as the partial strategy


@pytest.mark.parametrize("per_class", [SMALL_PER_CLASS // 2, SMALL_PER_CLASS * 2])
def test_different_data_fine_tunes_the_upper_blocks_only(per_class):
    m = _measured(0.5, per_class=per_class, bn_shift=2 * SIMILAR_BN_SHIFT)
    plan = _plan(m, epochs=6)
    assert plan.strategy == "two-stage" and plan.freeze == freeze_point(m) > 0
    assert plan.lr == DEFAULT_LR["head"]  # the upper blocks at the partial strategy's rates
    assert plan.finetune_trial == plan.epochs - plan.head_epochs == 6  # the partial strategy's epochs, judged at the end


def test_large_similar_data_fine_tunes_every_layer_judged_after_a_third():
    plan = _plan(_measured(0.5, per_class=SMALL_PER_CLASS * 2, bn_shift=SIMILAR_BN_SHIFT / 2), epochs=6)
    assert plan.strategy == "two-stage" and plan.freeze == 0 and plan.lr is None
    assert plan.epochs - plan.head_epochs == 4 and plan.finetune_trial == 2


def test_small_similar_data_fine_tunes_every_layer_gently_judged_at_the_end():
    m = _measured(0.5, per_class=SMALL_PER_CLASS // 2, bn_shift=SIMILAR_BN_SHIFT / 2)
    assert decide(m).strategy == "feature-extract"  # the rule before training
    plan = _plan(m, epochs=6)
    # the freeze point would leave nearly everything frozen (no block's inputs shift): every layer
    # trains instead, at two-stage's low rate, after the fitted head, for two-stage's share
    assert plan.strategy == "two-stage" and plan.freeze == 0 and plan.lr is None
    assert plan.head_epochs == 6 and plan.finetune_trial == plan.epochs - plan.head_epochs == 4


def test_scratch_only_when_very_large_and_far():
    far = dict(bn_shift=2 * BN_SHIFT_FAR, head_confidence=LOW_HEAD_CONFIDENCE / 2)
    assert _plan(_measured(0.3, VERY_LARGE_PER_CLASS, **far), epochs=6).strategy == "scratch"
    assert _plan(_measured(0.3, VERY_LARGE_PER_CLASS), epochs=6).strategy == "two-stage"


def test_pacer_gives_fine_tuning_the_epochs_that_fit():
    pacer = Pacer(Budget(100), val_images=100, batch_size=32)
    assert pacer.epochs_that_fit(400, 6) == 6  # nothing measured yet: the per-batch deadline guards
    pacer.seconds_per_image = 0.01  # an epoch: (3 x 400 + 100) x 0.01 = 13 s
    # 100 s - (5 s writing the run + 1 s validating + 5% margin) = 89 s: 6 epochs of 13 s
    assert pacer.epochs_that_fit(400, 10) == 6 and pacer.epochs_that_fit(400, 4) == 4
    assert Pacer(Budget(10), 100, 32).epochs_that_fit(400, 6) == 6 and pacer.epochs_that_fit(40_000, 6) == 0


def test_budget_shrinks_the_feature_pass_to_fit():
    m = _measured(0.8, per_class=500, seconds_per_image=0.01)  # 2000 images + 100 val, 2 views: ~41 s at 224 px
    roomy = _plan(m, Budget(3600), epochs=6)
    assert (roomy.image_size, roomy.cache_views) == (224, 2)
    fewer_views = _plan(m, Budget(60), epochs=6)  # half of 60 s: one view (~21 s) fits
    assert (fewer_views.image_size, fewer_views.cache_views) == (224, 1)
    smaller = _plan(m, Budget(20), epochs=6)  # 10 s: only half the size (~5 s)
    assert (smaller.image_size, smaller.cache_views) == (112, 1)


def test_a_trial_is_judged_on_loss_or_accuracy():
    phase = Phase("finetune-trial", 2, 0, 3e-4, trial=2)
    before = {"val_loss": 0.42, "val_acc": 0.89}
    rows = lambda *pairs: [{"val_loss": loss, "val_acc": acc} for loss, acc in pairs]  # noqa: E731
    assert judge_trial(phase, rows((0.45, 0.85), (0.40, 0.88)), before)[0] == "kept"  # loss improved
    verdict, best, text = judge_trial(phase, rows((0.44, 0.91), (0.46, 0.90)), before)  # accuracy improved
    assert verdict == "kept" and "accuracy improved" in text and best == {"val_loss": 0.44, "val_acc": 0.91}
    verdict, _, text = judge_trial(phase, rows((0.43, 0.89), (0.44, 0.88)), before)  # neither: a tie is no gain
    assert verdict == "abandoned" and "abandoned" in text


def test_a_trial_still_improving_is_extended_not_judged_on_its_warm_up():
    # the held-out texture set: the head's best 0.8875 (loss 0.36); fine-tuning dipped, then its loss turned
    phase = Phase("finetune", 7, 0, 3e-4, trial=3)
    before = {"val_loss": 0.36, "val_acc": 0.8875}
    dip = [{"val_loss": 0.435, "val_acc": 0.880}, {"val_loss": 0.461, "val_acc": 0.875}, {"val_loss": 0.381, "val_acc": 0.883}]
    verdict, _, text = judge_trial(phase, dip, before)
    assert verdict == "extended" and "still improving" in text
    assert judge_trial(phase, dip, before, can_extend=False)[0] == "abandoned"  # the phase's end: nothing to extend
    flat = dip[:2] + [{"val_loss": 0.45, "val_acc": 0.875}]  # neither a new low loss nor a new high accuracy
    assert judge_trial(phase, flat, before)[0] == "abandoned"
    assert judge_trial(phase, dip[:1], before)[0] == "abandoned"  # one epoch shows no trend


def test_parse_duration():
    assert parse_duration("90") == parse_duration("90s") == 90
    assert parse_duration("10m") == 600 and parse_duration("1.5h") == 5400 and parse_duration(30) == 30
    for bad in ("ten minutes", "-5m", "0"):
        with pytest.raises(TransferlabError, match="--budget"):
            parse_duration(bad)


# --- the adaptive trial, on real training --------------------------------------------------------------
def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("blocks.head")}


@pytest.mark.parametrize("lr,diverges", [(0.03, False), (1.0, True)])
def test_a_fine_tuning_trial_that_does_not_help_is_abandoned_and_the_head_kept(digits_folder, tmp_path, lr, diverges):
    # a far too high fine-tuning lr wrecks the network: its val loss cannot beat the head's (at 1.0 it
    # diverges, which in a trial phase abandons the phase instead of stopping the run)
    run = train(digits_folder, strategy="two-stage", epochs=6, head_epochs=3, finetune_trial=1, lr=lr,
                out=tmp_path / "run", progress=False, **TRAIN)
    meta = json.loads((run.path / "model.json").read_text())
    (trial,) = [d for d in meta["decisions"] if d["event"] == "trial"]
    assert trial["kept"] is False and trial["epoch"] == 4
    if diverges:
        assert trial["best"] is None and "diverged" in trial["text"]
    else:  # neither the loss nor the accuracy improved
        assert trial["best"]["val_loss"] > trial["before"]["val_loss"]
        assert trial["best"]["val_acc"] <= trial["before"]["val_acc"]
    assert meta["metrics"]["epochs_run"] == 4 - diverges  # the head epochs and the trial epoch, not six
    assert meta["metrics"]["best_phase"] == "head" and meta["metrics"]["best_epoch"] <= 3
    pretrained = _backbone(create_model("efficientnet_lite0", num_classes=4).state_dict())
    saved = _backbone(load_file(run.path / "model.safetensors"))
    assert all(np.array_equal(saved[k].numpy(), v.numpy()) for k, v in pretrained.items())  # the head-only model
    assert "abandoned" in (run.path / "report.md").read_text()


def test_a_fine_tuning_trial_that_helps_is_kept(digits_folder, tmp_path):
    # one short head epoch leaves the loss high; fine-tuning (which trains the head too) goes below it
    run = train(digits_folder, strategy="two-stage", epochs=4, head_epochs=1, finetune_trial=1,
                out=tmp_path / "run", progress=False, **TRAIN)
    meta = json.loads((run.path / "model.json").read_text())
    (trial,) = [d for d in meta["decisions"] if d["event"] == "trial"]
    assert trial["kept"] is True and trial["best"]["val_loss"] < trial["before"]["val_loss"]
    assert meta["metrics"]["epochs_run"] == 4 and meta["metrics"]["best_phase"].startswith("finetune")
    # one fine-tuning schedule, judged after its first epoch
    assert [(p["name"], p["epochs"], p["trial"]) for p in meta["phases"]] == [("head", 1, 0), ("finetune", 3, 1)]


def test_auto_records_its_plan_and_decisions(digits_folder, tmp_path):
    run = train(digits_folder, strategy="auto", epochs=3, out=tmp_path / "run", progress=False, **TRAIN)
    meta = json.loads((run.path / "model.json").read_text())
    plan = meta["advice"]["plan"]
    assert meta["strategy"] == plan["strategy"] and meta["config"]["finetune_trial"] == plan["finetune_trial"]
    assert meta["advice"]["measurements"]["input_size"] == TRAIN["image_size"]  # measured at the training size
    if plan["strategy"] == "two-stage":
        assert [d["event"] for d in meta["decisions"]] == ["trial"]
    assert "Adaptive plan" in (run.path / "report.md").read_text()


# --- the budget ------------------------------------------------------------------------------------------
def test_budget_stops_in_time_and_keeps_the_best_model(digits_folder, tmp_path):
    budget = 15.0
    t0 = time.monotonic()
    run = train(digits_folder, strategy="finetune", epochs=200, budget=f"{budget:g}s", out=tmp_path / "run",
                progress=False, **TRAIN)
    wall = time.monotonic() - t0
    assert wall <= 1.1 * budget, f"{wall:.1f}s for a {budget:g}s budget"
    meta = json.loads((run.path / "model.json").read_text())
    assert 1 <= meta["metrics"]["epochs_run"] < 200 and meta["budget"]["seconds"] == budget
    assert meta["decisions"][-1]["event"] == "budget"
    assert (run.path / "model.safetensors").exists() and (run.path / "report.html").exists()


def test_a_resumed_run_spends_what_is_left_of_its_budget(digits_folder, tmp_path):
    budget = 16.0

    def crash_after_epoch_2(trainer, row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(digits_folder, strategy="finetune", epochs=200, budget=budget, out=tmp_path / "run", progress=False,
              callbacks=[crash_after_epoch_2], **TRAIN)
    t0 = time.monotonic()
    run = train(digits_folder, out=tmp_path / "run", resume=True, progress=False)
    resumed_wall = time.monotonic() - t0
    meta = json.loads((run.path / "model.json").read_text())
    (resumed,) = [d for d in meta["decisions"] if "resumed" in d["text"]]
    assert resumed["epoch"] == 3 and resumed["used_s"] > 0
    assert resumed["used_s"] + resumed_wall <= 1.1 * budget
    assert meta["budget"]["used_s"] > resumed["used_s"]  # the first part counts in what the run used


def test_auto_runs_are_named_auto(digits_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = train(digits_folder, strategy="auto", epochs=1, progress=False, **TRAIN)
    assert run.path.name.endswith("-auto") and json.loads((run.path / "model.json").read_text())["advice"]


@pytest.mark.skipif(len(installed_models()) < 2, reason="needs two installed backbones")
def test_auto_with_a_budget_picks_the_backbone_and_fits_fine_tuning_in(digits_folder, tmp_path):
    budget = 45.0
    t0 = time.monotonic()
    run = train(digits_folder, strategy="auto", budget=budget, epochs=100, out=tmp_path / "run", progress=False,
                **TRAIN)
    assert time.monotonic() - t0 <= 1.1 * budget
    meta = json.loads((run.path / "model.json").read_text())
    # the head on cached features stops early within seconds; 100 fine-tuning epochs (about a second each)
    # do not fit in what is left, whatever the load
    assert any(d["event"] == "budget" for d in meta["decisions"]), meta["decisions"]
    assert meta["metrics"]["epochs_run"] < 200
    ranking = meta["advice"]["ranking"]
    assert {r["model"] for r in ranking} <= set(installed_models()) and len(ranking) >= 2
    assert [r["logme"] for r in ranking] == sorted((r["logme"] for r in ranking), reverse=True)
    assert meta["architecture"] == ranking[0]["model"] == meta["advice"]["model"]


def test_cli_budget_errors_in_one_line(digits_folder, capsys):
    assert cli_main(["train", str(digits_folder), "--budget", "soon"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budget" in err[0]


def test_a_trial_is_not_started_when_the_head_is_already_perfect(tmp_path):
    """Issue 29: where the head scores 100% on validation, fine-tuning can only cost time."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("dark", 20), ("light", 235)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.clip(rng.normal(level, 8, (32, 32, 3)), 0, 255).astype(np.uint8)).save(
                tmp_path / "data" / cls / f"{i}.png")
    run = train(tmp_path / "data", strategy="two-stage", epochs=6, head_epochs=3, finetune_trial=2,
                out=tmp_path / "run", progress=False, **TRAIN)
    assert max(r["val_acc"] for r in run.history) == 1.0
    assert {r["phase"] for r in run.history} == {"head"}  # no fine-tuning epoch was run
    meta = json.loads((run.path / "model.json").read_text())
    (decision,) = [d for d in meta["decisions"] if d["event"] == "trial"]
    assert "not started" in decision["text"] and "nothing for it to gain" in decision["text"]
