"""Image decoding in every mode users have, broken files, and folder/glob expansion."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from transferlab.core.errors import DatasetError, ImageReadError
from transferlab.data.images import find_images, open_image, walk_images
from transferlab.data.transforms import Preprocessing


def rgb_at(img, xy):
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_grayscale_l(tmp_path):
    p = tmp_path / "g.png"
    Image.new("L", (40, 30), 128).save(p)
    img = open_image(p)
    assert img.size == (40, 30) and rgb_at(img, (5, 5)) == (128, 128, 128)


def test_la_transparent_becomes_white(tmp_path):
    p = tmp_path / "la.png"
    Image.new("LA", (10, 10), (0, 0)).save(p)
    assert rgb_at(open_image(p), (3, 3)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    p = tmp_path / "p.png"
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.paste(2, (10, 0, 20, 20))  # right half blue
    img.info["transparency"] = 1  # the red index is transparent
    img.save(p, transparency=1)
    assert Image.open(p).mode == "P"
    out = open_image(p)
    assert rgb_at(out, (2, 2)) == (255, 255, 255)  # transparent -> white, not red or black
    assert rgb_at(out, (15, 2)) == (0, 0, 255)


def test_rgba_half_transparent(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(p)
    r, g, b = rgb_at(open_image(p), (1, 1))
    assert r == 255 and 120 <= g <= 135 and g == b


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p)
    assert Image.open(p).mode == "CMYK"
    r, g, b = rgb_at(open_image(p), (4, 4))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_rescaled(tmp_path):
    p = tmp_path / "16.png"
    arr = np.tile(np.linspace(1000, 60000, 64).astype(np.uint16), (8, 1))
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode in ("I;16", "I")
    out = np.asarray(open_image(p))
    assert out.shape == (8, 64, 3) and out.dtype == np.uint8
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] >= 254  # full range used, not clipped to white
    assert (np.diff(row) >= 0).all() and len(np.unique(row)) > 32


def test_exif_orientation_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(p, exif=exif.tobytes(), quality=95)
    assert Image.open(p).size == (60, 40)
    out = open_image(p)
    assert out.size == (40, 60)
    r, _, b = rgb_at(out, (20, 5))  # the stored left half is now on top
    assert r > 200 and b < 60
    r, _, b = rgb_at(out, (20, 55))
    assert b > 200 and r < 60


def test_one_pixel_image_goes_through_transform(tmp_path):
    p = tmp_path / "1.png"
    Image.new("RGB", (1, 1), (0, 255, 0)).save(p)
    img = open_image(p)
    assert img.size == (1, 1)
    x = Preprocessing().eval_transform()(img)
    assert tuple(x.shape) == (3, 224, 224)


def test_animated_gif_first_frame(tmp_path):
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(p), "n_frames", 1) == 3
    r, g, b = rgb_at(open_image(p), (6, 6))
    assert r > 200 and g < 50 and b < 50


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "not an image"),
        (b"this is a text file, not a JPEG\n" * 10, "not an image"),
    ],
)
def test_non_images_raise_image_read_error(tmp_path, content, reason):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as err:
        open_image(p)
    assert err.value.path == str(p)


def test_truncated_jpeg(tmp_path):
    p = tmp_path / "cut.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="unreadable"):
        open_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        open_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("side", [40, 100])  # over the limit (warning) and over twice the limit (error)
def test_decompression_bomb(tmp_path, monkeypatch, side):
    p = tmp_path / "bomb.png"
    Image.new("RGB", (side, side)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="too large"):
        open_image(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**6)
    assert open_image(p).size == (side, side)


# --- expansion ----------------------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    (root / ".hidden").mkdir()
    for rel in ("z.jpg", "a/1.PNG", "b/2.jpeg", "b/deep/3.webp", ".hidden/4.jpg", "b/.5.jpg"):
        Image.new("RGB", (8, 8)).save(root / rel, format="PNG" if rel.lower().endswith("png") else None)
    (root / "notes.txt").write_text("x")
    (root / "b" / "data.csv").write_text("x")
    return root


def test_folder_recursion_sorted_skips_hidden_and_non_images(tree):
    got = [p.relative_to(tree).as_posix() for p in find_images(tree)]
    assert got == ["a/1.PNG", "b/2.jpeg", "b/deep/3.webp", "z.jpg"]


def test_glob_and_explicit_files(tree):
    got = find_images([str(tree / "**" / "*.jp*g")])
    assert sorted(p.name for p in got) == ["2.jpeg", "z.jpg"]
    # explicit files are kept whatever their extension, and de-duplicated
    got = find_images([tree / "notes.txt", tree / "z.jpg", tree / "z.jpg"])
    assert [p.name for p in got] == ["notes.txt", "z.jpg"]
    with pytest.raises(DatasetError, match="no such file"):
        find_images([str(tree / "*.gif")])
    with pytest.raises(DatasetError, match="no such file"):
        find_images(tree / "missing")


def test_symlink_loop_in_folder(tree):
    os.symlink(tree, tree / "b" / "loop")
    os.symlink(tree / "b" / "self", tree / "b" / "self")  # a dangling self-link too
    got = walk_images(tree)
    assert len(got) == len(set(os.path.realpath(p) for p in got)) == 4
    assert len(find_images(tree)) == 4
