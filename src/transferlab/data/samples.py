"""What a dataset is, whatever its layout (class folders, data/folders.py; a table, data/tables.py):
labelled samples per split, the files that were skipped, and the seeded splits.

A sample carries one class index, or for multi-label data the indices of every label it carries
(`Sample.labels`; `DatasetScan.multilabel` says which kind a scan holds, `DatasetScan.targets` gives
the multi-hot rows).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..core.errors import DatasetError

SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass(frozen=True)
class Sample:
    """One image and its label: `label` is the class index; a multi-label sample has label -1 and
    `labels`, the sorted indices of every label it carries (possibly none)."""

    path: Path
    label: int
    labels: tuple[int, ...] | None = None

    @property
    def indices(self) -> tuple[int, ...]:
        """Every label index the sample carries (one for a single-label sample)."""
        return self.labels if self.labels is not None else (self.label,)


@dataclass
class DatasetScan:
    """What a dataset holds: classes, samples per split, and the files that were skipped."""

    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    split_source: str = "folders"  # or "random ...", "split column ...", "val table ..."
    excluded: int = 0  # entries of the exclude list given (--exclude)
    multilabel: bool = False  # samples carry several labels (Sample.labels); targets() gives multi-hot rows
    table: dict | None = None  # a table's source and columns (data/tables.py), so a run can read it again

    def counts(self, split: str = "train") -> dict[str, int]:
        """Images per class (per label, for multi-label data) in one split."""
        c = Counter(i for s in self.splits.get(split, []) for i in s.indices)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def total_counts(self) -> dict[str, int]:
        """Images per class (per label) over every split."""
        c = Counter(i for split in self.splits.values() for s in split for i in s.indices)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def targets(self, split: str = "train"):
        """Multi-hot float rows (images x classes) of a split: 1 where the sample carries the label."""
        import torch

        samples = self.splits.get(split, [])
        out = torch.zeros(len(samples), len(self.classes))
        for row, s in enumerate(samples):
            out[row, list(s.indices)] = 1.0
        return out

    @property
    def imbalance(self) -> float:
        """Largest over smallest class count in the training split."""
        counts = [n for n in self.counts("train").values() if n > 0]
        return max(counts) / min(counts) if counts else 1.0

    def summary(self) -> str:
        """One line: classes, split sizes, skipped files."""
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items() if v)
        per_class = self.total_counts()
        images = sum(len(v) for v in self.splits.values())
        kind = f"{len(self.classes)} labels (multi-label)" if self.multilabel else f"{len(self.classes)} classes"
        lines = [
            f"{self.root}: {kind}, {images} images ({sizes}; split from {self.split_source})",
            ("  images per label: " if self.multilabel else "  per class: ")
            + ", ".join(f"{k}={v}" for k, v in per_class.items()),
        ]
        if self.multilabel:
            several = sum(1 for v in self.splits.values() for s in v if len(s.indices) > 1)
            none = sum(1 for v in self.splits.values() for s in v if not s.indices)
            lines.append(f"  {several} image(s) with several labels, {none} with none, "
                         f"{sum(len(s.indices) for v in self.splits.values() for s in v) / max(images, 1):.2f} "
                         "labels per image on average")
        if self.excluded:
            lines.append(f"  left out the files of an exclude list ({self.excluded} entries)")
        if self.imbalance >= 3:
            lines.append(f"  imbalance: largest/smallest class = {self.imbalance:.1f}x (consider --balance weights)")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unusable file(s):")
            lines.extend(f"    {p}: {why}" for p, why in self.skipped[:20])
            if len(self.skipped) > 20:
                lines.append(f"    ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain data for model.json."""
        return {
            "root": str(self.root),
            "classes": self.classes,
            "counts": {k: self.counts(k) for k in self.splits},
            "split_source": self.split_source,
            "skipped": [list(s) for s in self.skipped],
            **({"excluded": self.excluded} if self.excluded else {}),
            **({"multilabel": True} if self.multilabel else {}),
            **({"table": self.table} if self.table else {}),
        }


def check_image(path: Path) -> str | None:
    """Cheap validity check (header + Pillow's verify); returns the reason a file is unusable, or None."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            img.verify()
    except Exception as e:  # Pillow raises many types for broken files
        return f"unreadable image ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"
    return None


def read_exclude(file, root) -> set[str]:
    """The files an exclude list names (one path per line, relative to `root` or absolute; blank lines
    and lines starting with # are ignored), as resolved path strings."""
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as e:
        raise DatasetError(f"cannot read the exclude list {file}: {e.strerror or e}") from None
    out = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line)
            out.add(str((path if path.is_absolute() else Path(root) / path).resolve()))
    return out


def _check_fraction(fraction: float) -> None:
    if not 0 <= fraction < 1:
        raise DatasetError(f"--val-split must be in [0, 1), got {fraction}")


def stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Per class: shuffle (seeded), send round(n * fraction) to val, keep at least one in train."""
    _check_fraction(fraction)
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    train, val = [], []
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1 if len(items) > 1 and fraction > 0 else 0, round(len(items) * fraction)))
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def iterative_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Multi-label stratification (Sechidis, Tsoumakas & Vlahavas 2011, iterative stratification) into
    train and val: the rarest label still unplaced goes first, each of its samples to the split that
    most lacks that label (then the one that most lacks samples, then a seeded coin). Every label keeps
    close to `fraction` of its images in val, where a random split leaves rare labels out of val or
    train. Both lists keep the input order."""
    _check_fraction(fraction)
    rng = random.Random(seed)
    order = list(range(len(samples)))
    rng.shuffle(order)  # ties between samples of one label fall by the seed
    n_labels = 1 + max((i for s in samples for i in s.indices), default=-1)
    # wanted[split][label], wanted_total[split]: what each split still lacks (split 0: train, 1: val)
    shares = (1 - fraction, fraction)
    per_label = Counter(i for s in samples for i in s.indices)
    wanted = [[share * per_label[j] for j in range(n_labels)] for share in shares]
    wanted_total = [share * len(samples) for share in shares]
    unplaced: dict[int, list[int]] = {}
    for k in order:
        for j in samples[k].indices:
            unplaced.setdefault(j, []).append(k)
    split_of: dict[int, int] = {}

    def place(k: int, label: int | None) -> None:
        def need(f: int) -> tuple:
            return (wanted[f][label] if label is not None else 0.0, wanted_total[f], rng.random())

        f = max((0, 1) if fraction > 0 else (0,), key=need)
        split_of[k] = f
        wanted_total[f] -= 1
        for j in samples[k].indices:
            wanted[f][j] -= 1

    while True:
        remaining = {j: [k for k in ks if k not in split_of] for j, ks in unplaced.items()}
        remaining = {j: ks for j, ks in remaining.items() if ks}
        if not remaining:
            break
        label = min(remaining, key=lambda j: (len(remaining[j]), j))
        for k in remaining[label]:
            place(k, label)
        del unplaced[label]
    for k in order:  # samples with no label at all: by the split sizes alone
        if k not in split_of:
            place(k, None)
    train = [s for k, s in enumerate(samples) if split_of[k] == 0]
    val = [s for k, s in enumerate(samples) if split_of[k] == 1]
    return train, val
