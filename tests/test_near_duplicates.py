"""The near-duplicate rule on real image files: copies (re-encoded, resized, cropped by a few pixels) are
found; a flat tile that merely looks like another, and a distinct stroke drawn almost alike, are not."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from transferlab.data.pixels import copy_distances, copy_tolerance, pixel_distance, pixel_view
from transferlab.auditing.near_duplicates import NEAR_DUPLICATE_CONTRAST, near_duplicate_pairs


def _save(img: Image.Image, path, quality: int = 92):
    img.convert("RGB").save(path, "JPEG", quality=quality)
    return path


def _textured(seed: int, side: int = 160) -> Image.Image:
    """A photo-like picture: smooth colour blobs at several scales."""
    rng = np.random.default_rng(seed)
    out = np.zeros((side, side, 3))
    for cells in (4, 9, 20):
        layer = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
        out += np.asarray(layer, dtype=np.float64) / 3
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _flat(colour, seed: int, side: int = 64) -> Image.Image:
    """A calm-sea tile: one colour and a grey level of sensor noise."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((np.array(colour) + rng.normal(0, 1.0, (side, side, 3))).clip(0, 255).astype(np.uint8))


def _stroke(x0: float, angle: float, width: float = 3.0) -> Image.Image:
    """A handwritten-like "1" on 28 px: one bright antialiased stroke on black."""
    img = Image.new("L", (112, 112))
    top, bottom = (4 * (x0 + 6 * np.tan(angle)), 16), (4 * (x0 - 6 * np.tan(angle)), 96)
    ImageDraw.Draw(img).line([top, bottom], fill=255, width=round(4 * width))
    return img.resize((28, 28), Image.BOX)


def _pairs(paths, features=None, candidates=False):
    # identical features make every pair a candidate, so the pixels alone decide
    f = torch.ones(len(paths), 4) / 2 if features is None else features
    return {(i, j) for i, j, *_ in near_duplicate_pairs(f, [str(p) for p in paths], pixel_candidates=candidates)}


def _copies(original: Image.Image, folder, stem):
    """Re-encoded at JPEG quality 55, resized to 60% and 125%, cropped by a few pixels (as bench/audit.py)."""
    w, h = original.size
    c = 3 if min(w, h) >= 64 else 1
    return [_save(original, folder / f"{stem}-q55.jpg", 55),
            _save(original.resize((round(w * 0.6), round(h * 0.6)), Image.BICUBIC), folder / f"{stem}-small.jpg"),
            _save(original.resize((round(w * 1.25), round(h * 1.25)), Image.BICUBIC), folder / f"{stem}-large.jpg"),
            _save(original.crop((c, c, w - c + 1, h - c)), folder / f"{stem}-crop.jpg")]


@pytest.mark.parametrize("picture", ["photo", "digit"])
def test_reencoded_resized_and_cropped_copies_are_found(tmp_path, picture):
    original = _textured(0) if picture == "photo" else _stroke(14, 0.3)
    src = tmp_path / "original.png"
    original.save(src)
    copies = _copies(original, tmp_path, "copy")
    found = _pairs([src] + copies)
    assert {(0, k) for k in range(1, 5)} <= found


def test_the_copies_are_found_among_other_pictures_by_thumbnail_candidates(tmp_path):
    # features that propose nothing (orthogonal): the colour thumbnails must bring each copy to its original
    paths = [_save(_textured(seed), tmp_path / f"p{seed}.jpg") for seed in range(6)]
    paths += _copies(Image.open(paths[2]), tmp_path, "of2")
    found = _pairs(paths, torch.eye(len(paths)), candidates=True)
    assert {(2, k) for k in range(6, 10)} <= found
    assert all(i in (2, 6, 7, 8, 9) and j in (6, 7, 8, 9) for i, j in found)  # no distinct picture is paired


def test_two_flat_tiles_that_are_not_copies_are_not_flagged(tmp_path):
    # two calm-sea tiles a grey level apart: closer to each other than a re-encoded copy is to its original,
    # and with no structure to tell them apart, so the rule refuses to call them copies
    a = _save(_flat((30, 55, 90), 1), tmp_path / "sea1.jpg")
    b = _save(_flat((31, 55, 89), 2), tmp_path / "sea2.jpg")
    va, vb = pixel_view(a), pixel_view(b)
    assert pixel_distance(va, vb) <= copy_tolerance(va, vb, copy_distances(a), copy_distances(b))  # as close as copies
    assert pixel_distance(va, vb) > NEAR_DUPLICATE_CONTRAST * min(va.contrast, vb.contrast)
    assert _pairs([a, b]) == set()
    assert _pairs([a, b], torch.eye(2), candidates=True) == set()


def test_a_distinct_stroke_drawn_almost_alike_is_not_a_copy(tmp_path):
    # two writers' thin, upright "1", the second pen a little wider: they correlate at 0.98, differ by a
    # fifth of their contrast and by less than a resized copy would (the rule's first version paired
    # such digits of MNIST), but by more than a re-encoded copy of either, which is what a copy of the
    # same size is
    first, other = tmp_path / "one_a.png", tmp_path / "one_b.png"
    _stroke(14, 0.05, width=2.0).save(first)
    _stroke(14, 0.05, width=2.3).save(other)
    x, y = (np.asarray(Image.open(p), dtype=np.float64).ravel() for p in (first, other))
    assert np.corrcoef(x, y)[0, 1] > 0.97
    va, vb = pixel_view(first), pixel_view(other)
    ca, cb = copy_distances(first), copy_distances(other)
    assert pixel_distance(va, vb) < NEAR_DUPLICATE_CONTRAST * va.contrast
    assert pixel_distance(va, vb) < max(ca["resized"], cb["resized"])
    assert _pairs([first, other]) == set()
    copies = _copies(Image.open(first), tmp_path, "c")
    assert {(0, k) for k in range(1, 5)} <= _pairs([first] + copies)  # while its copies are found


def test_a_low_texture_tile_with_a_little_structure_keeps_its_copies(tmp_path):
    # a forest-like tile: dark green with faint patches; its copies are still found
    rng = np.random.default_rng(3)
    patches = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).resize((64, 64), Image.BICUBIC),
                         dtype=np.float64)
    tile = np.stack([20 + patches / 40, 50 + patches / 25, 25 + patches / 50], -1) + rng.normal(0, 0.8, (64, 64, 3))
    src = tmp_path / "forest.png"
    Image.fromarray(tile.clip(0, 255).astype(np.uint8)).save(src)
    copies = _copies(Image.open(src), tmp_path, "forest")
    assert {(0, k) for k in range(1, 5)} <= _pairs([src] + copies)
