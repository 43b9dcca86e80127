"""BlazeFace (MediaPipe face detection) as a PyTorch module, laid out to match the TFLite graphs.

TensorFlow's 'SAME' padding is asymmetric for even inputs (extra pixel right/bottom), so strided
layers pad explicitly; PyTorch's symmetric padding would shift every box.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .anchors import AnchorConfig


@dataclass(frozen=True)
class BlazeFaceConfig:
    name: str
    input_size: int
    # (in_channels, out_channels, stride) per block; stage1 ends at the fine (16x16) head map
    stage1: tuple[tuple[int, int, int], ...]
    stage2: tuple[tuple[int, int, int], ...]
    anchors: AnchorConfig
    # the back model's last block has no skip connection
    last_block_residual: bool = True
    tflite_file: str = ""

    @property
    def channels(self) -> tuple[int, int]:
        """Output channels of every backbone block."""
        return self.stage1[-1][1], self.stage2[-1][1]


_FRONT_STAGE1 = ((24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2),
                 (48, 56, 1), (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1))
_FRONT_STAGE2 = ((88, 96, 2),) + ((96, 96, 1),) * 4
_BACK_STAGE1 = (((24, 24, 1),) * 7 + ((24, 24, 2),) + ((24, 24, 1),) * 7 + ((24, 48, 2),)
                + ((48, 48, 1),) * 7 + ((48, 96, 2),) + ((96, 96, 1),) * 7)

CONFIGS = {
    "blazeface_front": BlazeFaceConfig(
        "blazeface_front", 128, _FRONT_STAGE1, _FRONT_STAGE2,
        AnchorConfig(input_size=128, strides=(8, 16, 16, 16), min_scale=0.1484375),
        tflite_file="face_detection_short_range.tflite"),
    "blazeface_back": BlazeFaceConfig(
        "blazeface_back", 256, _BACK_STAGE1, ((96, 96, 2),),
        AnchorConfig(input_size=256, strides=(16, 32, 32, 32), min_scale=0.15625),
        last_block_residual=False, tflite_file="face_detection_back.tflite"),
}


class BlazeBlock(nn.Module):
    """Depthwise 3x3 -> pointwise 1x1, plus a (max-pooled, zero-padded) skip, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, residual: bool = True):
        super().__init__()
        self.stride, self.extra_channels, self.residual = stride, cout - cin, residual
        self.dw = nn.Conv2d(cin, cin, 3, stride, padding=0 if stride == 2 else 1, groups=cin)
        self.pw = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise-separable convolution plus the (pooled, zero-padded) skip, then ReLU."""
        h = self.pw(self.dw(F.pad(x, (0, 2, 0, 2)) if self.stride == 2 else x))
        if not self.residual:
            return F.relu(h)
        if self.stride == 2:
            x = F.max_pool2d(x, 2)
        if self.extra_channels:
            # TFLite pads the skip's new channels at the end of the channel axis
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(h + x)


class BlazeFace(nn.Module):
    """Returns raw head outputs: regressors (N, A, 16) in input pixels and logits (N, A)."""

    def __init__(self, config: BlazeFaceConfig):
        super().__init__()
        self.config = config
        self.stem = nn.Conv2d(3, 24, 5, 2)
        self.stage1 = nn.Sequential(*(BlazeBlock(*b) for b in config.stage1))
        last = len(config.stage2) - 1
        self.stage2 = nn.Sequential(*(BlazeBlock(*b, residual=config.last_block_residual or i < last)
                                      for i, b in enumerate(config.stage2)))
        c1, c2 = config.channels
        per_cell = config.anchors.anchors_per_cell()
        # definition order = TFLite tensor order (classifiers before regressors); weights.py relies on it
        self.classifier1 = nn.Conv2d(c1, per_cell[0], 1)
        self.classifier2 = nn.Conv2d(c2, per_cell[1], 1)
        self.regressor1 = nn.Conv2d(c1, per_cell[0] * 16, 1)
        self.regressor2 = nn.Conv2d(c2, per_cell[1] * 16, 1)

    def blocks(self) -> list[nn.Module]:
        """Backbone blocks in input-to-output order (the unit of `freeze`)."""
        return [self.stem, *self.stage1, *self.stage2]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Regressors (N, A, 16) and logits (N, A) for a batch in [-1, 1]."""
        return self.heads(*self.features(x))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's two feature maps (16x16 and 8x8 cells at 128 px)."""
        f1 = self.stage1(F.relu(self.stem(F.pad(x, (1, 2, 1, 2)))))
        return f1, self.stage2(f1)

    def heads(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Regressors and logits from the feature maps."""
        n = f1.shape[0]

        def flat(t: torch.Tensor, k: int) -> torch.Tensor:
            # anchor order is row, column, anchor-in-cell: flatten NHWC, not NCHW
            return t.permute(0, 2, 3, 1).reshape(n, -1, k)

        logits = torch.cat([flat(self.classifier1(f1), 1), flat(self.classifier2(f2), 1)], 1)
        regressors = torch.cat([flat(self.regressor1(f1), 16), flat(self.regressor2(f2), 16)], 1)
        return regressors, logits.squeeze(-1)


def build_model(name: str) -> BlazeFace:
    """A BlazeFace network of a named configuration, random init."""
    from ..core.errors import TransferlabError

    if name not in CONFIGS:
        raise TransferlabError(f"unknown detector architecture {name!r}; choose one of {', '.join(CONFIGS)}")
    return BlazeFace(CONFIGS[name])
