"""A wall-clock budget for one training run (`--budget 10m`): how much is left, and what still fits."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from ..core.errors import TransferlabError

UNITS = {"s": 1, "m": 60, "h": 3600}
# Writing the run after the last epoch: weights, model.json, the report's plots and its HTML page,
# besides evaluating the validation images again (estimated separately). Measured 2-3.5 s on a 2-core
# CPU once pyplot is imported (the Trainer imports it up front under a budget).
FINISH_SECONDS = 5.0
# The pacer plans to end this share of the budget early: epochs vary, and so does a shared machine.
MARGIN = 0.05


def parse_duration(text) -> float:
    """Seconds from '90', '90s', '10m', '1.5h' (a number alone is seconds)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text).lower())
        if not match:
            raise TransferlabError(f"--budget must be a duration such as 90s, 10m or 1.5h, got {text!r}")
        seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise TransferlabError(f"--budget must be positive, got {text!r}")
    return seconds


@dataclass
class Budget:
    """`seconds` of wall clock from `start` (time.monotonic), shared by the advisor and the trainer."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds until the deadline (negative once past it)."""
        return self.seconds - self.elapsed()

    def fits(self, seconds: float) -> bool:
        """Whether work of this many seconds ends before the deadline."""
        return seconds <= self.left()

    def to_dict(self) -> dict:
        """For model.json: the budget and what the run used of it."""
        return {"seconds": self.seconds, "used_s": round(self.elapsed(), 2)}


def forward_seconds_per_image(model: str, size: int, device: str = "auto", batch: int = 8) -> float:
    """Seconds per image of a forward pass of `model` (random init: the cost is the architecture's) at
    input `size` on the training device, the best of two timed batches after a warm-up one."""
    import torch

    from ..core.device import channels_last_on_cpu, pick_device
    from ..models import create_model

    dev = pick_device(device)
    net = create_model(model, weights="none").eval().to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    times = []
    with torch.inference_mode(), channels_last_on_cpu(net, dev):
        for _ in range(3):
            t0 = time.perf_counter()
            net(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return min(times[1:]) / batch


def two_stage_seconds(seconds_per_image: float, epochs: int, train_images: int, val_images: int,
                      views: int) -> float:
    """Seconds a two-stage run is expected to take: the feature pass (`views` per training image, and
    validation), the head's epochs on cached features (next to nothing), fine-tuning's epochs (a
    training step costs about three forward passes) and writing the run."""
    from .strategies import default_head_epochs

    finetune = epochs - default_head_epochs(epochs)
    forwards = views * train_images + val_images + finetune * image_epoch_forwards(train_images, val_images)
    return seconds_per_image * forwards + FINISH_SECONDS


def image_epoch_forwards(train_images: int, val_images: int) -> int:
    """Forward passes an epoch training every layer from images costs: a training step about three."""
    return 3 * train_images + val_images


class Pacer:
    """The trainer's questions to a budget: does another epoch fit, should this epoch stop now?

    It prices what must still happen after training: a validation pass over the images (the run is
    evaluated again when written) and writing the run, from the seconds per image measured so far."""

    def __init__(self, budget: Budget, val_images: int, batch_size: int):
        self.budget = budget
        self.val_images = val_images
        self.batch_size = batch_size
        self.seconds_per_image: float | None = None  # a forward pass, measured as training goes

    def finish_seconds(self) -> float:
        """What writing the run still costs (a validation pass over the images and the report), and the
        safety margin."""
        return FINISH_SECONDS + (self.seconds_per_image or 0.0) * self.val_images + MARGIN * self.budget.seconds

    def epoch_need(self, last_epoch_s: float | None) -> float:
        """Seconds an epoch like the last one, then writing the run, needs (only the latter when unknown)."""
        return (last_epoch_s or 0.0) + self.finish_seconds()

    def epochs_that_fit(self, train_images: int, wanted: int) -> int:
        """How many of `wanted` epochs training every layer from images fit before the deadline, from
        the forward speed measured so far."""
        if self.seconds_per_image is None:
            return wanted
        epoch = self.seconds_per_image * image_epoch_forwards(train_images, self.val_images)
        return max(0, min(wanted, int((self.budget.left() - self.finish_seconds()) // epoch)))

    def batch_deadline(self, from_images: bool):
        """A test asked after every optimizer step, (images seen, seconds) -> stop the epoch now? Its
        validation pass must still fit: over the images when the phase trains from images, else cheap."""

        def stop(seen: int, elapsed: float) -> bool:
            per_image = elapsed / max(seen, 1)
            # forward only is about a third of a training step
            validation = self.val_images * (self.seconds_per_image or per_image / 3) if from_images else 0.0
            return not self.budget.fits(per_image * self.batch_size + validation + self.finish_seconds())

        return stop
