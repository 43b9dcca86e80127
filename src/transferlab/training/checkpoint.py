"""A run's checkpoints: last.pt (everything needed to resume, loaded with weights_only=True) and
best.safetensors (the best epoch's weights), both written atomically."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from ..core.errors import TransferlabError
from ..core.io import atomic_torch_save, safe_torch_load, save_weights
from ..runs.folder import check_resumable

CHECKPOINT_FORMAT = "transferlab-checkpoint/1"


class Checkpointer:
    """Reads and writes RUN/checkpoints/."""

    def __init__(self, run: Path):
        self.folder = Path(run) / "checkpoints"
        self.last = self.folder / "last.pt"
        self.best = self.folder / "best.safetensors"

    def save(self, state: dict) -> None:
        """Write last.pt (tensors and plain containers only)."""
        atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, self.last)

    def load(self) -> dict:
        """The state of last.pt, or one line saying there is nothing to resume."""
        if not self.last.is_file():
            raise TransferlabError(f"nothing to resume: {self.last} does not exist (start the run without --resume)")
        return check_resumable(safe_torch_load(self.last), self.last)

    def save_best(self, state_dict: dict) -> None:
        """Keep the weights of a new best epoch."""
        save_weights(state_dict, self.best)

    def best_weights(self) -> dict | None:
        """The best epoch's weights, if any epoch has been saved."""
        return load_file(str(self.best)) if self.best.is_file() else None
