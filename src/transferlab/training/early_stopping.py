"""Early stopping on the validation loss, per phase, with its state kept in checkpoints."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """Stop a phase after `patience` epochs without a validation-loss improvement (0: never)."""

    patience: int
    left: int = -1
    best: float = math.inf
    min_delta: float = 1e-4

    def __post_init__(self):
        if self.left < 0:
            self.left = self.patience

    def update(self, val_loss: float) -> bool:
        """Record an epoch's validation loss; True when it improved on the phase's best."""
        improved = val_loss < self.best - self.min_delta
        self.best = min(self.best, val_loss)
        self.left = self.patience if improved else self.left - 1
        return improved

    @property
    def should_stop(self) -> bool:
        """True once patience has run out."""
        return bool(self.patience) and self.left <= 0

    def state_dict(self) -> dict:
        """What a checkpoint keeps."""
        return {"left": self.left, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint."""
        self.left, self.best = state["left"], state["best"]
