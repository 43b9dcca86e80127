"""Fine-tune BlazeFace on a face dataset; writes a self-contained, resumable run folder.

Run folder (the shared schema, kind "detector"): model.safetensors, model.json, checkpoints/ (last.pt,
best.safetensors), metrics.csv (from epoch 0, the pretrained model), report.md, ap_curve.png,
pr_curve.png, skipped.txt (annotations that were dropped, with reasons).

Never worse than the start: the pretrained model is evaluated on the validation split before the
first step (epoch 0); the saved weights are the best epoch's by validation AP@0.5, or the pretrained
ones when no epoch beats them.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..core.device import default_workers, pick_device
from ..core.errors import TransferlabError
from ..core.io import atomic_write_text, save_weights
from ..data.images import open_image_scaled
from ..runs.folder import prepare_run_dir, remove_stale_temp_files, write_meta
from ..runs.html import write_html_report
from ..runs.view import write_evaluations
from ..runs.metrics import write_metrics
from ..runs.report import plot_metric, plot_pr_curves
from ..training.checkpoint import Checkpointer
from ..training.loop import amp_dtype
from ..training.schedules import lr_factor
from .augment import AugmentConfig, augment, photometric
from .data import FaceDataset, Sample, load_faces
from .detector import Detector
from .evaluate import PRCurve, evaluate_detector
from .image import letterbox, to_tensor
from .loss import DetectionLoss, LossConfig
from .weights import load_pretrained

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose", "mouth", "right_ear_tragion", "left_ear_tragion")


@dataclass
class TrainConfig:
    """Every knob of a detector fine-tuning run; the field names are the classifier's for the same knobs."""

    model: str = "blazeface_front"
    epochs: int = 10
    # BatchNorm is folded into the pretrained convolutions, so weight scales span 1e-4..10 and Adam
    # moves every weight by ~lr per step whatever its scale: one lr of 5e-4 wrecked the detector in one
    # step, 3e-5 kept it on real photos but barely learned upside-down faces (held-out AP 0.58), 3e-4 the
    # reverse (0.91 upside down, real photos 0.77 -> 0.59). Relative steps do both: real photos 0.77 ->
    # 0.81 in 3 epochs, upside-down 0.93 (bench/detect.py, faces set; issue 14)
    lr: float = 3e-3
    # "relative": each tensor's lr is lr x its RMS (a step of a fixed share of the weight's own size,
    # as LAMB's trust ratio), for weights whose scales span 1e-4..10; "none": one lr for all
    lr_scaling: str = "relative"
    warmup_epochs: float = 1.0       # linear warm-up of the learning rate, then cosine decay
    batch_size: int = 32
    freeze: int = 0                  # leading backbone blocks (stem first) kept at pretrained values
    weight_decay: float = 1e-4
    val_split: float = 0.2           # held out from the training data when no validation set is given
    seed: int = 0
    workers: int | None = None       # data-loading processes (None: from the machine and the job size)
    device: str = "auto"
    # bfloat16 autocast for the backbone (the heads stay float32: box offsets are in pixels, where
    # bfloat16 keeps ~3 digits); auto: on for CUDA and for CPUs with native bfloat16 (AMX/AVX-512 BF16)
    amp: str = "auto"
    score_threshold: float = 0.5
    iou_threshold: float = 0.3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict:
        """Plain data for model.json and checkpoints."""
        # JSON round trip: plain lists/dicts only, so the checkpoint loads with weights_only=True
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Back from to_dict()."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        aug, loss = dict(d.pop("augment", {})), d.pop("loss", {})
        if "crop_min_ious" in aug:
            aug["crop_min_ious"] = tuple(aug["crop_min_ious"])
        return cls(**d, augment=AugmentConfig(**aug), loss=LossConfig(**loss))


