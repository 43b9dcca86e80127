"""Fine-tune BlazeFace on a face dataset; writes a self-contained, resumable run folder.

Run folder: model.safetensors, model.json, checkpoints/last.pt, metrics.csv, report.md,
pr_curve.png, skipped.txt (annotations that were dropped, with reasons).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..core.errors import CheckpointError, TransferlabError
from ..core.device import pick_device
from ..core.io import atomic_torch_save, atomic_write_text, safe_torch_load, save_weights
from ..runs.folder import prepare_run_dir, write_meta
from ..runs.html import write_html_report
from ..runs.view import write_evaluations
from ..runs.metrics import write_metrics
from ..runs.report import plot_pr_curves
from .augment import AugmentConfig, augment
from .data import FaceDataset, Sample, load_faces
from .detector import Detector
from .evaluate import PRCurve, evaluate_detector
from .image import letterbox, load_image, to_tensor
from .loss import DetectionLoss, LossConfig
from .weights import load_pretrained

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose", "mouth", "right_ear_tragion", "left_ear_tragion")


@dataclass
class TrainConfig:
    """Every knob of a detector fine-tuning run; the field names are the classifier's for the same knobs."""

    model: str = "blazeface_front"
    epochs: int = 10
    lr: float = 5e-4                 # higher rates wreck the pretrained features within an epoch
    batch_size: int = 32
    freeze: int = 0                  # leading backbone blocks (stem first) kept at pretrained values
    weight_decay: float = 1e-4
    val_split: float = 0.2           # held out from the training data when no validation set is given
    seed: int = 0
    workers: int = 0
    device: str = "auto"
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
        image, boxes, kps = load_image(s.image), s.boxes, s.keypoints
        if self.augment_config is not None:
            # seeded by (run seed, epoch, index): identical across workers and after a resume
            rng = np.random.default_rng([self.seed, self.epoch, i])
            image, boxes, kps = augment(image, boxes, kps, rng, self.augment_config)
        boxed, lb = letterbox(image, self.size)
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
          val_data: str | Path | None = None, resume: bool = False, progress: bool = True) -> TrainResult:
    """Fine-tune a pretrained BlazeFace on annotated faces into the run folder `out` (resumable)."""
    out = Path(out)
    ckpt_path = out / "checkpoints" / "last.pt"
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise CheckpointError(f"{ckpt_path}: no checkpoint to resume; train without --resume first")
        state = safe_torch_load(ckpt_path)
        config = TrainConfig.from_dict(state["config"])  # resume continues the run exactly as configured
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
    freeze_blocks(model, config.freeze)
    train_set = FaceTrainSet(train_samples, model.config.input_size, config.augment, config.seed)
    steps_per_epoch = -(-len(train_set) // config.batch_size)
    criterion = DetectionLoss(model.config.anchors, config.loss).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    history, start_epoch, elapsed = [], 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch, elapsed = state["history"], state["epoch"] + 1, state["train_seconds"]

    atomic_write_text(out / "skipped.txt", "".join(f"{s.where}\t{s.reason}\n" for s in dataset.skipped))
    detector = Detector(model, config.score_threshold, config.iou_threshold, source=str(out))
    val_set = FaceDataset(val_samples, format=dataset.format)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        train_set.epoch = epoch
        loss = _train_epoch(model, criterion, optimizer, scheduler, train_set, config, epoch, device, progress)
        row = {"epoch": epoch + 1, "train_loss": round(loss, 5), "lr": optimizer.param_groups[0]["lr"]}
        if val_samples:
            model.eval()
            row["val_ap50"] = round(evaluate_detector(detector, val_set).ap, 5)
        elapsed += time.perf_counter() - t0
        row["seconds"] = round(elapsed, 2)
        history.append(row)
        write_metrics(out / "metrics.csv", history)
        atomic_torch_save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "config": config.to_dict(),
                           "history": history, "train_seconds": elapsed}, ckpt_path)
    model.eval()
    return _finish(out, model, config, dataset, train_samples, val_set, history, elapsed, str(data))


def _train_epoch(model, criterion, optimizer, scheduler, train_set, config, epoch, device, progress) -> float:
    model.train()
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, collate_fn=_collate,
                        num_workers=config.workers,
                        generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
    total, n = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    for images, targets in bar:
        targets = [(b.to(device), k.to(device)) for b, k in targets]
        losses = criterion(*model(images.to(device)), targets)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
        total += losses["loss"].item() * len(images)
        n += len(images)
        bar.set_postfix(loss=f"{total / n:.4f}")
    return total / max(n, 1)


def _finish(out, model, config, dataset, train_samples, val_set, history, elapsed, source) -> TrainResult:
    save_weights(model.state_dict(), out / "model.safetensors")
    val = pretrained = None
    metrics = {"epochs_completed": len(history), "train_seconds": round(elapsed, 2),
               "train_loss": history[-1]["train_loss"] if history else None}
    if val_set.samples:
        val = evaluate_detector(Detector(model), val_set)
        pretrained = evaluate_detector(Detector(load_pretrained(config.model)), val_set)
        metrics.update(val_ap50=round(val.ap, 5), pretrained_val_ap50=round(pretrained.ap, 5))
        plot_pr_curves({"fine-tuned": val, "pretrained": pretrained}, out / "pr_curve.png")
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
        write_evaluations(out, {"val": {"summary": f"{len(val_set.samples)} validation images", "images": len(val_set.samples),
                                        "ap50": {"fine-tuned": val.ap, f"pretrained {config.model}": pretrained.ap}}})
    write_html_report(out)
    return TrainResult(out, history, val, pretrained, elapsed, meta)


def _report(config, dataset, train_samples, val_set, history, metrics) -> str:
    lines = [f"# Face detector fine-tuning ({config.model})", "",
             f"- data: {dataset.summary()}",
             f"- split: {len(train_samples)} train / {len(val_set.samples)} validation images",
             f"- epochs: {metrics['epochs_completed']}, lr {config.lr}, batch {config.batch_size}, "
             f"freeze {config.freeze}, training time {metrics['train_seconds']} s", ""]
    if "val_ap50" in metrics:
        lines += ["| model | AP@0.5 (validation) |", "|---|---|",
                  f"| pretrained {config.model} | {metrics['pretrained_val_ap50']:.4f} |",
                  f"| fine-tuned | {metrics['val_ap50']:.4f} |", "", "![precision/recall](pr_curve.png)", ""]
    lines += ["| epoch | train loss | val AP@0.5 |", "|---|---|---|"]
    lines += [f"| {r['epoch']} | {r['train_loss']:.4f} | {r.get('val_ap50', '-')} |" for r in history]
    if dataset.skipped:
        lines += ["", f"{len(dataset.skipped)} annotations were skipped; see skipped.txt."]
    return "\n".join(lines) + "\n"
