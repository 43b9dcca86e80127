"""Benchmark: BlazeFace port parity, detection speed, and fine-tuning gain on generated faces.

    python bench/detect.py [--train 200] [--test 60] [--epochs 10] [--threads 1] [--keep DIR]
                           [--only parity|speed|fine-tune|real] [--faces DIR] [--upscale 2.5] [--smoke]

Measures
  (a) max |PyTorch - TFLite interpreter| on raw regressor/classifier outputs, front and back models,
      on the astronaut photo (letterboxed) and on uniform noise;
  (b) images/s of transferlab.detect's Detector on letterboxed 128 px inputs (batch 32, CPU);
  (c) AP@0.5 of the pretrained front model and of a model fine-tuned on small upside-down LFW faces
      pasted on scikit-image photos (tests/detect/synthetic.py), on held-out images, with training time;
  (d) training speed on real photos (the shared faces set, <repo>/../shared/datasets/faces, enlarged
      --upscale times to phone-like sizes): decode time at full size vs at the size the model needs,
      then training images/s of one epoch of blazeface_back as before issue 14 (decoding in the main
      process, float32) and with the defaults (worker processes, bfloat16 backbone where the CPU runs
      it natively), split into time waiting for data and time in forward/backward/step; the ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
from shared_data import SHARED_DATASETS, require_folder  # noqa: E402  (bench/ is the script's folder)


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
    from transferlab.api import train
    from transferlab.detect import evaluate_detector, load_detector, load_faces

    train_dir = write_csv_dataset(work / "train", n_train, seed=0)
    test = load_faces(write_csv_dataset(work / "test", n_test, seed=1))
    result = train(train_dir, model="blazeface_front", out=work / "run", epochs=epochs, patience=0,
                   box_augment={"zoom_out_p": 0.0}, progress=False)
    pretrained = evaluate_detector(load_detector("blazeface_front"), test).ap
    tuned = evaluate_detector(load_detector(result.path), test).ap
    print(f"(c) held-out AP@0.5 ({test.num_faces} faces): pretrained {pretrained:.3f}, fine-tuned {tuned:.3f}; "
          f"{epochs} epochs on {n_train} images in {result.metrics['train_seconds']:.1f} s")


def real_photos(faces: Path, n_images: int, upscale: float, work: Path) -> None:
    """(d) Training speed on real photos: a plain loop as the trainer ran before issue 14 against the
    defaults (worker processes, decoding at the size training needs, channels-last, bfloat16 backbone
    where the CPU runs it), one epoch of blazeface_back each, time split into data and step."""
    from PIL import Image

    from transferlab.core.device import default_workers
    from transferlab.data.images import open_image, open_image_scaled
    from transferlab.api import train
    from transferlab.detect import load_faces

    samples = load_faces(faces / "train.csv").samples[:n_images]
    rows = []
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(samples):
        # phone-like sizes: the shared photos are at most 600 px, so they are enlarged `upscale` times
        image = open_image(s.image)
        if upscale != 1:
            image = image.resize((round(image.width * upscale), round(image.height * upscale)), Image.BICUBIC)
        path = photos / f"{i:04d}.jpg"
        image.save(path, quality=90)
        rows += [f"{path},{','.join(str(float(v) * upscale) for v in b)}\n" for b in s.boxes]
    subset = work / "train.csv"
    subset.write_text("image,xmin,ymin,xmax,ymax\n" + "".join(rows))
    paths = sorted(photos.glob("*.jpg"))[:64]
    t0 = time.perf_counter()
    for path in paths:
        open_image(path)
    t1 = time.perf_counter()
    for path in paths:
        open_image_scaled(path, long_side=512)
    t2 = time.perf_counter()
    side = max(open_image(paths[0]).size)
    print(f"(d) decode {len(paths)} photos of ~{side} px: {len(paths) / (t1 - t0):.0f} images/s at full size, "
          f"{len(paths) / (t2 - t1):.0f} images/s at the size training needs (>= 512 px long side)")
    before = plain_epoch(samples_of(subset))
    print(f"(d) train blazeface_back, {len(samples)} photos, plain loop (full-size decoding in the main process, "
          f"float32, contiguous layout: the trainer before issue 14): {before['images_per_s']:.1f} images/s; "
          f"waiting for data {before['data_s']:.1f} s, forward/backward/step {before['step_s']:.1f} s")
    row = train(subset, model="blazeface_back", out=work / "run", epochs=1, val_split=0.0,
                progress=False).history[-1]
    print(f"(d) train blazeface_back, {len(samples)} photos, transferlab defaults: {row['images_per_s']:.1f} images/s; "
          f"waiting for data {row['data_s']:.1f} s, forward/backward/step {row['step_s']:.1f} s "
          f"({default_workers(len(samples), 32)} worker processes)")
    print(f"(d) defaults vs plain loop: {row['images_per_s'] / before['images_per_s']:.2f}x images/s")


def samples_of(csv_path: Path):
    from transferlab.detect import load_faces

    return load_faces(csv_path).samples


def plain_epoch(samples, batch_size: int = 32) -> dict:
    """One epoch the way the trainer ran before issue 14: full-size decoding, augmentation and letterbox
    in the main process, float32 in the default layout, the same loss and optimizer."""
    from transferlab.data.images import open_image
    from transferlab.detect.augment import AugmentConfig, augment, photometric
    from transferlab.detect.image import letterbox, to_tensor
    from transferlab.detect.loss import DetectionLoss
    from transferlab.detect.weights import load_pretrained

    model = load_pretrained("blazeface_back").train()
    criterion = DetectionLoss(model.config.anchors)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rng = np.random.default_rng(0)
    data_s = step_s = 0.0
    for start in range(0, len(samples), batch_size):
        t0 = time.perf_counter()
        images, targets = [], []
        for s in samples[start:start + batch_size]:
            config = AugmentConfig()  # colour jitter first, on the full-size photo, as it was
            image = photometric(np.asarray(open_image(s.image)), rng, config.jitter)
            image, boxes, kps = augment(image, s.boxes, s.keypoints, rng, config)
            boxed, lb = letterbox(image, 256)
            shift = torch.tensor([lb.pad_x, lb.pad_y])
            images.append(to_tensor(boxed))
            targets.append(((torch.from_numpy(boxes) * lb.scale + shift.repeat(2)) / 256,
                            (torch.from_numpy(kps) * lb.scale + shift) / 256))
        t1 = time.perf_counter()
        losses = criterion(*model(torch.stack(images)), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        data_s, step_s = data_s + t1 - t0, step_s + time.perf_counter() - t1
    return {"images_per_s": len(samples) / (data_s + step_s), "data_s": data_s, "step_s": step_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="keep generated data and the run here")
    ap.add_argument("--faces", type=Path, help="(d): the real face photos, a folder with train.csv "
                    "(default: the shared faces set; without it a full run skips (d))")
    ap.add_argument("--faces-images", type=int, default=338)
    ap.add_argument("--upscale", type=float, default=2.5, help="(d): enlarge the photos to phone-like sizes")
    ap.add_argument("--only", choices=("parity", "speed", "fine-tune", "real"), help="run one case")
    ap.add_argument("--smoke", action="store_true", help="every case at a tiny size (checks the bench runs)")
    args = ap.parse_args()
    if args.smoke:
        args.train, args.test, args.epochs, args.faces_images = 8, 4, 1, 8
    torch.set_num_threads(args.threads)
    faces_dir = None
    if args.only in (None, "real"):
        if args.faces or args.only or (SHARED_DATASETS / "faces").is_dir():
            faces_dir = require_folder((args.faces or SHARED_DATASETS / "faces") / "train.csv",
                                   "the faces set's train.csv", "--faces").parent
        else:
            print(f"(d) skipped: {SHARED_DATASETS / 'faces'} not found (--faces DIR runs it)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        if args.only in (None, "parity"):
            parity()
        if args.only in (None, "speed"):
            from detect.synthetic import _backgrounds, _faces, make_image
            rng = np.random.default_rng(2)
            backgrounds, faces = _backgrounds(), _faces()
            speed([make_image(rng, backgrounds, faces)[0] for _ in range(8 if args.smoke else 128)])
        if args.only in (None, "fine-tune"):
            fine_tune(work, args.train, args.test, args.epochs)
        if faces_dir:
            # training speed uses every core, as a user's run does
            torch.set_num_threads(os.cpu_count() or 1)
            real_photos(faces_dir, args.faces_images, args.upscale, work / "real")


if __name__ == "__main__":
    main()
