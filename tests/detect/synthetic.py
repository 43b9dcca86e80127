"""A small real-pixel face dataset: LFW face crops pasted small and upside down at known boxes on
real photos.

The pretrained BlazeFace misses faces this small and inverted (AP@0.5 near 0); a fine-tuned model
must learn them. Everything comes from scikit-image's bundled data (no network).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

BACKGROUNDS = ("coffee", "chelsea", "rocket", "coins", "moon", "hubble_deep_field",
               "immunohistochemistry", "retina", "brick", "grass", "gravel", "colorwheel")


def _backgrounds() -> list[np.ndarray]:
    out = []
    for name in BACKGROUNDS:
        im = getattr(skdata, name)()
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, -1)
        out.append(np.ascontiguousarray(im[..., :3]).astype(np.uint8))
    return out


def _faces() -> list[np.ndarray]:
    faces = skdata.lfw_subset()[:100]  # the first 100 are faces, the rest are not
    return [np.repeat((f * 255).astype(np.uint8)[..., None], 3, -1) for f in faces]


def make_image(rng, backgrounds, faces, size=128, face_px=(18, 32), max_faces=2):
    bg = backgrounds[rng.integers(len(backgrounds))]
    h, w = bg.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    canvas = np.asarray(Image.fromarray(bg[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)).copy()
    boxes = []
    for _ in range(int(rng.integers(1, max_faces + 1))):
        s = int(rng.integers(*face_px))
        for _ in range(20):
            fx, fy = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
            if all(fx + s <= b[0] or b[2] <= fx or fy + s <= b[1] or b[3] <= fy for b in boxes):
                break
        else:
            continue
        face = faces[rng.integers(len(faces))][::-1]  # upside down
        canvas[fy:fy + s, fx:fx + s] = np.asarray(Image.fromarray(face).resize((s, s), Image.BILINEAR))
        boxes.append((fx, fy, fx + s, fy + s))
    return canvas, boxes


def write_csv_dataset(folder: Path, n: int, seed: int) -> Path:
    """n images plus faces.csv (image,xmin,ymin,xmax,ymax,label) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    backgrounds, faces = _backgrounds(), _faces()
    rows = []
    for i in range(n):
        image, boxes = make_image(rng, backgrounds, faces)
        name = f"img{i:04d}.png"
        Image.fromarray(image).save(folder / name)
        rows += [(name, *b, "face") for b in boxes]
    with open(folder / "faces.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "xmin", "ymin", "xmax", "ymax", "label"), *rows])
    return folder
