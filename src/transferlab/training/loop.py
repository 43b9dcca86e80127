"""One epoch of training and of validation: micro-batches, mixed precision, accumulation, DDP,
non-finite losses. The Trainer decides what to run; the Loop runs it; the task says what a batch's
targets, loss and correct predictions are."""
from __future__ import annotations

import contextlib
import math
import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..core.device import CPU_PASS_IMAGES, cpu_layout, forward_in_passes
from ..core.distributed import all_reduce_sums
from ..core.errors import TransferlabError
from ..data.folders import class_weights
from ..models import BlockNet


class NonFiniteLoss(TransferlabError):
    """Training diverged (NaN/inf or exploded loss): the learning rate is too high."""


class TrainForward(nn.Module):
    """The training forward from block `start` on; a frozen prefix (not cached) runs without autograd.

    Wrapped in DistributedDataParallel when several processes train, so DDP sees every call.
    """

    def __init__(self, model: BlockNet, start: int):
        super().__init__()
        self.model, self.start = model, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from an image batch (start 0) or from cached block-`start` features."""
        model, start, n = self.model, self.start, self.model.frozen_blocks
        if start == 0 and n > 0:
            with torch.no_grad():
                x = model.forward_blocks(x, 0, n)
            start = n
        return model.forward_blocks(x, start, len(model.block_names))


def build_loss(cfg, train_labels: list[int], num_classes: int, device: torch.device) -> nn.Module:
    """Cross-entropy, with inverse-frequency class weights under --balance weights."""
    weight = class_weights(train_labels, num_classes).to(device) if cfg.balance == "weights" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def amp_dtype(setting: str, device: torch.device):
    """The autocast dtype for --amp (auto: on for CUDA only), or None for full precision."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


