"""Issue 14: fine-tuning must not wreck the pretrained detector on real photos.

One test per cause found (optimiser step size, negatives on faces, unclipped logits, loss scales),
then the guarantees: one epoch on faces the model already finds keeps the validation AP, and a
useless run keeps the pretrained weights.
"""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.detect.boxes import decode
from transferlab.detect.loss import NEGATIVE, DetectionLoss, LossConfig, match_anchors
from transferlab.api import train
from transferlab.detect.training import DEFAULT_LR, FaceTrainSet, collate_faces, param_groups
from transferlab.detect.weights import load_pretrained
from transferlab.core.io import load_state_dict_file


def _batch(samples, model, n=16):
    ts = FaceTrainSet(samples[:n], model.config.input_size, None)
    return collate_faces([ts[i] for i in range(len(ts))])


def _write_csv(path, samples):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "xmin", "ymin", "xmax", "ymax"])
        for s in samples:
            for b in s.boxes:
                w.writerow([str(s.image), *(float(v) for v in b)])
    return path


@pytest.mark.shared("faces")
def test_first_step_at_the_default_lr_keeps_the_detector(real_faces):
    """Cause 1: the weights span 1e-4..10 (BatchNorm folded in) and AdamW moves each by ~lr; the old
    5e-4 multiplied the loss several times in one step. The default relative steps (lr x each tensor's
    RMS) do not, even at the full rate without warm-up."""
    model = load_pretrained("blazeface_back")
    images, targets = _batch(real_faces, model)
    criterion = DetectionLoss(model.config.anchors)

    def loss_after_one_step(lr, scaling="none"):
        net = load_pretrained("blazeface_back")
        opt = torch.optim.AdamW(param_groups(net, lr, 1e-4, scaling))
        before = criterion(*net(images), targets)["loss"]
        opt.zero_grad()
        before.backward()
        opt.step()
        with torch.no_grad():
            return before.item(), criterion(*net(images), targets)["loss"].item()

    before, after_default = loss_after_one_step(DEFAULT_LR, "relative")
    _, after_old = loss_after_one_step(5e-4)
    print(f"loss {before:.2f} -> {after_default:.2f} at lr {DEFAULT_LR}, -> {after_old:.2f} at 5e-4")
    assert after_default < before * 2  # measured 1.9 -> 3.3 at the full relative rate, no warm-up
    assert after_old > before * 10  # measured 1.9 -> 135: the failure, kept as the reason for the default


@pytest.mark.shared("faces")
def test_anchors_on_a_face_are_never_negatives(real_faces):
    """Cause 2: the pretrained model fires on several anchors per face (weighted NMS averages them);
    hard-negative mining picked exactly those as its hardest negatives."""
    model = load_pretrained("blazeface_back").eval()
    images, targets = _batch(real_faces, model)
    criterion = DetectionLoss(model.config.anchors)
    with torch.no_grad():
        reg, logits = model(images)
    old = LossConfig(ignore_centre_inside=False, ignore_predicted_iou=0.0)
    fired_negative_old = fired_negative_new = 0
    for r, logit, (boxes, _) in zip(reg, logits, targets):
        fires = torch.sigmoid(logit.clamp(-100, 100)) > 0.5
        centres = criterion.centres
        on_face = ((centres[None] > boxes[:, None, :2]) & (centres[None] < boxes[:, None, 2:])).all(-1).any(0)
        predicted = decode(r, centres, model.config.input_size)[0]
        new = match_anchors(boxes, criterion.anchor_boxes, LossConfig(), predicted)
        assert not (new[on_face] == NEGATIVE).any()
        fired_negative_old += int((fires & on_face & (match_anchors(boxes, criterion.anchor_boxes, old) == NEGATIVE)).sum())
        fired_negative_new += int((fires & on_face & (new == NEGATIVE)).sum())
    print(f"anchors on a face that the pretrained model fires on, labelled negative: old {fired_negative_old}, "
          f"new {fired_negative_new}")
    assert fired_negative_old > 0 and fired_negative_new == 0