class FaceTrainSet(Dataset):
    """Augmented, letterboxed samples with targets normalised to the model input."""

    def __init__(self, samples: list[Sample], input_size: int, augment_config: AugmentConfig | None, seed: int = 0):
        self.samples, self.size, self.augment_config, self.seed = samples, input_size, augment_config, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        # decode at the size training needs (JPEG draft, then a resize): twice the input side leaves crops
        # sharp, and augmentation on a 512 px image costs a third of an 800 px one (measured 24 -> ~9 ms)
        need = self.size * (2 if self.augment_config is not None and self.augment_config.crop_p > 0 else 1)
        decoded, scale = open_image_scaled(s.image, long_side=need)
        if max(decoded.size) > need:
            factor = need / max(decoded.size)
            decoded = decoded.resize((max(1, round(decoded.width * factor)), max(1, round(decoded.height * factor))),
                                     Image.BILINEAR)
            scale *= factor
        image = np.asarray(decoded)
        boxes, kps = s.boxes * np.float32(scale), s.keypoints * np.float32(scale)
        rng = None
        if self.augment_config is not None:
            # seeded by (run seed, epoch, index): identical across workers and after a resume
            rng = np.random.default_rng([self.seed, self.epoch, i])
            image, boxes, kps = augment(image, boxes, kps, rng, self.augment_config)
        boxed, lb = letterbox(image, self.size)
        if rng is not None and self.augment_config.jitter:
            # colour jitter on the letterboxed picture only: the zero border is what the model expects
            h, w = max(1, round(image.shape[0] * lb.scale)), max(1, round(image.shape[1] * lb.scale))
            window = boxed[lb.pad_y:lb.pad_y + h, lb.pad_x:lb.pad_x + w]
            boxed[lb.pad_y:lb.pad_y + h, lb.pad_x:lb.pad_x + w] = photometric(window, rng, self.augment_config.jitter)
        boxes = (torch.from_numpy(boxes) * lb.scale + torch.tensor([lb.pad_x, lb.pad_y] * 2)) / self.size
        kps = (torch.from_numpy(kps) * lb.scale + torch.tensor([lb.pad_x, lb.pad_y])) / self.size
        return to_tensor(boxed), boxes.float(), kps.float()


def _collate(batch):
    images, boxes, kps = zip(*batch)
    return torch.stack(images), list(zip(boxes, kps))


