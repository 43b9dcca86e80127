"""Benchmark: BlazeFace port parity, detection speed, and fine-tuning gain on generated faces.

    python bench/detect.py [--train 200] [--test 60] [--epochs 10] [--threads 1] [--keep DIR]

Measures
  (a) max |PyTorch - TFLite interpreter| on raw regressor/classifier outputs, front and back models,
      on the astronaut photo (letterboxed) and on uniform noise;
  (b) images/s of transferlab.detect's Detector on letterboxed 128 px inputs (batch 32, CPU);
  (c) AP@0.5 of the pretrained front model and of a model fine-tuned on small upside-down LFW faces
      pasted on scikit-image photos (tests/detect/synthetic.py), on held-out images, with training time.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def parity() -> None:
    from ai_edge_litert.interpreter import Interpreter
    from skimage import data as skdata

    from transferlab.detect.image import letterbox, to_tensor
    from transferlab.detect.weights import load_pretrained, tflite_path

    for name in ("blazeface_front", "blazeface_back"):
        model = load_pretrained(name)
        size = model.config.input_size
        interpreter = Interpreter(model_path=str(tflite_path(name)))
        interpreter.allocate_tensors()
        inputs = {"astronaut": to_tensor(letterbox(skdata.astronaut(), size)[0]),
                  "noise": torch.empty(3, size, size).uniform_(-1, 1, generator=torch.Generator().manual_seed(0))}
        for label, x in inputs.items():
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.permute(1, 2, 0).numpy()[None].copy())
            interpreter.invoke()
            ref = {d["name"]: interpreter.get_tensor(d["index"])[0] for d in interpreter.get_output_details()}
            with torch.no_grad():
                reg, logits = model(x[None])
            d_reg = np.abs(reg[0].numpy() - ref["regressors"]).max()
            d_cls = np.abs(logits[0].numpy() - ref["classificators"][:, 0]).max()
            print(f"(a) {name:16s} {label:9s} max|d regressors| {d_reg:.1e}  max|d logits| {d_cls:.1e}")


def speed(images: list[np.ndarray]) -> None:
    from transferlab.detect.detector import load_detector

    detector = load_detector("blazeface_front")
    detector.detect_arrays(images[:4])
    t0 = time.perf_counter()
    detector.detect_arrays(images)
    dt = time.perf_counter() - t0
    print(f"(b) detect_arrays: {len(images) / dt:.0f} images/s ({len(images)} images, {torch.get_num_threads()} threads)")


def fine_tune(work: Path, n_train: int, n_test: int, epochs: int) -> None:
    from detect.synthetic import write_csv_dataset
    from transferlab.detect import TrainConfig, evaluate_detector, load_detector, load_faces, train
    from transferlab.detect.augment import AugmentConfig

    train_dir = write_csv_dataset(work / "train", n_train, seed=0)
    test = load_faces(write_csv_dataset(work / "test", n_test, seed=1))
    result = train(train_dir, work / "run", TrainConfig(epochs=epochs, augment=AugmentConfig(zoom_out_p=0.0)),
                   progress=False)
    pretrained = evaluate_detector(load_detector("blazeface_front"), test).ap
    tuned = evaluate_detector(load_detector(result.run_dir), test).ap
    print(f"(c) held-out AP@0.5 ({test.num_faces} faces): pretrained {pretrained:.3f}, fine-tuned {tuned:.3f}; "
          f"{epochs} epochs on {n_train} images in {result.train_seconds:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="keep generated data and the run here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        parity()
        from detect.synthetic import _backgrounds, _faces, make_image
        rng = np.random.default_rng(2)
        backgrounds, faces = _backgrounds(), _faces()
        speed([make_image(rng, backgrounds, faces)[0] for _ in range(128)])
        fine_tune(work, args.train, args.test, args.epochs)


if __name__ == "__main__":
    main()
