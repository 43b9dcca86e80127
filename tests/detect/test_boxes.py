"""Anchors, the box parametrisation, weighted NMS and anchor matching."""
import pytest
import torch
from torchvision.ops import box_iou

from transferlab.detect.anchors import generate_anchors, nominal_boxes
from transferlab.detect.boxes import decode, encode, weighted_nms
from transferlab.detect.loss import IGNORE, NEGATIVE, match_anchors
from transferlab.detect.model import CONFIGS


@pytest.mark.parametrize("name, small, large", [
    ("blazeface_front", [19.0, 29.13], [44.67, 56.05, 70.33, 82.17, 96.0, 110.85]),
    ("blazeface_back", [40.0, 60.22], [90.67, 113.2, 141.33, 164.73, 192.0, 221.7]),
])
def test_anchor_layout(name, small, large):
    config = CONFIGS[name].anchors
    centres, sizes = generate_anchors(config)
    assert centres.shape == (896, 2) and config.anchors_per_cell() == [2, 6]
    px = sizes * config.input_size
    torch.testing.assert_close(px[:2], torch.tensor(small), atol=0.01, rtol=0)
    torch.testing.assert_close(px[512:518], torch.tensor(large), atol=0.01, rtol=0)
    # row-major cells: the second cell of the 16x16 map is one step right of the first
    torch.testing.assert_close(centres[0], torch.tensor([0.5 / 16, 0.5 / 16]))
    torch.testing.assert_close(centres[2], torch.tensor([1.5 / 16, 0.5 / 16]))
    torch.testing.assert_close(centres[512], torch.tensor([0.5 / 8, 0.5 / 8]))


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(50, 2, generator=g)
    xy = torch.rand(50, 2, generator=g)
    boxes = torch.cat([xy, xy + 0.05 + torch.rand(50, 2, generator=g) * 0.5], 1)
    keypoints = torch.rand(50, 6, 2, generator=g)
    reg = encode(boxes, keypoints, centres, 128)
    back_boxes, back_kps = decode(reg, centres, 128)
    assert (back_boxes - boxes).abs().max() < 1e-4
    assert (back_kps - keypoints).abs().max() < 1e-4


def test_decode_is_linear_in_input_pixels():
    reg = torch.zeros(1, 16)
    reg[0, :4] = torch.tensor([12.8, -6.4, 32.0, 64.0])
    boxes, kps = decode(reg, torch.tensor([[0.5, 0.5]]), 128)
    torch.testing.assert_close(boxes[0], torch.tensor([0.6 - 0.125, 0.45 - 0.25, 0.6 + 0.125, 0.45 + 0.25]))
    torch.testing.assert_close(kps[0], torch.full((6, 2), 0.5))


def test_weighted_nms_blends_overlapping_boxes_by_score():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.0, 1.2, 1.0], [5.0, 5.0, 6.0, 6.0]])
    kps = torch.zeros(3, 6, 2)
    scores = torch.tensor([0.9, 0.3, 0.6])
    out = weighted_nms(boxes, kps, scores, iou_threshold=0.3)
    assert len(out.scores) == 2
    torch.testing.assert_close(out.scores, torch.tensor([0.9, 0.6]))
    torch.testing.assert_close(out.boxes[0], torch.tensor([0.05, 0.0, 1.05, 1.0]))
    torch.testing.assert_close(out.boxes[1], boxes[2])


def test_weighted_nms_empty():
    out = weighted_nms(torch.zeros(0, 4), torch.zeros(0, 6, 2), torch.zeros(0))
    assert out.boxes.shape == (0, 4) and out.keypoints.shape == (0, 6, 2)


def test_matching_best_anchor_and_iou_thresholds():
    centres, sizes = generate_anchors(CONFIGS["blazeface_front"].anchors)
    anchors = nominal_boxes(centres, sizes)
    # a face exactly on the first 19 px anchor, and a tiny face no anchor overlaps by 0.5
    gt = torch.stack([anchors[0], torch.tensor([0.5, 0.5, 0.52, 0.52])])
    assigned = match_anchors(gt, anchors)
    assert assigned[0] == 0
    assert (assigned == 1).sum() == 1  # the tiny face still gets its best anchor
    iou_first = box_iou(gt[:1], anchors)[0]
    assert (assigned[(iou_first >= 0.5)] == 0).all()
    between = (iou_first >= 0.4) & (iou_first < 0.5)
    assert (assigned[between] == IGNORE).all()
    assert (assigned == NEGATIVE).sum() > 800
    assert (match_anchors(torch.zeros(0, 4), anchors) == NEGATIVE).all()
