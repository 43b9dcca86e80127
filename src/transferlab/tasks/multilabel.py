"""Multi-label classification on the engine: images carrying several labels (a table with a label
delimiter or one 0/1 column per label), a sigmoid per label and binary cross-entropy, the best epoch by
validation mAP; per-label decision thresholds from validation F1 (inference.multilabel.tune_thresholds)
stored in the run. Every strategy of the playbook works as for one label, the frozen-feature cache included."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core.device import forward_in_passes
from ..core.distributed import gather_shards
from ..core.errors import TransferlabError
from ..core.options import LABEL_SMOOTHING_MULTILABEL
from ..inference.multilabel import DEFAULT_THRESHOLD, mean_average_precision, multilabel_report, tune_thresholds
from ..training.loop import TrainForward, check_divergence
from .classification import ClassificationTask


# A head of sigmoids learns more slowly than a softmax one: on aquarium's cached features (224 px) two-stage's
# 3 head epochs reached 0.889 mAP against the frozen probe's 0.953, 20 epochs 0.954. A converged head before
# fine-tuning ended higher in each of five comparisons (+0.1 to +0.5 mAP at 128, 224 and 288 px; seeds 0
# and 1; docs/benchmarks.md, "Tables and multi-label"), and a pass over cached features costs next to
# nothing, so the head phase makes at least this many passes, however few its epochs.
MIN_HEAD_PASSES = 20


class MultiLabelTask(ClassificationTask):
    """Several labels per image (see the module's docstring)."""

    metric = "val_map"
    default_label_smoothing = LABEL_SMOOTHING_MULTILABEL

    def setup(self, trainer, data) -> None:
        if trainer.cfg.balance == "sampler":
            raise TransferlabError("--balance sampler draws images by their one class; for multi-label data use "
                                   "--balance weights (a positive weight per label)")
        super().setup(trainer, data)
        self.val_scores: torch.Tensor | None = None  # the last validation pass's sigmoid scores

    def head_passes(self, phase) -> int:
        return math.ceil(MIN_HEAD_PASSES / phase.epochs)

    def loss_fn(self) -> nn.Module:
        """Binary cross-entropy per label; under --balance weights a label's positives weigh its
        negatives-to-positives ratio in the training split; --label-smoothing pulls the targets toward 1/2."""
        pos_weight = None
        if self.cfg.balance == "weights":
            targets = self.batches.labels("train")
            positives = targets.sum(0)
            pos_weight = ((len(targets) - positives) / positives.clamp(min=1)).clamp(max=100).to(self.device)
        return SmoothedBCEWithLogits(self.cfg.label_smoothing, pos_weight=pos_weight)

    def batch_correct(self, outputs, targets) -> None:
        return None  # a training "accuracy" means little with several labels; mAP is measured on validation

    def loss_weight_share(self, loss_fn, targets, batch_targets) -> float:
        return len(targets) / len(batch_targets)

    @torch.inference_mode()
    def validate(self, val_batches, start: int, loss_fn) -> dict:
        """Validation loss, mAP and macro F1 at 0.5 over every validation image (gathered from the
        processes' shards)."""
        loop, dist = self.trainer.loop, self.trainer.dist
        self.model.eval()
        net = TrainForward(self.model, start)
        logits = [forward_in_passes(lambda part: loop.forward(net, part), x.to(self.device), self.device).float().cpu()
                  for x, _ in val_batches]
        n = self.val_images
        rows = list(range(dist.rank, n, dist.world_size))
        logits = gather_shards(torch.cat(logits) if logits else torch.zeros(0, len(self.scan.classes)), rows, n, dist)
        targets = self.scan.targets("val")
        self.val_scores = torch.sigmoid(logits)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets).item()
        f1 = multilabel_report(self.val_scores, targets, self.scan.classes, [DEFAULT_THRESHOLD] * len(self.scan.classes))
        return {"val_loss": loss, "val_map": mean_average_precision(self.val_scores, targets),
                "val_f1": f1["macro_f1"]}

    def score(self, row: dict) -> tuple:
        return (row["val_map"], -row["val_loss"])

    def check_row(self, row: dict, hint: str) -> None:
        check_divergence(row, 2, hint)  # chance level of one binary decision

    def epoch_line(self, row: dict) -> str:
        return (f"train loss {row['train_loss']:.4f} | val loss {row['val_loss']:.4f} mAP {row['val_map']:.3f} "
                f"F1@0.5 {row['val_f1']:.3f}")

    def decision_thresholds(self) -> list[float]:
        """Per label, the decision threshold from the kept weights' validation F1 (tune_thresholds), or the
        user's --threshold for every label."""
        if self.cfg.threshold is not None:
            return [float(self.cfg.threshold)] * len(self.scan.classes)
        self.model.freeze(0, self.bn_policy)
        batches = self.batches.image_loader("val", train=False)
        self.validate(batches, 0, None)  # scores of the kept model, from the images
        return tune_thresholds(self.val_scores, self.scan.targets("val"))


class SmoothedBCEWithLogits(nn.BCEWithLogitsLoss):
    """Binary cross-entropy against targets smoothed toward 1/2: a 0/1 target becomes smoothing/2 or
    1 - smoothing/2 (timm's BinaryCrossEntropy); smoothing 0 is plain binary cross-entropy."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__(pos_weight=pos_weight)
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, targets * (1 - self.smoothing) + self.smoothing / 2)