def test_classification_loss_clips_logits_like_mediapipe():
    """Cause 3: the pretrained heads emit logits down to ~-1e4; unclipped, one such anchor labelled
    positive costs 1e4 and swamps the batch. MediaPipe scores sigmoid(clip(logit, -100, 100))."""
    model = load_pretrained("blazeface_front")
    with torch.no_grad():
        _, logits = model(torch.zeros(1, 3, 128, 128))
    assert logits.abs().max() > 100  # what the pretrained model really emits
    criterion = DetectionLoss(model.config.anchors)
    reg = torch.zeros(1, 896, 16)
    logit = torch.full((1, 896), -10000.0)
    box = criterion.anchor_boxes[:1].clone()
    loss = criterion(reg, logit, [(box, torch.full((1, 6, 2), float("nan")))])
    assert torch.isfinite(loss["loss"]) and loss["cls"] <= 100 * 3


@pytest.mark.shared("faces")
def test_box_and_class_terms_are_on_one_scale(real_faces):
    """Cause 4: with weight 1 the box term was ~1-3% of the loss, so boxes never adapted."""
    model = load_pretrained("blazeface_back").eval()
    images, targets = _batch(real_faces, model, 32)
    with torch.no_grad():
        losses = DetectionLoss(model.config.anchors)(*model(images), targets)
        weighted_box = LossConfig().box_weight * losses["box"]
    print(f"cls {losses['cls']:.3f}, box {losses['box']:.4f} x {LossConfig().box_weight} = {weighted_box:.3f}")
    assert losses["box"] < losses["cls"] / 10             # raw scales differ by >10x
    assert losses["cls"] / 5 < weighted_box < losses["cls"] * 5


def test_training_decodes_at_the_size_the_model_needs(tmp_path):
    big = np.zeros((1024, 768, 3), np.uint8)
    big[200:400, 300:500] = 200
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)
    from transferlab.data.images import open_image_scaled
    from transferlab.detect.data import Sample

    image, scale = open_image_scaled(tmp_path / "big.jpg", long_side=256)
    assert max(image.size) == 256 and scale == 0.25
    s = Sample(tmp_path / "big.jpg", np.float32([[300, 200, 500, 400]]), np.full((1, 6, 2), np.nan, np.float32))
    x, boxes, _ = FaceTrainSet([s], 128, None)[0]
    torch.testing.assert_close(boxes, torch.tensor([[300, 200, 500, 400]]) * 0.125 / 128
                               + torch.tensor([[16, 0, 16, 0]]) / 128)


@pytest.mark.shared("faces")
def test_one_epoch_on_faces_the_model_finds_keeps_val_ap(tmp_path, real_faces):
    samples = real_faces
    # 128 images: 8 steps at batch 16, past the warm-up (measured 0.771 -> 0.821; with 48 images, three
    # warm-up steps, the change is within the noise of a 32-image validation set)
    data = _write_csv(tmp_path / "train.csv", samples[:128])
    val = _write_csv(tmp_path / "val.csv", samples[128:176])
    result = train(data, model="blazeface_back", out=tmp_path / "run", epochs=1, batch_size=16, val_data=val,
                   progress=False)
    epoch0, epoch1 = result.history[0]["val_ap50"], result.history[1]["val_ap50"]
    print(f"val AP@0.5 epoch 0 {epoch0:.3f} -> epoch 1 {epoch1:.3f}")
    assert epoch0 > 0.5  # the pretrained model already finds these faces
    assert epoch1 >= epoch0
    assert result.metrics["val_ap50"] >= result.metrics["pretrained_val_ap50"]


@pytest.mark.shared("faces")
def test_a_useless_run_keeps_the_pretrained_weights(tmp_path, real_faces, capsys):
    samples = real_faces
    data = _write_csv(tmp_path / "train.csv", samples[:16])
    val = _write_csv(tmp_path / "val.csv", samples[16:40])
    run = train(data, model="blazeface_front", out=tmp_path / "run", epochs=2, batch_size=8, lr=1.0, warmup_epochs=0,
                val_data=val, progress=True).path
    assert "kept the pretrained weights" in capsys.readouterr().err
    saved, pretrained = load_state_dict_file(run / "model.safetensors"), load_pretrained("blazeface_front").state_dict()
    assert all(torch.equal(saved[k], pretrained[k]) for k in pretrained)
    meta = json.loads((run / "model.json").read_text())
    assert meta["metrics"]["best_epoch"] == 0 and meta["metrics"]["kept"] == "pretrained"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert "No epoch beat the pretrained model" in (run / "report.md").read_text()
    assert (run / "ap_curve.png").read_bytes()[:4] == b"\x89PNG"
