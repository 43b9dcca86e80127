"""Benchmark: Classifier.predict against the one-image loop, on every kind of input, with every backend.

    python bench/predict.py [--kinds KIND ...] [--sizes 1 30 150 1000] [--repeats 2] [--keep DIR]

Writes four kinds of real images (crops and rescales of scikit-image and scikit-learn photos with
random jitter and noise):
  small-jpeg   about 640x480 JPEGs             large-jpeg  about 3000x2250 JPEGs (a phone photo)
  large-png    about 1280x960 RGB PNGs         grayscale   1024x1024 8-bit grey PNGs (an X-ray's size)
trains a small efficientnet_lite0 run on small JPEGs (feature extraction; the classes: the source
photo) and makes its int8 export, then, for each kind and job size, measures in the same run:
  loop: the seed's script: PIL open, the run's evaluation transform, model(x) one image at a time;
  predict over the job's folder with each backend (auto: the default), each on a freshly loaded run,
  as a `transferlab predict` command gets it (the one-time ONNX export is made before, in the warm-up).
Rounds interleave the measures and each keeps its best round (the machine's speed drifts by tens of
percent over minutes). Prints images/s, each backend's speed as a multiple of the loop's, the lowest
top-1 agreement of a backend with the loop, and the load average (1 minute) after each row.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS = ("small-jpeg", "large-jpeg", "large-png", "grayscale")
BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8")
# distinct images written per kind; larger jobs repeat them under other names (hard links): decoding
# costs the same, and writing 1,000 large photos would take longer than measuring them
POOL = 150
TRAIN_PER_CLASS = 8


def source_photos() -> list[np.ndarray]:
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    photos = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), sd.immunohistochemistry()]
    photos += list(load_sample_images().images)
    return [np.asarray(p)[..., :3] for p in photos]


def jittered(photo: np.ndarray, size: tuple[int, int], rng):
    """A random crop of a photo rescaled to `size` (w, h), maybe mirrored, with colour jitter and noise."""
    from PIL import Image, ImageEnhance

    src = Image.fromarray(photo)
    w, h = src.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = src.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.8, 1.2))
    noise = rng.integers(-6, 7, size=(size[1], size[0], 1), dtype=np.int16)  # sensor-like grain, as textured as a photo
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def kind_size(kind: str, rng) -> tuple[int, int]:
    """A landscape or (one in five) portrait size around the kind's nominal one."""
    if kind == "grayscale":
        return 1024, 1024
    width = {"small-jpeg": 640, "large-jpeg": 3000, "large-png": 1280}[kind]
    w = int(width * rng.uniform(0.94, 1.06))
    h = int(round(w * rng.uniform(0.70, 0.80)))
    return (h, w) if rng.random() < 0.2 else (w, h)


def write_kind(folder: Path, kind: str, n: int, seed: int = 0, photos=None) -> list[Path]:
    """n images of a kind in `folder` (kept when already there), the first POOL of them distinct."""
    rng = np.random.default_rng(seed)
    photos = photos if photos is not None else source_photos()
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".jpg" if kind.endswith("jpeg") else ".png"
    paths = []
    for i in range(n):
        path = folder / f"{kind}_{i:04d}{suffix}"
        paths.append(path)
        if path.exists():
            continue
        if i >= POOL:
            os.link(paths[i % POOL], path)
            continue
        img = jittered(photos[i % len(photos)], kind_size(kind, rng), rng)
        if kind == "grayscale":
            img.convert("L").save(path)
        elif suffix == ".png":
            img.save(path)
        else:
            img.save(path, quality=int(rng.integers(80, 96)))
    return paths


def make_run(base: Path, calibration: int) -> Path:
    """A feature-extracted efficientnet_lite0 run (classes: the source photos) with its int8 export."""
    from transferlab.api import export, train

    run = base / "run"
    if (run / "quantization.json").is_file():
        return run
    photos = source_photos()
    for c in range(len(photos)):
        write_kind(base / "train" / f"photo{c}", "small-jpeg", TRAIN_PER_CLASS, seed=100 + c, photos=[photos[c]])
    train(base / "train", model="efficientnet_lite0", strategy="feature-extract", epochs=3, augment="none",
          batch_size=16, out=run, progress=False)
    export(str(run), quantize="int8", calibration=calibration, max_drop=100.0)
    return run


