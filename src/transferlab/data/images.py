"""Reading images the way users have them: any mode, any orientation, some of them broken."""
from __future__ import annotations

import glob
import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import DatasetError, ImageReadError
from .tables import TABLE_FORMATS, table_images

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
)

# the modes Image.reduce accepts that images arrive in (palette, 1-bit and 16-bit ones are resized whole)
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})


def open_image(path: str | os.PathLike, min_size: int | None = None) -> Image.Image:
    """Decode any image file to RGB, upright (EXIF orientation applied), or raise ImageReadError.

    min_size: the shorter side the caller will resize to. An image whose shorter side is at least four
    times larger comes back smaller, its shorter side still at least 2 * min_size, so the final
    antialiased resize still sees more pixels than it outputs: a JPEG is decoded at 1/2, 1/4 or 1/8
    scale (libjpeg's DCT scaling, much faster), other formats are decoded whole, then box-averaged by
    an integer factor (Image.reduce), which makes the final resize cheaper.
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
                if min_size:
                    img = _reduce(img, min_size)
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


def _reduce(img: Image.Image, min_size: int) -> Image.Image:
    """Box-average by the largest integer factor keeping the shorter side >= 2 * min_size (a drafted
    JPEG is already there). Before to_rgb: a grey image is averaged on one channel, not three."""
    factor = min(img.size) // (2 * min_size)
    return img.reduce(factor) if factor >= 2 and img.mode in REDUCIBLE_MODES else img


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


def image_sizes(paths) -> list[tuple[int, int] | None]:
    """(width, height) from each file's header, or None when it cannot be read."""
    out = []
    for p in paths:
        try:
            with Image.open(p) as img:
                out.append(img.size)
        except Exception:  # unreadable files are reported where they are read
            out.append(None)
    return out


def median_short_side(paths, sample: int = 200) -> int | None:
    """The median shorter side of the images, from the headers of at most `sample` of them spread evenly
    over the list (None when none can be read)."""
    paths = list(paths)
    step = max(1, len(paths) // sample)
    sides = [min(s) for s in image_sizes(paths[::step][:sample]) if s is not None]
    return int(np.median(sides)) if sides else None


def is_image_file(path: Path) -> bool:
    """True when the file name has an image extension."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(inputs) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted, de-duplicated list of images.

    Explicit files are kept whatever their extension (so that a broken one is reported, not ignored);
    a table file (.csv, .tsv, .jsonl, .ndjson) gives the images of its image column.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: dict[str, Path] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for f in walk_images(path):
                found.setdefault(str(f), f)
        elif path.exists() and path.suffix.lower() in TABLE_FORMATS:  # a table: the images it lists
            for f in table_images(path):
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


def map_in_threads(fn, items, threads: int, ahead: int):
    """fn(item) for each item, in order, computed by `threads` threads at most `ahead` items before the
    caller asks: decoding runs while the caller works on earlier results (Pillow and numpy release the
    GIL while they decode and resize), with no process to start. threads 0: in the caller's thread."""
    if threads <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
