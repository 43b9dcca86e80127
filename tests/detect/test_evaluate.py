"""AP@0.5 with all-point interpolation against hand-computed cases."""
import numpy as np
import pytest
import torch

from transferlab.detect.boxes import Detections
from transferlab.detect.evaluate import average_precision, plot_pr_curves, pr_curve


def dets(boxes, scores):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return Detections(b, torch.zeros(len(b), 6, 2), torch.tensor(scores, dtype=torch.float32))


def test_perfect_detection_is_ap_1():
    gt = [np.array([[0, 0, 10, 10]]), np.array([[5, 5, 20, 20], [30, 30, 40, 40]])]
    d = [dets([[0, 0, 10, 10]], [0.9]), dets([[5, 5, 20, 20], [30, 30, 40, 40]], [0.8, 0.7])]
    assert pr_curve(d, gt).ap == pytest.approx(1.0)


def test_hand_computed_interpolated_ap():
    # ranked hits: TP, FP, TP, FP, TP over 4 faces (one face never found)
    # precision 1, 1/2, 2/3, 2/4, 3/5 ; recall .25, .25, .5, .5, .75
    # envelope: p=1 up to r=.25, 2/3 up to .5, 3/5 up to .75 -> AP = .25 + .25*2/3 + .25*3/5
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]])]
    d = [dets([[0, 0, 10, 10], [100, 100, 110, 110], [20, 20, 30, 30], [200, 200, 210, 210], [40, 40, 50, 50]],
              [0.9, 0.8, 0.7, 0.6, 0.5])]
    curve = pr_curve(d, gt)
    assert curve.ap == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.25 * 3 / 5)
    np.testing.assert_allclose(curve.recall, [0.25, 0.25, 0.5, 0.5, 0.75])


def test_duplicate_detection_counts_as_false_positive():
    gt = [np.array([[0, 0, 10, 10]])]
    d = [dets([[0, 0, 10, 10], [0, 0, 10, 11]], [0.9, 0.8])]
    curve = pr_curve(d, gt)
    np.testing.assert_allclose(curve.precision, [1.0, 0.5])
    assert curve.ap == pytest.approx(1.0)


def test_iou_below_half_is_a_miss():
    gt = [np.array([[0, 0, 10, 10]])]
    # IoU = 50 / 150 = 1/3
    assert pr_curve([dets([[5, 0, 15, 10]], [0.9])], gt).ap == 0.0


def test_ranking_is_global_across_images():
    # image 2's false positive outranks image 1's hit: P = [0, 1/2] at R = [0, 1] -> AP 0.5
    gt = [np.array([[0, 0, 10, 10]]), np.zeros((0, 4))]
    d = [dets([[0, 0, 10, 10]], [0.5]), dets([[0, 0, 10, 10]], [0.9])]
    assert pr_curve(d, gt).ap == pytest.approx(0.5)


def test_average_precision_all_point_interpolation():
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)
    assert average_precision(np.array([]), np.array([])) == 0.0


def test_pr_curve_png(tmp_path):
    curve = pr_curve([dets([[0, 0, 10, 10]], [0.9])], [np.array([[0, 0, 10, 10]])])
    plot_pr_curves({"model": curve}, tmp_path / "pr.png")
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
