"""SSD anchors as MediaPipe's SsdAnchorsCalculator lays them out for BlazeFace."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class AnchorConfig:
    input_size: int
    strides: tuple[int, ...]
    min_scale: float
    max_scale: float = 0.75
    offset: float = 0.5

    def to_dict(self) -> dict:
        """Plain data for model.json and export sidecars."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AnchorConfig":
        return cls(**{**d, "strides": tuple(d["strides"])})

    def _scale(self, i: int) -> float:
        n = len(self.strides)
        return self.min_scale + (self.max_scale - self.min_scale) * i / (n - 1)

    def _groups(self) -> list[tuple[int, list[float]]]:
        """(stride, nominal scales per cell) for each run of layers sharing a stride."""
        groups, i, n = [], 0, len(self.strides)
        while i < n:
            scales, j = [], i
            while j < n and self.strides[j] == self.strides[i]:
                nxt = 1.0 if j == n - 1 else self._scale(j + 1)
                # aspect ratio 1 at this scale, then the interpolated scale toward the next layer
                scales += [self._scale(j), math.sqrt(self._scale(j) * nxt)]
                j += 1
            groups.append((self.strides[i], scales))
            i = j
        return groups

    def anchors_per_cell(self) -> list[int]:
        """Anchors per feature-map cell, per layer group."""
        return [len(s) for _, s in self._groups()]


def generate_anchors(config: AnchorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres (A, 2) as normalised (cx, cy), and nominal sizes (A,) as a fraction of the input.

    BlazeFace uses fixed_anchor_size, so decoding ignores the nominal size; training uses it to decide
    which anchors a face is assigned to.
    """
    centres, sizes = [], []
    for stride, scales in config._groups():
        f = math.ceil(config.input_size / stride)
        ys, xs = torch.meshgrid(torch.arange(f), torch.arange(f), indexing="ij")
        xy = (torch.stack([xs, ys], -1).reshape(-1, 1, 2).float() + config.offset) / f
        centres.append(xy.expand(-1, len(scales), 2).reshape(-1, 2))
        sizes.append(torch.tensor(scales).repeat(f * f))
    return torch.cat(centres), torch.cat(sizes)


def nominal_boxes(centres: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Square anchor boxes (A, 4) xyxy, normalised."""
    half = sizes[:, None] / 2
    return torch.cat([centres - half, centres + half], 1)
