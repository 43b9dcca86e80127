"""Reading images the way users have them: any mode, any orientation, some of them broken."""
from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import DatasetError, ImageReadError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
)


def open_image(path: str | os.PathLike, min_size: int | None = None) -> Image.Image:
    """Decode any image file to RGB, upright (EXIF orientation applied), or raise ImageReadError.

    min_size: the shorter side the caller will resize to. A JPEG whose shorter side is at least four
    times larger is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, much faster) while
    keeping its shorter side at least 2 * min_size, so the final antialiased resize still sees
    more pixels than it outputs. Other images are decoded at full size.
    """
    return open_image_scaled(path, min_size=min_size)[0]


def open_image_scaled(path: str | os.PathLike, min_size: int | None = None,
                      long_side: int | None = None) -> tuple[Image.Image, float]:
    """open_image, and the decoded size relative to the file's pixels (1.0 unless a JPEG was decoded
    at a reduced scale), so annotations in file pixels can follow. long_side: a JPEG whose longer
    side is at least twice this is decoded at the smallest DCT scale keeping its longer side >= it
    (a detector letterboxes by the longer side)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.seek(0)  # animated GIF/WebP: the first frame
                width = img.size[0]
                if img.format == "JPEG" and (min_size or long_side):
                    _draft(img, min_size, long_side)
                img.load()
                scale = img.size[0] / width
                img = ImageOps.exif_transpose(img) or img
                return to_rgb(img), scale
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(path, "image too large (over Pillow's decompression-bomb limit)") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageReadError(path, f"unreadable image ({reason})") from None


def _draft(img: Image.Image, min_size: int | None, long_side: int | None) -> None:
    w, h = img.size
    if min_size:
        side, keep = min(w, h), 2 * min_size
        if side < 2 * keep:
            return
    else:
        side, keep = max(w, h), long_side
        if side < 2 * keep:
            return
    # draft picks the largest 1/2^k scale whose result is at least the requested size in both axes
    img.draft(None, (max(1, w * keep // side), max(1, h * keep // side)))


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any Pillow mode: 16-bit and float rescaled, transparency flattened on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def is_image_file(path: Path) -> bool:
    """True when the file name has an image extension."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(inputs) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted, de-duplicated list of images.

    Explicit files are kept whatever their extension (so that a broken one is reported, not ignored).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: dict[str, Path] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for f in walk_images(path):
                found.setdefault(str(f), f)
        elif path.exists():
            found.setdefault(str(path), path)
        else:
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise DatasetError(f"no such file, folder or glob match: {item}")
            for m in matches:
                p = Path(m)
                if p.is_dir():
                    for f in walk_images(p):
                        found.setdefault(str(f), f)
                elif is_image_file(p):
                    found.setdefault(str(p), p)
    return list(found.values())


def walk_images(root: Path, skipped: list | None = None) -> list[Path]:
    """Image files under `root`, sorted; unreadable folders are passed over.

    Folder links that loop, or that point to `root` or one of its ancestors (e.g. `cats/up -> ..`,
    which would give a class its siblings' images), are not followed; each is appended to
    `skipped` as (path, reason) when a list is given.
    """
    out = []
    seen_dirs = set()
    root_real = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=lambda e: None):
        seen_dirs.add(os.path.realpath(dirpath))
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen_dirs or real == root_real or root_real.startswith(real.rstrip(os.sep) + os.sep):
                if skipped is not None:
                    skipped.append((os.path.join(dirpath, d), "symlink loop (points to a folder that contains it)"))
                continue
            kept.append(d)
        dirnames[:] = kept
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image_file(Path(f)))
    return sorted(out)


THUMBNAIL_SIGNATURE_SIDE = 16
# centre crops a signature also holds, so that a copy cropped by a few pixels (up to ~7% a side on a
# 64 px image) still lines up with one of the original's
THUMBNAIL_SIGNATURE_CROPS = (1.0, 0.93, 0.86)


# mean colour (0..1 per channel) two copies of one photo keep: a re-encode, a resize or a few pixels'
# crop move it by far less; grey-level correlation alone pairs e.g. a dark lake with a dark field
SIGNATURE_COLOUR_TOLERANCE = 0.05


def thumbnail_signature(path, side: int = THUMBNAIL_SIGNATURE_SIDE) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, mean colour): the image as side x side grey thumbnails of the whole image and of
    THUMBNAIL_SIGNATURE_CROPS centre crops, each zero-mean and unit-length (a dot product is a
    correlation), and its mean RGB. signature_correlation of the same photo re-encoded, resized or
    cropped by a few pixels stays near 1. None when the file cannot be read; `path` may be a PIL image."""
    try:
        img = path if isinstance(path, Image.Image) else open_image(path, min_size=4 * side)
    except ImageReadError:
        return None
    colour = np.asarray(img.convert("RGB").resize((side, side), Image.BOX), dtype=np.float32).reshape(-1, 3)
    colour = colour.mean(0) / 255.0
    img = img.convert("L")
    w, h = img.size
    rows = []
    for crop in THUMBNAIL_SIGNATURE_CROPS:
        dx, dy = w * (1 - crop) / 2, h * (1 - crop) / 2
        a = np.asarray(img.resize((side, side), Image.BOX, box=(dx, dy, w - dx, h - dy)), dtype=np.float64).ravel()
        a = a - a.mean()
        rows.append(a / max(float(np.linalg.norm(a)), 1e-9))
    return np.stack(rows).astype(np.float32), colour


def signature_correlation(a, b) -> float:
    """The best correlation between two thumbnail signatures (over their crops); 0 when their mean
    colours differ by more than SIGNATURE_COLOUR_TOLERANCE."""
    if float(np.abs(a[1] - b[1]).max()) > SIGNATURE_COLOUR_TOLERANCE:
        return 0.0
    return float((a[0] @ b[0].T).max())


def copy_correlations(paths, count: int = 40, seed: int = 0) -> np.ndarray:
    """Signature correlations between sample images and copies of them made here: re-encoded at JPEG
    quality 70, resized to 70%, cropped by ~3% a side. What a near duplicate of this data scores."""
    import io
    import random

    rng = random.Random(seed)
    paths = list(paths)
    out = []
    for path in rng.sample(paths, min(count, len(paths))):
        try:
            img = open_image(path)
        except ImageReadError:
            continue
        w, h = img.size
        if min(w, h) < 16:  # too small to crop a few pixels from and still be the same picture
            continue
        original = thumbnail_signature(img)
        c = max(1, round(0.03 * min(w, h)))
        copies = [img.resize((max(8, round(w * 0.7)), max(8, round(h * 0.7))), Image.BICUBIC),
                  img.crop((c, c, w - rng.randint(0, c), h - c))]
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=70)
        copies.append(Image.open(io.BytesIO(buf.getvalue())))
        for copy in copies:
            buf = io.BytesIO()
            copy.convert("RGB").save(buf, "JPEG", quality=90)
            out.append(signature_correlation(original, thumbnail_signature(Image.open(io.BytesIO(buf.getvalue())))))
    return np.array(out)
