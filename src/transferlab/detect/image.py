"""The letterbox BlazeFace expects (aspect kept, zero border, RGB in [-1, 1]), and images as arrays.

Files are read by the one image reader (data/images.py): EXIF orientation, any mode, size guards.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..core.errors import TransferlabError
from ..data.images import open_image, to_rgb


def load_image(source) -> np.ndarray:
    """A path, PIL image or HxW[x3|4] uint8 array -> HxWx3 uint8 RGB array, upright."""
    if isinstance(source, (str, os.PathLike)):
        return np.asarray(open_image(source))
    if isinstance(source, Image.Image):
        return np.asarray(to_rgb(source))
    if isinstance(source, np.ndarray):
        if source.ndim == 2:
            source = np.repeat(source[..., None], 3, -1)
        if source.ndim != 3 or source.shape[-1] not in (3, 4):
            raise TransferlabError(f"image array has shape {source.shape}; expected HxW, HxWx3 or HxWx4")
        if source.dtype != np.uint8:
            raise TransferlabError(f"image array has dtype {source.dtype}; expected uint8 (0-255)")
        return np.ascontiguousarray(source[..., :3])
    raise TransferlabError(f"cannot read an image from {type(source).__name__}; pass a path, PIL image or uint8 array")


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed in the square input: input_px = image_px * scale + pad."""

    scale: float
    pad_x: int
    pad_y: int

    def to_image(self, xy: torch.Tensor, size: int) -> torch.Tensor:
        """Normalised input coordinates (..., 2) -> original image pixels."""
        pad = xy.new_tensor([self.pad_x, self.pad_y])
        return (xy * size - pad) / self.scale


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio into a size x size square, centred on a zero border."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size, size, 3), np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    out[py:py + nh, px:px + nw] = resized
    return out, Letterbox(scale, px, py)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float in [-1, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0
