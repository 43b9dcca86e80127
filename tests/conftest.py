"""Shared fixtures: real images written with PIL, real datasets written as image folders."""
from __future__ import annotations

import os

# Idle OpenMP threads spin by default and steal the cores from DataLoader workers and other
# processes (measured ~20x slower on a busy 2-core machine); set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")

# The shared photo sets sit beside a development checkout (<repo>/../shared/datasets); a clone alone has
# none, so a test that reads one carries @pytest.mark.shared("NAME") and is skipped, with the reason, there.
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def pytest_runtest_setup(item):
    for marker in item.iter_markers("shared"):
        for name in marker.args:
            if not (SHARED_DATASETS / name).is_dir():
                pytest.skip(f"needs the shared {name} set: {SHARED_DATASETS / name} not found")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    return SHARED_DATASETS


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Converted weights and demo data go to a throwaway cache, never the user's."""
    old = os.environ.get("TRANSFERLAB_CACHE")
    os.environ["TRANSFERLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("TRANSFERLAB_CACHE")
    else:
        os.environ["TRANSFERLAB_CACHE"] = old


@pytest.fixture(scope="session")
def sample_photos(tmp_path_factory) -> dict[str, Path]:
    """scikit-learn's two sample photos (china.jpg: palace, flower.jpg: daisy) as JPEG files."""
    from sklearn.datasets import load_sample_images

    out = tmp_path_factory.mktemp("photos")
    data = load_sample_images()
    paths = {}
    for name, arr in zip(data.filenames, data.images):
        path = out / Path(name).name
        Image.fromarray(arr).save(path, quality=95)
        paths[path.stem] = path
    return paths


def write_digit_folder(root: Path, images: np.ndarray, labels: np.ndarray, size: int = 32) -> Path:
    """Write grayscale digit arrays as PNG files, one sub-folder per class."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / f"digit_{int(label)}"
        folder.mkdir(exist_ok=True)
        arr = np.asarray(img, dtype=np.float64)
        arr = (255 * (arr - arr.min()) / max(arr.max() - arr.min(), 1e-9)).astype(np.uint8)
        Image.fromarray(arr, mode="L").resize((size, size), Image.BILINEAR).save(folder / f"{i:05d}.png")
    return root


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """scikit-learn's 8x8 digits, classes 0-3, 40 images each, as a class-per-folder dataset."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:40] for c in range(4)])
    return write_digit_folder(tmp_path_factory.mktemp("digits") / "data", d.images[keep], d.target[keep])


@pytest.fixture(scope="session")
def trained_run(digits_folder, tmp_path_factory) -> Path:
    """A small finished run (feature extraction on the digits) shared by the tests that use a run."""
    from transferlab.api import train

    out = tmp_path_factory.mktemp("trained") / "run"
    train(digits_folder, model="efficientnet_lite0", strategy="feature-extract", epochs=3, image_size=48,
          batch_size=16, augment="none", out=out, progress=False)
    return out


# --- multi-label data: shapes on noise, several per image ----------------------------------------------
SHAPE_LABELS = ("disc", "square", "bar")
SHAPE_COLOURS = {"disc": (210, 40, 40), "square": (40, 180, 60), "bar": (40, 60, 210)}


def write_shape_images(root: Path, n: int, seed: int, size: int = 64) -> list[tuple[str, list[str]]]:
    """n images of a noisy grey field carrying, each with probability 0.45, a red disc, a green square
    and a blue bar, each somewhere in its own quarter of the image (a random one; shapes never
    overlap); returns (path relative to root, labels) rows."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    half = size // 2
    for i in range(n):
        img = Image.fromarray(rng.integers(100, 160, (size, size, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        labels = [name for name in SHAPE_LABELS if rng.random() < 0.45]
        quarters = rng.permutation(4)
        for name, q in zip(labels, quarters):
            w, h = {"disc": (22, 22), "square": (20, 20), "bar": (24, 8)}[name]
            x = (q % 2) * half + int(rng.integers(1, half - w))
            y = (q // 2) * half + int(rng.integers(1, half - h))
            (draw.ellipse if name == "disc" else draw.rectangle)((x, y, x + w, y + h), fill=SHAPE_COLOURS[name])
        rel = f"img/s{seed}_{i:03d}.png"
        img.save(root / rel)
        rows.append((rel, labels))
    return rows


def write_label_table(path: Path, rows) -> Path:
    """A CSV of image,labels rows (labels separated by a space)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels"])
        w.writerows((p, " ".join(labels)) for p, labels in rows)
    return path


@pytest.fixture(scope="session")
def shape_tables(tmp_path_factory) -> tuple[Path, Path]:
    """(train.csv, val.csv) of multi-label shape images: 72 for training, 32 for validation."""
    root = tmp_path_factory.mktemp("shapes")
    return (write_label_table(root / "train.csv", write_shape_images(root, 72, seed=0)),
            write_label_table(root / "val.csv", write_shape_images(root, 32, seed=1)))


@pytest.fixture(scope="session")
def multilabel_run(shape_tables, tmp_path_factory) -> Path:
    """A small finished multi-label run (feature extraction on the shape tables)."""
    from transferlab.api import train

    out = tmp_path_factory.mktemp("trained-ml") / "shapes"
    train(shape_tables[0], val_data=shape_tables[1], strategy="feature-extract", epochs=4, image_size=64,
          batch_size=16, augment="none", out=out, progress=False)
    return out
