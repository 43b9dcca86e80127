"""MediaPipe's linear box parametrisation and weighted non-maximum suppression.

Boxes are xyxy, keypoints (K, 2) xy, both normalised to the model input. Regressor values are in
input pixels relative to the anchor centre: cx = r0 / S + anchor_cx, w = r2 / S (no log-space).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

NUM_KEYPOINTS = 6
# horizontal flip swaps the person's right/left eye and ear tragion
FLIP_KEYPOINTS = (1, 0, 2, 3, 5, 4)


def decode(regressors: torch.Tensor, centres: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., A, 16) regressors -> boxes (..., A, 4) and keypoints (..., A, 6, 2)."""
    r = regressors / size
    cxy = r[..., 0:2] + centres
    half = r[..., 2:4] / 2
    boxes = torch.cat([cxy - half, cxy + half], -1)
    keypoints = r[..., 4:].unflatten(-1, (NUM_KEYPOINTS, 2)) + centres.unsqueeze(-2)
    return boxes, keypoints


def encode(boxes: torch.Tensor, keypoints: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of `decode`: boxes (..., 4), keypoints (..., 6, 2), centres (..., 2) -> (..., 16)."""
    cxy = (boxes[..., 0:2] + boxes[..., 2:4]) / 2 - centres
    wh = boxes[..., 2:4] - boxes[..., 0:2]
    kp = (keypoints - centres.unsqueeze(-2)).flatten(-2)
    return torch.cat([cxy, wh, kp], -1) * size


@dataclass
class Detections:
    """Per-image result in one coordinate frame: boxes (D, 4), keypoints (D, 6, 2), scores (D,)."""

    boxes: torch.Tensor
    keypoints: torch.Tensor
    scores: torch.Tensor


def weighted_nms(boxes: torch.Tensor, keypoints: torch.Tensor, scores: torch.Tensor,
                 iou_threshold: float = 0.3) -> Detections:
    """Blend each cluster of overlapping candidates into one detection, weighted by score.

    BlazeFace fires several neighbouring anchors per face; averaging them (MediaPipe's WEIGHTED mode)
    is steadier than keeping the single best. The cluster keeps its top score.
    """
    order = scores.argsort(descending=True)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    iou = box_iou(boxes, boxes)
    remaining = torch.ones(len(scores), dtype=torch.bool)
    out_b, out_k, out_s = [], [], []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        group = remaining & (iou[i] > iou_threshold)
        group[i] = True  # a degenerate (zero-area) box still forms its own cluster
        w = scores[group] / scores[group].sum()
        out_b.append((boxes[group] * w[:, None]).sum(0))
        out_k.append((keypoints[group] * w[:, None, None]).sum(0))
        out_s.append(scores[i])
        remaining &= ~group
    if not out_s:
        return Detections(boxes.new_zeros(0, 4), keypoints.new_zeros(0, NUM_KEYPOINTS, 2), scores.new_zeros(0))
    return Detections(torch.stack(out_b), torch.stack(out_k), torch.stack(out_s))
