"""Image-folder datasets: scanning, splitting, decoding once, and the loaders the trainer uses."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import InterpolationMode, resize

from ..core.device import available_cpus
from ..core.errors import DatasetError, ImageReadError
from .images import is_image_file, open_image, walk_images
from .samples import SPLIT_NAMES, DatasetScan, Sample, check_image, read_exclude, stratified_split
from .tables import is_table, scan_table

def _find_split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _collect(folder: Path, classes: list[str], skipped: list, require_all: bool,
             exclude: set[str] | None = None) -> list[Sample]:
    samples = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        good = []
        for f in walk_images(class_dir, skipped):
            if exclude and str(f.resolve()) in exclude:
                continue
            reason = check_image(f)
            if reason:
                skipped.append((str(f), reason))
            else:
                good.append(Sample(f, label))
        if require_all and not good:
            raise DatasetError(
                f"class folder {class_dir} has no readable images; add images to it or remove the folder"
            )
        samples.extend(good)
    return samples


def scan_dataset(root, val_split: float = 0.2, seed: int = 0, require_val: bool = True,
                 exclude=None, multilabel: bool = False) -> DatasetScan:
    """Read a dataset: a class-per-folder one (train/ val/ test/ when present, else a stratified split),
    or a table of images and labels (a CSV/TSV/JSON-lines file, a pandas DataFrame, or a
    data.tables.Table with its column options and validation table; see data/tables.py).

    exclude: a file listing images to leave out (see read_exclude; `transferlab audit --write-exclude`
    writes one); they are dropped before the split, so the remaining images split as they would alone.
    multilabel: the caller handles images with several labels; otherwise a multi-label table is refused
    with one line saying so.
    """
    if is_table(root):
        return scan_table(root, val_split, seed, require_val, exclude, multilabel)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}; give a folder with one sub-folder of images per class")
    train_dir = _find_split_dir(root, "train") or root
    split_dirs = SPLIT_NAMES["val"] + SPLIT_NAMES["test"]
    classes = [d.name for d in _class_dirs(train_dir) if train_dir != root or d.name not in split_dirs]
    if not classes:
        loose = [p for p in train_dir.iterdir() if p.is_file() and is_image_file(p)]
        hint = " (images lie directly in it: move them into one sub-folder per class)" if loose else ""
        raise DatasetError(f"{train_dir} has no class sub-folders{hint}; expected e.g. {train_dir}/cats/*.jpg")
    if len(classes) < 2:
        raise DatasetError(f"{train_dir} has a single class ({classes[0]}); a classifier needs at least two class folders")
    skipped: list[tuple[str, str]] = []
    excluded = read_exclude(exclude, root) if exclude else None
    train = _collect(train_dir, classes, skipped, require_all=True, exclude=excluded)
    splits = {"train": train}
    val_dir = _find_split_dir(root, "val")
    test_dir = _find_split_dir(root, "test")
    for split, folder in (("val", val_dir), ("test", test_dir)):
        if folder is None:
            continue
        extra = sorted(set(d.name for d in _class_dirs(folder)) - set(classes))
        if extra:
            raise DatasetError(
                f"{folder} has class folder(s) {', '.join(extra)} that are not in {train_dir}; "
                "every class needs training images"
            )
        splits[split] = _collect(folder, classes, skipped, require_all=False, exclude=excluded)
    source = "folders"
    if val_dir is None and require_val:
        splits["train"], splits["val"] = stratified_split(train, val_split, seed)
        source = f"random {1 - val_split:.0%}/{val_split:.0%} split, seed {seed}"
    if require_val and not splits["val"]:
        raise DatasetError(f"no validation images in {root}; add a val/ folder or use --val-split > 0")
    scan = DatasetScan(root, classes, splits, skipped, source)
    if excluded:
        scan.excluded = len(excluded)
    return scan


def file_digests(paths, threads: int | None = None) -> list[str]:
    """sha256 of each file's content (hex), in order; "" for a file that cannot be read."""
    import hashlib

    def digest(path) -> str:
        try:
            with open(path, "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            return ""

    with ThreadPoolExecutor(max_workers=threads or available_cpus()) as pool:
        return list(pool.map(digest, paths))


def cross_split_exact_duplicates(scan: DatasetScan, digests: dict[str, str] | None = None) -> int:
    """Images of val/test whose exact content (sha256) is also in train: the leakage a split must not have."""
    paths = [str(s.path) for samples in scan.splits.values() for s in samples]
    if digests is None:
        digests = dict(zip(paths, file_digests(paths)))
    in_train = {digests[str(s.path)] for s in scan.splits.get("train", [])} - {""}
    return sum(1 for split, samples in scan.splits.items() if split != "train"
               for s in samples if digests[str(s.path)] in in_train)


IMAGE_CACHE_FORMAT = 2  # 2: resized as the eval transform resizes (torchvision's size rule, the model's filter)


class ImageCache:
    """Decoded, resized images on disk (uint8 .npy), reused across epochs and runs.

    The key is the file's content (sha256, not its name or date), the target shorter side and the
    resampling, so an edited image or another model's resize never reads a stale entry. A damaged
    entry is decoded again and rewritten, never trusted.
    """

    def __init__(self, root):
        self.root = Path(root) / "images"

    def key(self, content: bytes, max_side: int, interpolation: str = "bilinear") -> str:
        """The cache key of an image: its content, the decode size and interpolation."""
        import hashlib

        digest = hashlib.sha256(content).hexdigest()[:40]
        return f"{digest}-{max_side}-{interpolation}-v{IMAGE_CACHE_FORMAT}"

    def path(self, key: str) -> Path:
        """Where an entry lives on disk."""
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> Image.Image | None:
        """The cached decoded image, or None."""
        import numpy as np

        try:
            arr = np.load(self.path(key), allow_pickle=False)
        except Exception:  # missing or damaged
            return None
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            return None
        return Image.fromarray(arr, mode="RGB")

    def put(self, key: str, img: Image.Image) -> None:
        """Store a decoded image atomically."""
        import numpy as np

        from ..core.io import atomic_path

        try:
            with atomic_path(self.path(key)) as tmp, open(tmp, "wb") as f:
                np.save(f, np.asarray(img, dtype=np.uint8), allow_pickle=False)
        except Exception:  # a cache that cannot be written only costs speed
            pass


class DecodedImages:
    """Decode every image once, downscaled so its shorter side is at most `max_side`, kept in memory.

    Later epochs (and augmentation) start from these, not from the JPEG again. The downscale is the
    evaluation transform's own (torchvision's size rule and the model's filter), so at
    max_side = Preprocessing.resize an image gives exactly the tensor it gives from its file.
    Unreadable images found here are reported and dropped. With `cache_dir`, the resized images are
    also kept on disk (ImageCache) so that later runs skip decoding and resizing.
    """

    def __init__(self, paths: list[Path], max_side: int, threads: int | None = None, cache_dir=None,
                 interpolation: str = "bilinear"):
        self.max_side, self.interpolation = max_side, interpolation
        self.images: dict[str, Image.Image] = {}
        self.failed: dict[str, str] = {}
        self.cache = ImageCache(cache_dir) if cache_dir else None
        self.cache_hits = 0
        with ThreadPoolExecutor(max_workers=threads or available_cpus()) as pool:
            for path, result in zip(paths, pool.map(self._load, paths)):
                if isinstance(result, str):
                    self.failed[str(path)] = result
                else:
                    self.images[str(path)] = result

    def _load(self, path: Path):
        if self.cache is None:
            return self._decode(path)
        try:
            with open(path, "rb") as f:
                key = self.cache.key(f.read(), self.max_side, self.interpolation)
        except OSError:
            return self._decode(path)  # reports the reason
        img = self.cache.get(key)
        if img is not None:
            self.cache_hits += 1
            return img
        img = self._decode(path)
        if not isinstance(img, str):
            self.cache.put(key, img)
        return img

    def _decode(self, path: Path):
        try:
            img = open_image(path)
        except ImageReadError as e:
            return e.reason
        if min(img.size) > self.max_side:
            img = resize(img, self.max_side, InterpolationMode(self.interpolation), antialias=True)
        return img

    def __getitem__(self, path) -> Image.Image:
        return self.images[str(path)]


class ImageSamples(Dataset):
    """(transformed image, label) pairs, from decoded memory when available, else from disk; with
    `targets` (one row per sample, e.g. multi-hot labels) the row stands for the label."""

    def __init__(self, samples: list[Sample], transform, decoded: DecodedImages | None = None, targets=None):
        self.samples = samples
        self.transform = transform
        self.decoded = decoded
        self.targets = targets

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        img = self.decoded[s.path] if self.decoded is not None else open_image(s.path)
        return self.transform(img), (s.label if self.targets is None else self.targets[i])

    @property
    def labels(self) -> list[int]:
        """The class index of every sample, in order."""
        return [s.label for s in self.samples]


def drop_failed(scan: DatasetScan, decoded: DecodedImages) -> None:
    """Remove samples whose full decode failed (e.g. truncated JPEGs that pass the header check)."""
    if not decoded.failed:
        return
    for split, samples in scan.splits.items():
        scan.splits[split] = [s for s in samples if str(s.path) not in decoded.failed]
    scan.skipped.extend(decoded.failed.items())


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over present classes."""
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).float()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return w
