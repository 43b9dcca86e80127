"""A wall-clock budget for one training run (`--budget 10m`): how much is left, and what still fits."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from ..core.errors import TransferlabError

UNITS = {"s": 1, "m": 60, "h": 3600}
# Writing the run after the last epoch: weights, model.json, the report's plots and its HTML page,
# besides evaluating the validation images again (estimated separately). Measured 2-4 s on a 2-core CPU.
FINISH_SECONDS = 5.0


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