def job_folder(base: Path, kind: str, size: int) -> Path:
    """A folder holding the first `size` images of the kind (hard links), as a user's job would."""
    pool = write_kind(base / "images" / kind, kind, size)
    folder = base / "jobs" / f"{kind}-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    for p in pool:
        if not (folder / p.name).exists():
            os.link(p, folder / p.name)
    return folder


def loop(model, transform, paths) -> tuple[float, list[int]]:
    """The seed's script: one image at a time, full decode, the reference transform, a batch of 1."""
    import torch
    from PIL import Image

    t = time.perf_counter()
    tops = []
    with torch.inference_mode():
        for p in paths:
            img = Image.open(p).convert("RGB")
            x = transform(img).unsqueeze(0)
            tops.append(int(model(x).argmax(1)))
    return time.perf_counter() - t, tops


def predict(run: Path, folder: Path, backend: str, args) -> tuple[float, list[int], str]:
    """(seconds, top-1 per image, the backend auto chose) on a freshly loaded run."""
    import transferlab

    clf = transferlab.load(str(run))
    t = time.perf_counter()
    records = clf.predict(folder, top=5, batch_size=args.batch_size, num_workers=args.workers, progress=False,
                          backend=backend)
    seconds = time.perf_counter() - t
    assert all(r["status"] == "ok" for r in records), [r for r in records if r["status"] != "ok"][:3]
    return seconds, [r["top"][0]["index"] for r in records], clf.last_backend


def measure_row(run, model, transform, folder, args) -> dict:
    """Best of args.repeats interleaved rounds of the loop and each backend on one job."""
    from transferlab.data.images import find_images

    paths = find_images(folder)
    best: dict[str, float] = {}
    tops, chosen = {}, {}
    for _ in range(args.repeats):
        seconds, tops["loop"] = loop(model, transform, paths)
        best["loop"] = min(seconds, best.get("loop", float("inf")))
        for backend in args.backends:
            seconds, tops[backend], chosen[backend] = predict(run, folder, backend, args)
            best[backend] = min(seconds, best.get(backend, float("inf")))
    agree = min(np.mean(np.equal(tops[b], tops["loop"])) for b in args.backends)
    return {"n": len(paths), "seconds": best, "auto": chosen.get("auto"), "agree": agree,
            "load": os.getloadavg()[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--sizes", "--images", nargs="+", type=int, default=[1, 30, 150, 1000],
                    help="job sizes (images per predict call)")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="predict's decoding threads (default: automatic)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; each measure keeps its best")
    ap.add_argument("--calibration", type=int, default=64, help="images calibrating the int8 export")
    ap.add_argument("--keep", type=Path, help="write the images and the run here and keep them")
    args = ap.parse_args(argv)

    import transferlab  # before torch: transferlab sets its OpenMP defaults (see transferlab/__init__.py)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="tl_bench_")
    base = args.keep or Path(tmp.name)
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    t = time.perf_counter()
    run = make_run(base, args.calibration)
    print(f"run with its int8 export ready in {time.perf_counter() - t:.0f} s", flush=True)
    ref = transferlab.load(str(run))
    model, transform = ref.model.eval(), ref.preprocessing.eval_transform()
    warm = job_folder(base, "small-jpeg", 1)
    for backend in args.backends:  # first calls: oneDNN's kernels, the ONNX export (once per weights, then cached)
        t = time.perf_counter()
        predict(run, warm, backend, args)
        print(f"warm-up {backend}: {time.perf_counter() - t:.2f} s", flush=True)

    head = " | ".join(f"{b} img/s (x loop)" for b in args.backends)
    print(f"\n| kind | images | loop img/s | {head} | auto ran | top-1 agreement | load |")
    print("|---|---:|---:|" + "---:|" * len(args.backends) + "---|---:|---:|")
    for kind in args.kinds:
        for size in args.sizes:
            r = measure_row(run, model, transform, job_folder(base, kind, size), args)
            s, n = r["seconds"], r["n"]
            cells = " | ".join(f"{n / s[b]:.1f} ({s['loop'] / s[b]:.2f}x)" for b in args.backends)
            print(f"| {kind} | {n} | {n / s['loop']:.1f} | {cells} | {r['auto']} | {100 * r['agree']:.1f}% | "
                  f"{r['load']:.1f} |", flush=True)
    print(f"\nload average after: {os.getloadavg()}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
