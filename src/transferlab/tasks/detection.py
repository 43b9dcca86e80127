"""Face detection on the engine: BlazeFace fine-tuned on boxes (any annotation format detect.data
reads), the detection loss with hard-negative mining, the best epoch by validation AP@0.5.

Never worse than the start: the pretrained model is evaluated on the validation images before the
first step (epoch 0, the bar every epoch must beat); the saved weights are the best epoch's, or the
pretrained ones when no epoch beats them. Without validation images the last epoch's are saved.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..core.device import default_workers
from ..core.distributed import broadcast_object
from ..core.errors import TransferlabError
from ..core.options import DEFAULT_DETECTOR, FEATURE_EXTRACT, FINETUNE, PARTIAL
from ..core.io import atomic_write_text, save_weights
from ..detect.augment import AugmentConfig
from ..detect.data import FaceDataset, load_faces
from ..detect.detector import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD, Detector
from ..detect.evaluate import PRCurve, evaluate_detector
from ..detect.loss import DetectionLoss, LossConfig
from ..detect.training import (DEFAULT_LR, KEYPOINT_NAMES, DetectorForward, FaceTrainSet, collate_faces,
                               detector_amp_dtype, freeze_blocks, param_groups, split_dataset)
from ..detect.weights import load_pretrained
from ..runs.folder import write_meta
from ..runs.html import write_html_report
from ..runs.metrics import write_metrics
from ..runs.report import plot_metric, plot_pr_curves
from ..runs.view import write_evaluations
from ..training.strategies import Phase
from .base import PhaseData, Run, Task, refuse_options

# the strategies a detector trains with: which backbone blocks stay at their pretrained values
DETECTION_STRATEGIES = (FINETUNE, PARTIAL, FEATURE_EXTRACT)


class DetectionTask(Task):
    """A pretrained BlazeFace fine-tuned on face boxes (see the module's docstring)."""

    name = "detector"
    metric = "val_ap50"
    # hard-negative mining and the loss's normalisation by the positives are over the whole batch
    splits_batches = False
    # the relative steps need their whole warm-up (--warmup-epochs): one epoch on 128 real photos with a
    # one-step warm-up fell from 0.771 to 0.723 validation AP@0.5, with the whole epoch it rose to 0.821
    max_warmup_share = 1.0
    defaults = {"model": DEFAULT_DETECTOR, "strategy": FINETUNE, "lr": DEFAULT_LR, "lr_scaling": "relative",
                "warmup_epochs": 1.0, "weight_decay": 1e-4, "score_threshold": DEFAULT_SCORE_THRESHOLD,
                "iou_threshold": DEFAULT_IOU_THRESHOLD}

    def setup(self, trainer, data) -> None:
        cfg = self.cfg = trainer.cfg
        self.trainer, self.log, self.source = trainer, trainer.log, str(data)
        if cfg.strategy not in DETECTION_STRATEGIES:
            raise TransferlabError(f"a detector trains with --strategy {', '.join(DETECTION_STRATEGIES)} "
                                   f"(got {cfg.strategy}); --freeze N keeps the first N backbone blocks")
        # the classifier-only options a detector would ignore (--mixup/--cutmix: Task.batch_mixer); --progressive
        # too, as its anchors are laid out for one input size
        refuse_options({"--progressive": cfg.progressive, "--label-smoothing": cfg.label_smoothing,
                        "--augment-policy": cfg.augment_policy != "auto", "--balance": cfg.balance != "none",
                        "--tta": cfg.tta, "--threshold": cfg.threshold is not None, "--image-col": cfg.image_col,
                        "--label-col": cfg.label_col, "--label-delim": cfg.label_delim},
                       "for classifiers; a detector trains on its boxes at its anchors' input size")
        self.dataset = load_faces(data, cfg.data_format)
        if cfg.val_data:
            self.train_samples, self.val_samples = self.dataset.samples, load_faces(cfg.val_data, cfg.data_format).samples
        else:
            self.train_samples, self.val_samples = split_dataset(self.dataset, cfg.val_split, cfg.seed)
        if not self.train_samples:
            raise TransferlabError(f"{data}: no annotated training images left ({self.dataset.summary()})")
        self.val_set = FaceDataset(self.val_samples, format=self.dataset.format)
        self.log(f"{data}: {self.dataset.summary()}; {len(self.train_samples)} train / {len(self.val_samples)} "
                 "validation images")
        self.model = load_pretrained(cfg.model)
        self.input_size = self.model.config.input_size
        augment = None if cfg.augment == "none" else AugmentConfig(**(cfg.box_augment or {}))
        self.train_set = FaceTrainSet(self.train_samples, self.input_size, augment, cfg.seed)

    def bind_device(self, device, dist, progress) -> None:
        self.device, self.dist = device, dist
        self.detector = Detector(self.model, self.cfg.score_threshold, self.cfg.iou_threshold, source=self.source)

    @property
    def data_root(self) -> Path:
        return Path(self.source)

    @property
    def val_images(self) -> int:
        return len(self.val_samples)

    @property
    def train_images(self) -> int:
        return len(self.train_samples)

    def amp_dtype(self, setting: str, device: torch.device):
        return detector_amp_dtype(setting, device)

    def plan_phases(self) -> list:
        cfg, blocks = self.cfg, len(self.model.blocks())
        if cfg.strategy == FEATURE_EXTRACT:
            n = blocks
        elif cfg.freeze is None and cfg.strategy == PARTIAL:
            raise TransferlabError(f"--strategy partial needs --freeze N (0..{blocks}): the leading backbone blocks kept")
        else:
            n = cfg.freeze or 0
        if not str(n).isdigit():
            raise TransferlabError(f"--freeze {n}: a detector's blocks are counted, not named; use 0..{blocks}")
        if cfg.lr == "find":
            lr = DEFAULT_LR  # the range test replaces it
        else:
            lr = float(cfg.lr or DEFAULT_LR)
        return [Phase(cfg.strategy, cfg.epochs, int(n), lr)]

    def start_phase(self, phase, resumed: bool) -> PhaseData:
        self.model.requires_grad_(True)
        freeze_blocks(self.model, phase.freeze)
        # no training side to take: setup refuses --progressive
        return PhaseData(0, lambda epoch, g, _: self._loader(epoch, g), None)

    def _loader(self, epoch: int, generator: torch.Generator | None) -> DataLoader:
        """Augmented batches (augmentations seeded by run seed, epoch and image), sharded across processes."""
        cfg = self.cfg
        self.train_set.epoch = epoch
        sampler = None
        if self.dist.enabled:
            sampler = DistributedSampler(self.train_set, self.dist.world_size, self.dist.rank, shuffle=True,
                                         seed=cfg.seed)
            sampler.set_epoch(epoch)
        workers = cfg.workers if cfg.workers is not None else default_workers(len(self.train_set), cfg.batch_size)
        return DataLoader(self.train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                          collate_fn=collate_faces, num_workers=workers, prefetch_factor=4 if workers else None,
                          generator=generator, pin_memory=self.device.type == "cuda")

    def lr_find_batches(self, data: PhaseData):
        return self._loader(0, torch.Generator().manual_seed(self.cfg.seed))

    def training_net(self, start: int) -> nn.Module:
        return DetectorForward(self.model)

    def loss_fn(self) -> nn.Module:
        return DetectionLoss(self.model.config.anchors, LossConfig()).to(self.device)

    def param_groups(self, phase) -> list[dict]:
        return param_groups(self.model, phase.lr, self.cfg.weight_decay, self.cfg.lr_scaling)

    def targets_to(self, targets, device):
        return [(b.to(device), k.to(device)) for b, k in targets]

    def batch_loss(self, loss_fn, outputs, targets) -> torch.Tensor:
        return loss_fn(*outputs, targets)["loss"]

    # --- validation ---------------------------------------------------------------------------------
    def _val_curve(self) -> PRCurve:
        self.model.eval()
        return evaluate_detector(self.detector, self.val_set)

    def _val_ap(self) -> float | None:
        """AP@0.5 on the validation images, measured on rank 0 and shared with every process."""
        ap = round(self._val_curve().ap, 5) if self.dist.is_main else None
        return broadcast_object(ap, self.dist)

    def validate(self, val_batches, start: int, loss_fn) -> dict:
        return {"val_ap50": self._val_ap()} if self.val_samples else {}

    def baseline(self) -> dict | None:
        if not self.val_samples:
            return None
        t0 = time.perf_counter()
        ap = self._val_ap()
        return {"epoch": 0, "phase": "pretrained", "lr": 0.0, "train_loss": None, "val_ap50": ap,
                "time_s": round(time.perf_counter() - t0, 3)}

    def score(self, row: dict) -> tuple:
        return (row["val_ap50"],) if self.val_samples else (row["epoch"],)

    def stopping_value(self, row: dict) -> float:
        return -row["val_ap50"] if self.val_samples else -row["epoch"]

    def check_row(self, row: dict, hint: str) -> None:
        from ..training.loop import NonFiniteLoss

        if not math.isfinite(row["train_loss"]):
            raise NonFiniteLoss(f"training diverged at epoch {row['epoch']}: lower --lr. {hint}")

    def epoch_line(self, row: dict) -> str:
        ap = f" | val AP@0.5 {row['val_ap50']:.4f}" if "val_ap50" in row else ""
        return f"train loss {row['train_loss']:.4f}{ap}"

    def keep_weights(self, best: dict, best_weights: dict | None) -> dict | None:
        if self.val_samples and best["epoch"] == 0:
            if self.cfg.epochs > 0:
                self.log(f"no epoch beat the pretrained model's validation AP@0.5 ({best['val_ap50']:.4f}); "
                         "kept the pretrained weights")
            return load_pretrained(self.cfg.model).state_dict()
        return best_weights

    # --- the run folder -------------------------------------------------------------------------------
    def write_run(self, out: Path, phases, best, history, extra) -> Run:
        self.model.eval()
        trained = [r for r in history if r["epoch"] > 0]
        metrics = {"best_epoch": best["epoch"] if self.val_samples else None, "epochs_run": len(trained),
                   "train_seconds": round(sum(r["time_s"] for r in trained), 2),
                   "train_loss": trained[-1]["train_loss"] if trained else None}
        if trained and "images_per_s" in trained[-1]:
            metrics["images_per_s"] = round(sum(r["images_per_s"] for r in trained) / len(trained), 2)
        if not self.dist.is_main:
            return Run(out, metrics, history, None)
        save_weights(self.model.state_dict(), out / "model.safetensors")
        atomic_write_text(out / "skipped.txt", "".join(f"{s.where}\t{s.reason}\n" for s in self.dataset.skipped))
        val = pretrained = None
        if self.val_samples:
            val = self._val_curve()
            pretrained = evaluate_detector(Detector(load_pretrained(self.cfg.model)), self.val_set)
            metrics.update(val_ap50=round(val.ap, 5), pretrained_val_ap50=round(pretrained.ap, 5),
                           kept="pretrained" if best["epoch"] == 0 else "fine-tuned")
            plot_pr_curves({"saved": val, "pretrained": pretrained}, out / "pr_curve.png")
            plot_metric(history, "val_ap50", out / "ap_curve.png", "validation AP@0.5 (epoch 0: pretrained)")
        write_metrics(out / "metrics.csv", history)
        cfg = self.cfg
        meta = write_meta(out, "detector", {
            "architecture": cfg.model,
            "input_size": self.input_size,
            "anchors": self.model.config.anchors.to_dict(),
            "thresholds": {"score": cfg.score_threshold, "iou": cfg.iou_threshold},
            "box_format": "xyxy pixels; 6 keypoints " + ", ".join(KEYPOINT_NAMES),
            "strategy": cfg.strategy,
            "phases": [p.to_dict() for p in phases],
            "config": asdict(cfg),
            "data": {"source": self.source, "format": self.dataset.format, "train_images": len(self.train_samples),
                     "val_images": len(self.val_samples), "skipped_annotations": len(self.dataset.skipped)},
            "metrics": metrics,
            **extra,
        })
        atomic_write_text(out / "report.md", self._report(phases[-1], history, metrics))
        if val is not None:
            write_evaluations(out, {"val": {"summary": f"{len(self.val_samples)} validation images",
                                            "images": len(self.val_samples),
                                            "ap50": {"saved": val.ap, f"pretrained {cfg.model}": pretrained.ap}}})
        write_html_report(out)
        ap = f" (validation AP@0.5 {val.ap:.4f}, pretrained {pretrained.ap:.4f})" if val is not None else ""
        self.log(f"run saved to {out}{ap}")
        return Run(out, meta["metrics"], history,
                   Detector(self.model, cfg.score_threshold, cfg.iou_threshold, source=str(out)))

    def _report(self, phase, history, metrics) -> str:
        cfg = self.cfg
        lines = [f"# Face detector fine-tuning ({cfg.model})", "",
                 f"- data: {self.dataset.summary()}",
                 f"- split: {len(self.train_samples)} train / {len(self.val_samples)} validation images",
                 f"- epochs: {metrics['epochs_run']}, lr {phase.lr}, batch {cfg.batch_size}, "
                 f"freeze {phase.freeze}, training time {metrics['train_seconds']} s"
                 + (f", {metrics['images_per_s']} training images/s" if "images_per_s" in metrics else ""), ""]
        if "val_ap50" in metrics:
            if metrics["best_epoch"] == 0:
                lines += ["**No epoch beat the pretrained model on the validation images: the saved weights are the "
                          "pretrained ones.**", ""]
            else:
                lines += [f"Saved weights: epoch {metrics['best_epoch']}, the best by validation AP@0.5.", ""]
            lines += ["| model | AP@0.5 (validation) |", "|---|---|",
                      f"| pretrained {cfg.model} (epoch 0) | {metrics['pretrained_val_ap50']:.4f} |",
                      f"| saved (epoch {metrics['best_epoch']}) | {metrics['val_ap50']:.4f} |", "",
                      "![validation AP by epoch](ap_curve.png)", "", "![precision/recall](pr_curve.png)", ""]
        else:
            lines += ["No validation images: the saved weights are the last epoch's.", ""]
        lines += ["| epoch | train loss | val AP@0.5 | images/s |", "|---|---|---|---|"]
        lines += [f"| {r['epoch']}{' (pretrained)' if r['epoch'] == 0 else ''} | "
                  f"{'-' if r['train_loss'] is None else format(r['train_loss'], '.4f')} | {r.get('val_ap50', '-')} | "
                  f"{r.get('images_per_s', '-')} |" for r in history]
        if self.dataset.skipped:
            lines += ["", f"{len(self.dataset.skipped)} annotations were skipped; see skipped.txt."]
        return "\n".join(lines) + "\n"