class Loop:
    """Runs epochs over batches for one model on one device (and process group)."""

    def __init__(self, model: nn.Module, cfg, device: torch.device, dist, progress: bool, input_size: int, task):
        self.model, self.cfg, self.device, self.dist = model, cfg, device, dist
        self.progress, self.input_size, self.task = progress, input_size, task
        self.amp_dtype = task.amp_dtype(cfg.amp, device)

    def forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """net(x) under the run's autocast setting."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return net(x)

    def training_net(self, start: int) -> nn.Module:
        """The task's module that trains from block `start`, wrapped in DDP when several processes run."""
        net = self.task.training_net(start)
        if not self.dist.enabled:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, needed for float16 autocast only."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    # --- how a batch is split -----------------------------------------------------------------
    def batch_statistics_computed(self) -> bool:
        """True when some BatchNorm layer is in training mode (its output depends on the batch)."""
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.model.modules())

    def micro_batch(self, x: torch.Tensor) -> int:
        """Images per forward/backward pass. Splitting a batch leaves its gradient unchanged only while no
        BatchNorm layer computes batch statistics; flat cached features are too small to gain from it."""
        value = str(self.cfg.micro_batch)
        if not self.task.splits_batches:
            return len(x)
        if value.isdigit():
            return int(value)
        if value == "off" or self.device.type != "cpu" or x.dim() < 4 or self.batch_statistics_computed():
            return len(x)
        # also a quarter of the activation memory of a batch of 32 (lite0: 3.6 -> 1.6 GiB)
        return CPU_PASS_IMAGES

    def checkpointed_blocks(self, micro_batch: int) -> int:
        """Recomputation costs time, so by default it is the fallback for CPU batches that stay whole."""
        value = str(self.cfg.grad_checkpointing)
        if not isinstance(self.model, BlockNet):  # recomputation is a BlockNet's (blocks in order)
            return 0
        if value.isdigit():
            return int(value)
        if value == "off" or self.device.type != "cpu" or micro_batch < self.cfg.batch_size:
            return 0
        return self.model.high_resolution_blocks(self.input_size)

    def batch_loss(self, net, x, y, loss_fn) -> tuple[torch.Tensor, object]:
        """The task's loss of net on a batch (already on the device), and the outputs."""
        outputs = self.forward(net, cpu_layout(x) if self.device.type == "cpu" else x)
        return self.task.batch_loss(loss_fn, outputs, y), outputs

    def backward(self, net, x, y, loss_fn, scaler, scale: float = 1.0, sync_last: bool = True,
                 chunk: int | None = None):
        """Forward and backward over x in passes of `chunk` images; the gradients add up to those of one
        pass over the batch. Returns the summed per-image loss, the correct count (None when the task
        has none) and whether the loss was finite (a non-finite pass stops the batch)."""
        chunk = chunk or len(x)
        passes = [(x, y)] if chunk >= len(x) else list(zip(x.split(chunk), y.split(chunk)))
        total_loss, correct = 0.0, None
        for k, (xs, ys) in enumerate(passes):
            # DDP all-reduces the gradients once per optimizer step, in the backward of its last pass
            reduce_now = sync_last and k == len(passes) - 1
            sync = net.no_sync() if (self.dist.enabled and not reduce_now) else contextlib.nullcontext()
            with sync:
                loss, outputs = self.batch_loss(net, xs, ys, loss_fn)
                if not torch.isfinite(loss):
                    return total_loss, correct, False
                share = self.task.loss_weight_share(loss_fn, ys, y)
                scaler.scale(loss * (share * scale)).backward()
            total_loss += loss.item() * len(ys)
            right = self.task.batch_correct(outputs, ys)
            if right is not None:
                correct = (correct or 0) + right
        return total_loss, correct, True

    # --- epochs ---------------------------------------------------------------------------------
    def train_epoch(self, batches, net, optimizer, scheduler, loss_fn, scaler, desc: str = "train",
                    checkpoint_hint: str = "", stop=None, mix=None, after_step=None) -> dict:
        """One pass over `batches` with optimizer steps every accum_steps batches; mean loss and accuracy
        (where the task has one), and where the time went (waiting for data, the steps).
        `stop(images_seen, seconds)`, asked after each optimizer step, ends the epoch early when True
        (the row then has `cut_short`: the fraction of batches done). `mix(x, y)` mixes each batch and its
        targets (recipe.BatchMixer); `after_step()` follows every optimizer step (the weight average)."""
        self.model.train()
        started = time.perf_counter()
        cut_short = None
        total_loss, correct, seen, bad = 0.0, 0, 0, 0
        data_s = step_s = 0.0
        has_accuracy = False
        accum = self.cfg.accum_steps
        bar = tqdm(batches, desc=desc, leave=False, disable=not self.progress, unit="batch")
        optimizer.zero_grad(set_to_none=True)
        waited = time.perf_counter()
        for i, (x, y) in enumerate(bar):
            t_step = time.perf_counter()
            data_s += t_step - waited
            x, y = x.to(self.device, non_blocking=True), self.task.targets_to(y, self.device)
            if mix is not None:
                x, y = mix(x, y)
            if i == 0:  # the same for every batch of the epoch: decided once, off the per-batch path
                chunk = self.micro_batch(x)
                self.model.checkpointed_blocks = self.checkpointed_blocks(chunk)
            step_now = (i + 1) % accum == 0 or i + 1 == len(batches)
            batch_loss, batch_correct, finite = self.backward(net, x, y, loss_fn, scaler, 1 / accum, step_now, chunk)
            if not finite:
                bad += 1
                optimizer.zero_grad(set_to_none=True)
                if bad >= self.cfg.max_bad_steps:
                    raise NonFiniteLoss(
                        f"the loss was NaN/inf for {bad} consecutive steps: the learning rate is probably too "
                        f"high (current {optimizer.param_groups[-1]['lr']:.2g}); retry with a lower --lr or --lr find. "
                        f"{checkpoint_hint}"
                    )
                continue
            bad = 0
            if step_now:
                if self.cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if after_step is not None:
                    after_step()
            total_loss += batch_loss
            has_accuracy = batch_correct is not None
            correct += batch_correct or 0
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", **({"acc": f"{correct / seen:.3f}"} if has_accuracy else {}))
            waited = time.perf_counter()
            step_s += waited - t_step
            if stop is not None and step_now and i + 1 < len(batches) and stop(seen, time.perf_counter() - started):
                cut_short = (i + 1) / len(batches)
                break
        total_loss, correct, seen = all_reduce_sums([total_loss, correct, seen], self.dist, self.device)
        if seen == 0:
            raise NonFiniteLoss("no finite training step in this epoch; lower --lr")
        row = {"train_loss": total_loss / seen}
        if has_accuracy:
            row["train_acc"] = correct / seen
        row.update(images_per_s=round(seen / max(data_s + step_s, 1e-9), 2), data_s=round(data_s, 2),
                   step_s=round(step_s, 2))
        if cut_short is not None:
            row["cut_short"] = cut_short
        return row

    @torch.inference_mode()
    def validate(self, batches, start: int, loss_fn) -> dict:
        """Mean validation loss and accuracy over labelled batches, reduced over processes."""
        self.model.eval()
        net = self.task.training_net(start)
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in batches:
            x, y = x.to(self.device), self.task.targets_to(y, self.device)
            logits = forward_in_passes(lambda part: self.forward(net, part), x, self.device)
            total_loss += self.task.batch_loss(loss_fn, logits, y).item() * len(y)
            correct += self.task.batch_correct(logits, y)
            seen += len(y)
        total_loss, correct, seen = all_reduce_sums([total_loss, correct, seen], self.dist, self.device)
        return {"val_loss": total_loss / max(seen, 1), "val_acc": correct / max(seen, 1)}


def check_divergence(row: dict, num_classes: int, checkpoint_hint: str = "") -> None:
    """A finite but exploded loss (far above chance level, log K) means the lr is too high: stop before
    such weights overwrite the last good checkpoint."""
    limit = 100 * math.log(max(2, num_classes)) + 10
    if not (math.isfinite(row["val_loss"]) and row["val_loss"] <= limit and row["train_loss"] <= limit):
        raise NonFiniteLoss(
            f"training diverged at epoch {row['epoch']} (val loss {row['val_loss']:.3g}): the learning rate "
            f"{row['lr']:.2g} is too high; retry with a lower --lr or --lr find. {checkpoint_hint}"
        )
