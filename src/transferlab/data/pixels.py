"""Pixel evidence that two images are copies of one picture: re-encoded, resized or cropped by a few
pixels. auditing.near_duplicates holds the rule built on it and the measurements."""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image

from ..core.errors import ImageReadError
from .images import open_image, open_image_scaled

# Images are compared at most this many pixels on the longer side (at the smaller image's own size
# when it is smaller, so a 17 px copy of a 28 px digit is compared at 17 px, where resampling loses
# nothing). A view keeps VIEW_SIDE, so that a crop window resampled from it is hardly blurred against a
# copy downsampled from the file: on 200 clothing photos cropped by a few pixels, the worst copy lay
# 1.51x as far as the photo's own copies with views of 96 px, 1.18x at 144, 1.15x at 192 (which keeps
# 47 KB of pixels per photo in memory at 144).
COMPARE_SIDE = 48
VIEW_SIDE = 3 * COMPARE_SIDE
# a crop copy may have lost up to this share of its width or height ("a few pixels": a 64 px tile
# cropped by 4 px on both sides keeps 0.875 of it)
CROP_KEEP = 0.85
CROP_STEPS = 9  # crop window offsets tried per axis
THUMBNAIL_SIDE = 8  # absolute-colour thumbnails that propose candidate pairs


@dataclass(frozen=True)
class PixelView:
    """An image kept small for comparison: RGB, at most VIEW_SIDE on the longer side, with the
    size of the image it was made from (a crop's extent is known in the original's pixels)."""

    image: Image.Image
    size: tuple[int, int]

    def compare_size(self) -> tuple[int, int]:
        """The size this image is compared at: its own, scaled down to COMPARE_SIDE on the longer side."""
        f = min(1.0, COMPARE_SIDE / max(self.size))
        return max(1, round(self.size[0] * f)), max(1, round(self.size[1] * f))

    def at(self, size, box=None) -> np.ndarray:
        """The view (or a window of it, in view pixels) resampled to `size`, as float RGB levels 0-255."""
        return np.asarray(self.image.resize(size, Image.BOX, box=box), dtype=np.float32)

    @cached_property
    def contrast(self) -> float:
        """RMS deviation from the mean colour at the compare size (grey levels): how much structure
        there is to tell this picture from another. A flat tile of sea has about 1."""
        return float(self.at(self.compare_size()).reshape(-1, 3).std(0).mean())

    def thumbnail(self) -> np.ndarray:
        """THUMBNAIL_SIDE^2 RGB levels, flattened: copies of a picture lie close together here even where
        it has no structure to correlate (a flat tile differs from its copy by about one grey level)."""
        return self.at((THUMBNAIL_SIDE, THUMBNAIL_SIDE)).ravel()


def pixel_view(source) -> PixelView | None:
    """A PixelView of an image file (None when it cannot be read) or of a PIL image."""
    scale = 1.0
    if not isinstance(source, Image.Image):
        try:
            source, scale = open_image_scaled(source, min_size=COMPARE_SIDE)
        except ImageReadError:
            return None
    size = (round(source.size[0] / scale), round(source.size[1] / scale))  # a JPEG may decode smaller
    f = min(1.0, VIEW_SIDE / max(source.size))
    img = source.convert("RGB")
    if f < 1:
        img = img.resize((max(1, round(source.size[0] * f)), max(1, round(source.size[1] * f))), Image.BOX)
    return PixelView(img, size)


def pixel_distance(a: PixelView, b: PixelView) -> float:
    """How far apart two images are in pixels: the RMS difference (grey levels, over RGB) at the smaller
    one's compare size, the least of the whole of each and, when the smaller fits inside the larger
    with at least CROP_KEEP of each side, of every crop window of that extent on a grid of offsets."""
    if a.size[0] * a.size[1] < b.size[0] * b.size[1]:
        a, b = b, a
    size = b.compare_size()
    target = b.at(size)
    windows = [a.at(size)]
    if b.size[0] <= a.size[0] and b.size[1] <= a.size[1] and min(b.size[0] / a.size[0], b.size[1] / a.size[1]) >= CROP_KEEP:
        k = a.image.size[0] / a.size[0]  # view pixels per file pixel
        cw, ch = b.size[0] * k, b.size[1] * k
        w, h = a.image.size
        for x in np.linspace(0, max(0.0, w - cw), min(CROP_STEPS, a.size[0] - b.size[0] + 1)):
            for y in np.linspace(0, max(0.0, h - ch), min(CROP_STEPS, a.size[1] - b.size[1] + 1)):
                windows.append(a.at(size, (x, y, min(w, x + cw), min(h, y + ch))))
    diffs = np.stack(windows) - target
    return float(np.sqrt((diffs ** 2).mean(axis=(1, 2, 3))).min())


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def copy_distances(path, quality: int = 50) -> dict[str, float] | None:
    """The pixel_distance between an image and copies of it made here, by kind: "reencoded" (JPEG at
    `quality`), "resized" (the farther of 70% and 130%) and "cropped" (by 3% a side), each saved as
    JPEG: how far a near duplicate of this very image lands. None when the file cannot be read.
    quality 50 is a harsher re-encode than people usually save: against copies made at 70, digits
    re-encoded at 55 lay up to 1.41x as far."""
    try:
        img = open_image(path, min_size=COMPARE_SIDE)
    except ImageReadError:
        return None
    w, h = img.size
    c = max(1, round(0.03 * min(w, h)))
    original = pixel_view(img)

    def distance(copy):
        return pixel_distance(original, pixel_view(copy))

    return {"reencoded": distance(_jpeg(img, quality)),
            "resized": max(distance(_jpeg(img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BICUBIC), 90))
                           for f in (0.7, 1.3)),
            "cropped": distance(_jpeg(img.crop((c, c, w - c, h - c)), 90))}


def copy_tolerance(a: PixelView, b: PixelView, copies_a: dict, copies_b: dict) -> float:
    """How far apart the two images could lie were one a copy of the other: with the same size, as far
    as a re-encoded copy of either lies; otherwise as far as any copy of either (copy_distances)."""
    kinds = ("reencoded",) if a.size == b.size else ("reencoded", "resized", "cropped")
    return max(d[k] for d in (copies_a, copies_b) for k in kinds)
