"""Benchmark: transferlab.predict over a folder vs a naive one-image-at-a-time script vs raw forward.

    python bench/predict.py [--images 200] [--batch-size 32] [--workers N] [--threads N] [--keep DIR]

Writes real-size JPEGs (crops/rescales of scikit-image and scikit-learn photos with random jitter),
then measures on efficientnet_lite0 with its real ImageNet weights:
  (a) transferlab's Classifier.predict over the folder (decoding, transform, batching, top-k);
  (b) a plain script: PIL open, the same eval transform, forward on a batch of 1, one image at a time;
  (c) the model's forward alone on pre-made tensors at (a)'s batch size: the floor for (a).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def source_photos() -> list[np.ndarray]:
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    photos = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), sd.immunohistochemistry()]
    photos += list(load_sample_images().images)
    return [np.asarray(p)[..., :3] for p in photos]


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n JPEGs of about 640x480 (random crop, rescale, flip, colour jitter and noise of real photos)."""
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    photos = source_photos()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = Image.fromarray(photos[i % len(photos)])
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x0, y0, x0 + cw, y0 + ch))
        tw = int(rng.integers(600, 681))
        th = int(round(tw * rng.uniform(0.70, 0.80)))
        if rng.random() < 0.2:  # some portrait images
            tw, th = th, tw
        img = img.resize((tw, th), Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.8, 1.2))
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, size=(th, tw, 3), dtype=np.int16)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        path = folder / f"img_{i:04d}.jpg"
        img.save(path, quality=int(rng.integers(80, 96)))
        paths.append(path)
    return paths


def peak_rss_mb() -> tuple[float, float]:
    """(this process, largest child) peak resident set size in MiB (Linux reports KiB)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale)


def bench_api(clf, folder, batch_size, workers, backend):
    t = time.perf_counter()
    records = clf.predict(folder, top=5, batch_size=batch_size, num_workers=workers, progress=False,
                          backend=backend)
    seconds = time.perf_counter() - t
    assert all(r["status"] == "ok" for r in records), [r for r in records if r["status"] != "ok"][:3]
    return seconds, records


def bench_naive(model, transform, paths):
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


def bench_forward(forward, batches):
    import torch

    with torch.inference_mode():
        forward(batches[0])  # warm-up
        t = time.perf_counter()
        for b in batches:
            forward(b)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="predict's decoding workers (default: automatic)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: transferlab's choice)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; each measure keeps its best")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"], choices=["torch", "onnxruntime"])
    ap.add_argument("--keep", type=Path, help="write the images here and keep them")
    args = ap.parse_args(argv)

    import transferlab  # before torch: transferlab sets its OpenMP defaults (see transferlab/device.py)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.keep:
        folder = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tl_bench_")
        folder = Path(tmp.name)
    t = time.perf_counter()
    paths = write_images(folder, args.images)
    write_s = time.perf_counter() - t
    sizes = [os.path.getsize(p) for p in paths]

    clf = transferlab.load("efficientnet_lite0")
    model = clf.model.eval()
    transform = clf.transform

    from PIL import Image

    from transferlab.core.device import default_workers, forward_in_passes, inference_threads, pick_device

    tensors = [transform(Image.open(p).convert("RGB")) for p in paths]
    batches = [torch.stack(tensors[i:i + args.batch_size]) for i in range(0, len(tensors), args.batch_size)]
    dev = pick_device(None)
    workers = default_workers(len(paths), args.batch_size) if args.workers is None else args.workers
    plain = transferlab.create_model("efficientnet_lite0").eval()
    naive_transform = clf.preprocessing.eval_transform()
    engine = clf.onnx_forward(torch.get_num_threads()) if "onnxruntime" in args.backends else None

    def forward_as_predict_runs_it(backend):
        if backend == "onnxruntime":
            return bench_forward(engine, batches)
        model.to(memory_format=torch.channels_last)
        with inference_threads(dev, workers):
            seconds = bench_forward(lambda b: forward_in_passes(model, b, dev), batches)
        model.to(memory_format=torch.contiguous_format)
        return seconds

    # The machine's speed drifts by tens of percent over minutes, so every measure runs once per
    # round, rounds interleave them, and each keeps its best round.
    best: dict[str, float] = {}
    records, naive_top1 = {}, []
    for _ in range(args.repeats):
        timings = {"b": None, "c": bench_forward(model, batches)}
        timings["b"], naive_top1 = bench_naive(plain, naive_transform, paths)
        for backend in args.backends:
            timings[f"c' {backend}"] = forward_as_predict_runs_it(backend)
            timings[f"a {backend}"], records[backend] = bench_api(clf, folder, args.batch_size, args.workers,
                                                                  backend)
        best = {k: min(v, best.get(k, float("inf"))) for k, v in timings.items()}
    with inference_threads(dev, workers):
        threads_in_predict = torch.get_num_threads()
    b_s, c_s = best["b"], best["c"]
    a_s = {b: best[f"a {b}"] for b in args.backends}
    forward_s = {b: best[f"c' {b}"] for b in args.backends}

    rss_self, rss_child = peak_rss_mb()
    n = len(paths)

    print(f"{n} JPEGs, mean {np.mean(sizes) / 1024:.0f} KiB (written in {write_s:.1f}s); efficientnet_lite0; "
          f"batch {args.batch_size}; workers {workers}; torch threads {torch.get_num_threads()} "
          f"({threads_in_predict} while predicting); {os.cpu_count()} CPUs; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}")
    rows = [("(b) naive loop, batch of 1", b_s), ("(c) forward only, pre-made tensors, plain model", c_s)]
    for backend in args.backends:
        rows += [(f"(a) transferlab.predict(folder), {backend}", a_s[backend]),
                 (f"(c') forward only, as predict runs it, {backend}", forward_s[backend])]
    print(f"{'measure':<56} {'seconds':>8} {'images/s':>9}")
    for label, s in rows:
        print(f"{label:<56} {s:8.2f} {n / s:9.1f}")
    for backend in args.backends:
        top1 = {r["path"]: r["top"][0]["index"] for r in records[backend]}
        agree = np.mean([top1[str(p)] == k for p, k in zip(paths, naive_top1)])
        print(f"{backend}: speed-up a/b {b_s / a_s[backend]:.2f}x (target >= 3x); time of a vs raw forward c "
              f"{100 * (a_s[backend] / c_s - 1):+.0f}% (target <= +25%), vs its own engine's forward c' "
              f"{100 * (a_s[backend] / forward_s[backend] - 1):+.0f}%; "
              f"top-1 agreement with b (full-size decode) {100 * agree:.1f}%")
    print(f"peak RSS: main process {rss_self:.0f} MiB, largest worker {rss_child:.0f} MiB")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
