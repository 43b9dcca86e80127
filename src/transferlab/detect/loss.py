"""Anchor matching and the BlazeFace training loss.

The pretrained heads predict one sigmoid logit and MediaPipe's linear offsets per anchor; the loss
trains exactly those outputs so fine-tuning starts from a working detector.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from .anchors import AnchorConfig, generate_anchors, nominal_boxes
from .boxes import decode, encode

IGNORE, NEGATIVE = -2, -1


@dataclass(frozen=True)
class LossConfig:
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    negatives_per_positive: int = 3
    # box offsets (scaled by the anchor size) are ~0.1, so Smooth-L1 gives ~0.03 per batch against a
    # classification loss of ~1-2: at weight 1 the boxes got <3% of the signal and never adapted to
    # a dataset's box style; 20 puts the terms on one scale (keypoints keep half the box weight)
    box_weight: float = 20.0
    keypoint_weight: float = 10.0
    # MediaPipe's model fires on every anchor whose centre lies on a face, at several scales, and
    # its weighted NMS averages them; punishing those anchors as negatives (they are the hardest
    # "negatives" of a pretrained model) retrains the detector against its own behaviour
    ignore_centre_inside: bool = True
    # an anchor whose *predicted* box already overlaps a face this well is a correct detection for
    # weighted NMS, not a false alarm; 0 disables
    ignore_predicted_iou: float = 0.4
    # MediaPipe scores sigmoid(clip(logit, -100, 100)); the pretrained heads emit logits down to
    # about -10000 on anchors they rule out, and BCE on those would be ~1e4 per anchor
    logit_clip: float = 100.0


def match_anchors(gt_boxes: torch.Tensor, anchor_boxes: torch.Tensor, config: LossConfig = LossConfig(),
                  predicted: torch.Tensor | None = None) -> torch.Tensor:
    """Per anchor: the index of its face, NEGATIVE, or IGNORE (IoU between the two thresholds,
    anchor centre inside a face with `ignore_centre_inside`, or a `predicted` box (A, 4) overlapping
    a face by `ignore_predicted_iou`).

    Every face gets its best anchor even below `positive_iou`, so small or odd-shaped faces still
    train some anchor.
    """
    assigned = torch.full((len(anchor_boxes),), NEGATIVE, dtype=torch.long, device=anchor_boxes.device)
    if len(gt_boxes) == 0:
        return assigned
    iou = box_iou(gt_boxes, anchor_boxes)                  # (G, A)
    best_iou, best_gt = iou.max(0)
    assigned[best_iou >= config.negative_iou] = IGNORE
    if config.ignore_centre_inside:
        c = (anchor_boxes[:, :2] + anchor_boxes[:, 2:]) / 2
        inside = ((c[None] > gt_boxes[:, None, :2]) & (c[None] < gt_boxes[:, None, 2:])).all(-1).any(0)
        assigned[inside] = IGNORE
    if predicted is not None and config.ignore_predicted_iou > 0:
        assigned[box_iou(gt_boxes, predicted).max(0).values >= config.ignore_predicted_iou] = IGNORE
    positive = best_iou >= config.positive_iou
    assigned[positive] = best_gt[positive]
    assigned[iou.argmax(1)] = torch.arange(len(gt_boxes), device=anchor_boxes.device)
    return assigned


class DetectionLoss(nn.Module):
    """BCE with hard-negative mining + Smooth-L1 on box and (labelled) keypoint offsets, each
    normalised by the number of positive anchors in the batch."""

    def __init__(self, anchors: AnchorConfig, config: LossConfig = LossConfig()):
        super().__init__()
        self.config, self.size = config, anchors.input_size
        centres, sizes = generate_anchors(anchors)
        self.register_buffer("centres", centres)
        self.register_buffer("anchor_boxes", nominal_boxes(centres, sizes))
        # offsets are in input pixels; dividing by the anchor's nominal size puts small and large
        # faces on one scale (SSD's variance encoding, without changing what the head predicts)
        self.register_buffer("offset_scale", sizes * anchors.input_size)

    def forward(self, regressors: torch.Tensor, logits: torch.Tensor,
                targets: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """targets: per image (boxes (G, 4), keypoints (G, 6, 2) with NaN if unlabelled), normalised."""
        cls_terms, box_terms, kp_terms, num_pos = [], [], [], 0
        for reg, logit, (boxes, keypoints) in zip(regressors, logits, targets):
            predicted = None
            if self.config.ignore_predicted_iou > 0 and len(boxes):
                predicted = decode(reg.detach(), self.centres, self.size)[0]
            assigned = match_anchors(boxes, self.anchor_boxes, self.config, predicted)
            pos = assigned >= 0
            n_pos = int(pos.sum())
            num_pos += n_pos
            cls_terms.append(self._classification(logit, assigned, pos, n_pos))
            if n_pos:
                gt = assigned[pos]
                kp = keypoints[gt]
                target = encode(boxes[gt], kp.nan_to_num(0.0), self.centres[pos], self.size)
                diff = (reg[pos] - target) / self.offset_scale[pos, None]
                box_terms.append(F.smooth_l1_loss(diff[:, :4], torch.zeros_like(diff[:, :4]), reduction="sum"))
                labelled = ~kp.isnan().flatten(-2)
                kp_diff = diff[:, 4:][labelled]
                kp_terms.append(F.smooth_l1_loss(kp_diff, torch.zeros_like(kp_diff), reduction="sum"))
        norm = max(num_pos, 1)
        zero = logits.new_zeros(())
        cls = torch.stack(cls_terms).sum() / norm
        box = sum(box_terms, zero) / norm
        kp = sum(kp_terms, zero) / norm
        total = cls + self.config.box_weight * box + self.config.keypoint_weight * kp
        return {"loss": total, "cls": cls.detach(), "box": box.detach(), "kp": kp.detach()}

    def _classification(self, logit, assigned, pos, n_pos):
        target = pos.float()
        if self.config.logit_clip:
            logit = logit.clamp(-self.config.logit_clip, self.config.logit_clip)
        loss = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
        negative_loss = loss.masked_fill(assigned != NEGATIVE, 0.0)
        # hardest negatives only, so the ~900 easy background anchors do not swamp the few faces;
        # an image without faces still contributes its worst false alarms
        k = min(self.config.negatives_per_positive * max(n_pos, 1), int((assigned == NEGATIVE).sum()))
        return loss[pos].sum() + negative_loss.topk(k).values.sum()
