"""Training augmentation for face boxes and keypoints (pixel coordinates, HxWx3 uint8 images).

The geometric steps follow SSD practice: zoom-out makes faces smaller than the data shows, the
IoU-constrained crop makes them larger while keeping at least part of a face in view.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from .boxes import FLIP_KEYPOINTS


@dataclass(frozen=True)
class AugmentConfig:
    jitter: float = 0.3            # max relative change of brightness, contrast and saturation
    zoom_out_p: float = 0.3
    zoom_out_max: float = 2.0      # canvas side up to this multiple of the image side
    crop_p: float = 0.5
    crop_min_ious: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    flip_p: float = 0.5

    def to_dict(self) -> dict:
        """Plain data for model.json."""
        return asdict(self)


def photometric(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness, contrast and saturation."""
    x = image.astype(np.float32)
    x = x * rng.uniform(1 - strength, 1 + strength)                        # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - strength, 1 + strength) + mean        # contrast
    gray = x.mean(-1, keepdims=True)
    x = (x - gray) * rng.uniform(1 - strength, 1 + strength) + gray        # saturation
    return np.clip(x, 0, 255).astype(np.uint8)


def zoom_out(image, boxes, keypoints, rng, max_ratio):
    """Place the image on a larger canvas so faces get smaller."""
    h, w = image.shape[:2]
    ratio = rng.uniform(1, max_ratio)
    ch, cw = int(h * ratio), int(w * ratio)
    y, x = int(rng.integers(0, ch - h + 1)), int(rng.integers(0, cw - w + 1))
    # fill with the image's mean colour so the border is not an easy cue for "no face here"
    canvas = np.empty((ch, cw, 3), np.uint8)
    canvas[:] = image.reshape(-1, 3).mean(0).astype(np.uint8)
    canvas[y:y + h, x:x + w] = image
    shift = np.float32([x, y])
    return canvas, boxes + np.tile(shift, 2), keypoints + shift


def random_crop(image, boxes, keypoints, rng, min_ious, trials: int = 30):
    """A crop overlapping some face by at least a sampled IoU; faces whose centre falls outside
    the crop are dropped, the rest clipped. Returns the input unchanged if no trial fits."""
    h, w = image.shape[:2]
    min_iou = float(rng.choice(min_ious))
    for _ in range(trials):
        cw, ch = int(w * rng.uniform(0.3, 1)), int(h * rng.uniform(0.3, 1))
        if not 0.5 <= cw / ch <= 2:
            continue
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = np.float32([x0, y0, x0 + cw, y0 + ch])
        if len(boxes) and box_iou(torch.from_numpy(crop[None]), torch.from_numpy(boxes)).max() < min_iou:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        keep = np.all((centres > crop[:2]) & (centres < crop[2:]), 1)
        if len(boxes) and not keep.any():
            continue
        shift = crop[:2]
        new_boxes = np.clip(boxes[keep] - np.tile(shift, 2), 0, np.tile([cw, ch], 2)).astype(np.float32)
        return image[y0:y0 + ch, x0:x0 + cw], new_boxes, keypoints[keep] - shift
    return image, boxes, keypoints


def hflip(image, boxes, keypoints):
    """Mirror the image, boxes and keypoints (right and left keypoints swap)."""
    w = image.shape[1]
    boxes = boxes.copy()
    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    keypoints = keypoints[:, list(FLIP_KEYPOINTS)].copy()
    keypoints[..., 0] = w - keypoints[..., 0]
    return image[:, ::-1].copy(), boxes, keypoints


def augment(image: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig = AugmentConfig()):
    """The geometric training augmentation: zoom-out, IoU-constrained crop, flip. The photometric part
    (`photometric`) is applied by the caller once the image is at the model's size, where it costs a
    tenth of what it costs on the decoded photo."""
    if rng.random() < config.zoom_out_p:
        image, boxes, keypoints = zoom_out(image, boxes, keypoints, rng, config.zoom_out_max)
    if rng.random() < config.crop_p:
        image, boxes, keypoints = random_crop(image, boxes, keypoints, rng, config.crop_min_ious)
    if rng.random() < config.flip_p:
        image, boxes, keypoints = hflip(image, boxes, keypoints)
    return image, boxes, keypoints