def split_dataset(dataset: FaceDataset, val_split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded (train, validation) split of the images."""
    n = len(dataset.samples)
    n_val = int(round(n * val_split)) if n >= 5 else 0
    order = np.random.default_rng(seed).permutation(n)
    return [dataset.samples[i] for i in order[n_val:]], [dataset.samples[i] for i in order[:n_val]]


def freeze_blocks(model, n: int) -> None:
    """Keep the first n backbone blocks at their pretrained values."""
    blocks = model.blocks()
    if not 0 <= n <= len(blocks):
        raise TransferlabError(f"--freeze {n}: {model.config.name} has {len(blocks)} backbone blocks; use 0..{len(blocks)}")
    for block in blocks[:n]:
        block.requires_grad_(False)


@dataclass
class TrainResult:
    """What detect.train returns: the run folder, the epochs, and validation AP before and after."""

    run_dir: Path
    history: list[dict]
    val: PRCurve | None
    pretrained_val: PRCurve | None
    train_seconds: float
    meta: dict = field(default_factory=dict)


def train(data: str | Path, out: str | Path, config: TrainConfig | None = None, *, fmt: str = "auto",
          val_data: str | Path | None = None, resume: bool = False, progress: bool = True,
          callbacks=()) -> TrainResult:
    """Fine-tune a pretrained BlazeFace on annotated faces into the run folder `out` (resumable).

    callbacks: called as callback(epoch_row) after each epoch is saved (the classifier trainer's hook).
    """
    out = Path(out)
    checkpoints = Checkpointer(out)
    state = None
    if resume:
        state = checkpoints.load()
        config = TrainConfig.from_dict(state["config"])  # resume continues the run exactly as configured
        remove_stale_temp_files(out)
    else:
        prepare_run_dir(out)
    config = config or TrainConfig()

    dataset = load_faces(data, fmt)
    if val_data is not None:
        train_samples, val_samples = dataset.samples, load_faces(val_data, fmt).samples
    else:
        train_samples, val_samples = split_dataset(dataset, config.val_split, config.seed)
    device = pick_device(config.device)
    model = load_pretrained(config.model).to(device)
    if device.type == "cpu":
        # depthwise + pointwise convolutions run ~3x faster in NHWC on CPU (forward and backward)
        model = model.to(memory_format=torch.channels_last)
    freeze_blocks(model, config.freeze)
    train_set = FaceTrainSet(train_samples, model.config.input_size, config.augment, config.seed)
    steps_per_epoch = -(-len(train_set) // config.batch_size)
    criterion = DetectionLoss(model.config.anchors, config.loss).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor("cosine", total_steps, round(config.warmup_epochs * steps_per_epoch)))
    history, start_epoch, elapsed = [], 0, 0.0
    best = {"epoch": 0, "val_ap50": None}  # epoch 0: the pretrained weights
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch, elapsed = state["history"], state["epoch"] + 1, state["train_seconds"]
        best = state["best"]

    atomic_write_text(out / "skipped.txt", "".join(f"{s.where}\t{s.reason}\n" for s in dataset.skipped))
    detector = Detector(model, config.score_threshold, config.iou_threshold, source=str(out))
    val_set = FaceDataset(val_samples, format=dataset.format)
    pretrained_val = None
    if val_samples and state is None:
        # epoch 0: the pretrained model on the same validation images, the bar every epoch must beat
        t0 = time.perf_counter()
        model.eval()
        pretrained_val = evaluate_detector(detector, val_set)
        best["val_ap50"] = round(pretrained_val.ap, 5)
        elapsed += time.perf_counter() - t0
        history.append({"epoch": 0, "train_loss": None, "lr": 0.0, "val_ap50": best["val_ap50"],
                        "seconds": round(elapsed, 2)})
        write_metrics(out / "metrics.csv", history)
    workers = config.workers if config.workers is not None else default_workers(len(train_set), config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        train_set.epoch = epoch
        loss, timing = _train_epoch(model, criterion, optimizer, scheduler, train_set, config, epoch, device,
                                    workers, progress)
        row = {"epoch": epoch + 1, "train_loss": round(loss, 5), "lr": optimizer.param_groups[0]["lr"]}
        if val_samples:
            model.eval()
            row["val_ap50"] = round(evaluate_detector(detector, val_set).ap, 5)
            if row["val_ap50"] > best["val_ap50"]:
                best = {"epoch": epoch + 1, "val_ap50": row["val_ap50"]}
                checkpoints.save_best(model.state_dict())
        elapsed += time.perf_counter() - t0
        row.update(timing, seconds=round(elapsed, 2))
        history.append(row)
        write_metrics(out / "metrics.csv", history)
        checkpoints.save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "config": config.to_dict(), "history": history,
                          "train_seconds": elapsed, "best": best})
        for callback in callbacks:
            callback(row)
    model.eval()
    if val_samples:
        # never worse than the start: the best epoch by validation AP, or the pretrained weights
        weights = checkpoints.best_weights() if best["epoch"] > 0 else None
        model.load_state_dict(weights if weights is not None else load_pretrained(config.model).state_dict())
        if best["epoch"] == 0 and config.epochs > 0:
            print(f"no epoch beat the pretrained model's validation AP@0.5 ({best['val_ap50']:.4f}); "
                  f"kept the pretrained weights", file=sys.stderr)
    return _finish(out, model, config, dataset, train_samples, val_set, history, elapsed, str(data),
                   best["epoch"] if val_samples else None, pretrained_val)


def _train_epoch(model, criterion, optimizer, scheduler, train_set, config, epoch, device, workers, progress):
    """One pass; returns the mean loss and where the time went (waiting for data vs the step)."""
    model.train()
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, collate_fn=_collate,
                        num_workers=workers, prefetch_factor=4 if workers else None,
                        generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
    channels_last = device.type == "cpu"
    dtype = detector_amp_dtype(config.amp, device)
    total, n, data_s, step_s = 0.0, 0, 0.0, 0.0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    t = time.perf_counter()
    for images, targets in bar:
        t1 = time.perf_counter()
        data_s += t1 - t
        images = images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [(b.to(device), k.to(device)) for b, k in targets]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            f1, f2 = model.features(images)
        losses = criterion(*model.heads(f1.float(), f2.float()), targets)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
        total += losses["loss"].item() * len(images)
        n += len(images)
        bar.set_postfix(loss=f"{total / n:.4f}")
        t = time.perf_counter()
        step_s += t - t1
    timing = {"images_per_s": round(n / max(data_s + step_s, 1e-9), 2), "data_s": round(data_s, 2),
              "step_s": round(step_s, 2)}
    return total / max(n, 1), timing


def param_groups(model, config: TrainConfig) -> list[dict]:
    """Optimizer groups of the trainable weights: one lr, or one per tensor scaled by its RMS."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.lr_scaling == "none":
        return [{"params": params}]
    if config.lr_scaling != "relative":
        raise TransferlabError("lr_scaling must be none or relative")
    return [{"params": [p], "lr": config.lr * max(float(p.detach().pow(2).mean().sqrt()), 1e-3)} for p in params]


def detector_amp_dtype(setting: str, device: torch.device):
    """The autocast dtype for the backbone: the classifier's rule, plus bfloat16 on CPUs that run it
    natively (measured on AMX: BlazeFace-back forward+backward 21-25 -> 41-42 images/s)."""
    if setting == "auto" and device.type == "cpu":
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return amp_dtype(setting, device)


def _finish(out, model, config, dataset, train_samples, val_set, history, elapsed, source,
            best_epoch=None, pretrained=None) -> TrainResult:
    """Saves `model` (the best epoch's weights, or the pretrained ones when no epoch beat them)."""
    save_weights(model.state_dict(), out / "model.safetensors")
    val = None
    trained = [r for r in history if r["epoch"] > 0]
    metrics = {"epochs_completed": len(trained), "train_seconds": round(elapsed, 2),
               "train_loss": trained[-1]["train_loss"] if trained else None}
    if trained and "images_per_s" in trained[-1]:
        metrics["images_per_s"] = round(sum(r["images_per_s"] for r in trained) / len(trained), 2)
    if val_set.samples:
        val = evaluate_detector(Detector(model), val_set)
        if pretrained is None:  # resumed run: epoch 0 was evaluated before the interruption
            pretrained = evaluate_detector(Detector(load_pretrained(config.model)), val_set)
        metrics.update(val_ap50=round(val.ap, 5), pretrained_val_ap50=round(pretrained.ap, 5),
                       best_epoch=best_epoch, kept="pretrained" if best_epoch == 0 else "fine-tuned")
        plot_pr_curves({"saved": val, "pretrained": pretrained}, out / "pr_curve.png")
        plot_metric(history, "val_ap50", out / "ap_curve.png", "validation AP@0.5 (epoch 0: pretrained)")
    meta = write_meta(out, "detector", {
        "architecture": config.model,
        "input_size": model.config.input_size,
        "anchors": model.config.anchors.to_dict(),
        "thresholds": {"score": config.score_threshold, "iou": config.iou_threshold},
        "box_format": "xyxy pixels; 6 keypoints " + ", ".join(KEYPOINT_NAMES),
        "config": config.to_dict(),
        "data": {"source": source, "format": dataset.format, "train_images": len(train_samples),
                 "val_images": len(val_set.samples), "skipped_annotations": len(dataset.skipped)},
        "metrics": metrics,
    })
    atomic_write_text(out / "report.md", _report(config, dataset, train_samples, val_set, history, metrics))
    if val is not None:
        write_evaluations(out, {"val": {"summary": f"{len(val_set.samples)} validation images",
                                        "images": len(val_set.samples),
                                        "ap50": {"saved": val.ap, f"pretrained {config.model}": pretrained.ap}}})
    write_html_report(out)
    return TrainResult(out, history, val, pretrained, elapsed, meta)


def _report(config, dataset, train_samples, val_set, history, metrics) -> str:
    lines = [f"# Face detector fine-tuning ({config.model})", "",
             f"- data: {dataset.summary()}",
             f"- split: {len(train_samples)} train / {len(val_set.samples)} validation images",
             f"- epochs: {metrics['epochs_completed']}, lr {config.lr}, batch {config.batch_size}, "
             f"freeze {config.freeze}, training time {metrics['train_seconds']} s"
             + (f", {metrics['images_per_s']} training images/s" if "images_per_s" in metrics else ""), ""]
    if "val_ap50" in metrics:
        if metrics["best_epoch"] == 0:
            lines += ["**No epoch beat the pretrained model on the validation images: the saved weights are the "
                      "pretrained ones.**", ""]
        else:
            lines += [f"Saved weights: epoch {metrics['best_epoch']}, the best by validation AP@0.5.", ""]
        lines += ["| model | AP@0.5 (validation) |", "|---|---|",
                  f"| pretrained {config.model} (epoch 0) | {metrics['pretrained_val_ap50']:.4f} |",
                  f"| saved (epoch {metrics['best_epoch']}) | {metrics['val_ap50']:.4f} |", "",
                  "![validation AP by epoch](ap_curve.png)", "", "![precision/recall](pr_curve.png)", ""]
    else:
        lines += ["No validation images: the saved weights are the last epoch's.", ""]
    lines += ["| epoch | train loss | val AP@0.5 | images/s |", "|---|---|---|---|"]
    lines += [f"| {r['epoch']}{' (pretrained)' if r['epoch'] == 0 else ''} | "
              f"{'-' if r['train_loss'] is None else format(r['train_loss'], '.4f')} | {r.get('val_ap50', '-')} | "
              f"{r.get('images_per_s', '-')} |" for r in history]
    if dataset.skipped:
        lines += ["", f"{len(dataset.skipped)} annotations were skipped; see skipped.txt."]
    return "\n".join(lines) + "\n"
