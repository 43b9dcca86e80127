"""Fine-tuning learns what the pretrained model misses; the run folder is complete and resumable."""
import csv
import json

import pytest
import torch

from transferlab.api import train
from transferlab.detect.data import load_faces
from transferlab.detect.detector import load_detector
from transferlab.detect.evaluate import evaluate_detector
from transferlab.detect.training import freeze_blocks
from transferlab.detect.weights import load_pretrained
from transferlab.core.errors import TransferlabError
from transferlab.core.io import load_state_dict_file

from .conftest import TRAINED_EPOCHS



def test_fine_tuning_beats_pretrained_on_held_out_faces(trained_run, synthetic_test):
    held_out = load_faces(synthetic_test)
    fine_tuned = evaluate_detector(load_detector(trained_run.path), held_out).ap
    pretrained = evaluate_detector(load_detector("blazeface_front"), held_out).ap
    print(f"held-out AP@0.5: pretrained {pretrained:.3f}, fine-tuned {fine_tuned:.3f}, "
          f"training {trained_run.metrics['train_seconds']:.1f} s")
    assert pretrained < 0.5
    assert fine_tuned > 0.7 and fine_tuned > pretrained + 0.3
    assert trained_run.metrics["val_ap50"] > trained_run.metrics["pretrained_val_ap50"]
    assert trained_run.predictor.kind == "detector"


def test_run_folder_contents(trained_run):
    run = trained_run.path
    for name in ("model.safetensors", "model.json", "checkpoints/last.pt", "metrics.csv", "report.md",
                 "pr_curve.png", "skipped.txt"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "model.json").read_text())
    assert meta["kind"] == "detector" and meta["architecture"] == "blazeface_front"
    assert meta["input_size"] == 128 and meta["anchors"]["strides"] == [8, 16, 16, 16]
    assert meta["thresholds"] == {"score": 0.5, "iou": 0.3}
    assert meta["config"]["epochs"] == TRAINED_EPOCHS
    assert meta["metrics"]["val_ap50"] > meta["metrics"]["pretrained_val_ap50"]
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(0, TRAINED_EPOCHS + 1))  # epoch 0: the pretrained model
    assert "AP@0.5" in (run / "report.md").read_text()
    # the checkpoint holds only tensors and plain types: it loads with weights_only=True
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["task"] == "detector" and state["history"][-1]["epoch"] == TRAINED_EPOCHS and state["phase"] == 1
    assert set(load_state_dict_file(run / "model.safetensors")) == set(load_pretrained("blazeface_front").state_dict())


def _tiny(data, out, **kw):
    return train(data, model="blazeface_front", out=out, epochs=3, batch_size=8, val_split=0.0,
                 box_augment={"zoom_out_p": 0.0}, progress=False, **kw)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, synthetic_test):
    full = _tiny(synthetic_test, tmp_path / "full")

    def crash_after_second_epoch(trainer, row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _tiny(synthetic_test, tmp_path / "cut", callbacks=[crash_after_second_epoch])
    assert not (tmp_path / "cut" / "model.json").exists()
    resumed = train(synthetic_test, out=tmp_path / "cut", resume=True, progress=False)

    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    a = load_state_dict_file(tmp_path / "full" / "model.safetensors")
    b = load_state_dict_file(tmp_path / "cut" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max() for k in a) < 1e-5
    assert full.history[-1]["train_loss"] == pytest.approx(resumed.history[-1]["train_loss"], rel=1e-4)


def test_existing_run_needs_resume_and_resume_needs_a_checkpoint(tmp_path, trained_run, synthetic_test):
    with pytest.raises(TransferlabError, match="--resume"):
        _tiny(synthetic_test, trained_run.path)
    with pytest.raises(TransferlabError, match="nothing to resume"):
        train(synthetic_test, out=tmp_path / "new", resume=True, progress=False)


def test_freeze_leading_blocks():
    model = load_pretrained("blazeface_front")
    freeze_blocks(model, 3)
    blocks = model.blocks()
    assert not any(p.requires_grad for b in blocks[:3] for p in b.parameters())
    assert all(p.requires_grad for b in blocks[3:] for p in b.parameters())
    assert model.classifier1.weight.requires_grad
    with pytest.raises(TransferlabError, match="use 0..17"):
        freeze_blocks(model, 40)


def test_frozen_blocks_do_not_change(tmp_path, synthetic_test):
    run = _tiny(synthetic_test, tmp_path / "frozen", freeze=17).path
    before, after = load_pretrained("blazeface_front").state_dict(), load_state_dict_file(run / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("stem", "stage")))
    assert not torch.equal(before["classifier1.weight"], after["classifier1.weight"])
