"""Multi-label decision thresholds: transferlab's rule against 0.5 and against F1's argmax, on trained runs.

    python bench/thresholds.py RUN [RUN ...] --train TRAIN_TABLE --val VAL_TABLE [--splits 60]

For each run (a multi-label transferlab run folder) its validation scores are computed once; then, over
`--splits` seeded random halvings of the validation table, thresholds are set on one half and macro F1 is
measured on the other (both ways), for:
  * 0.5 for every label;
  * argmax: per label, the midpoint between the score where F1 peaks and the next lower one (the rule
    transferlab used before);
  * transferlab's rule (inference.multilabel.tune_thresholds: half the best F1).
A threshold tuned on the same scores it is measured on always looks best; halving shows what it does on
images it did not see. Prints one row per run and the number of runs each rule beats 0.5 on.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from multilabel import cross_fitted_f1, run_scores, targets_of
from transferlab.data.folders import scan_dataset
from transferlab.data.tables import Table
from transferlab.inference.multilabel import f1_curve, mean_average_precision, tune_thresholds


def argmax_thresholds(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """The rule before: per label, the midpoint below the score where validation F1 peaks."""
    out = []
    for j in range(targets.shape[1]):
        s, t = scores[:, j], targets[:, j]
        if not t.any():
            out.append(0.5)
            continue
        distinct, f1 = f1_curve(s, t)
        k = int(np.argmax(f1))
        out.append(float((distinct[k] + (distinct[k + 1] if k + 1 < len(distinct) else 0.0)) / 2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--train", type=Path, required=True, help="the runs' training table (it names the labels)")
    ap.add_argument("--val", type=Path, required=True, help="the validation table the runs are scored on")
    ap.add_argument("--splits", type=int, default=60, help="random halvings of the validation table")
    args = ap.parse_args()
    scan = scan_dataset(Table(args.train, val=args.val), multilabel=True)
    targets = targets_of(scan.splits["val"], len(scan.classes))
    rules = {"argmax": argmax_thresholds, "transferlab": tune_thresholds}
    beats = dict.fromkeys(rules, 0)
    print(f"macro F1 cross-fitted over {args.splits} halvings of {len(targets)} validation images")
    print("| run | val mAP | 0.5 | argmax (before) | half the best F1 (transferlab) |")
    print("|---|---:|---:|---:|---:|")
    for run in args.runs:
        scores = run_scores(run, scan)
        f1 = {name: cross_fitted_f1(scores, targets, scan.classes, rule, args.splits) for name, rule in rules.items()}
        half = f1["transferlab"][1]
        for name in rules:
            beats[name] += f1[name][0] > half
        name = "/".join(run.parts[-3:])
        print(f"| {name} | {mean_average_precision(scores, targets):.3f} | {half:.4f} | {f1['argmax'][0]:.4f} | "
              f"{f1['transferlab'][0]:.4f} |", flush=True)
    print(f"\nruns where the rule beats 0.5: argmax {beats['argmax']}/{len(args.runs)}, "
          f"transferlab {beats['transferlab']}/{len(args.runs)}")


if __name__ == "__main__":
    main()
