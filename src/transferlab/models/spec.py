"""What the registry holds for one model name."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..data.transforms import Preprocessing

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ModelSpec:
    """How to build a registered model: architecture, blocks, weight source (with its preprocessing)."""

    name: str
    build: Callable[[], nn.Module]  # the original architecture, 1000 ImageNet classes, random init
    blocks: Callable[[nn.Module], "OrderedDict[str, nn.Module]"]
    weights: object  # a weight source from weights.py: it carries its preprocessing and labels
    description: str = ""
    aliases: tuple[str, ...] = field(default=())
    optional_keys: tuple[str, ...] = ()  # prefixes a user's weights file may lack (aux heads)
    # freeze groups finer than the blocks (timm's group_matcher): raw model -> [(name, parameters)]
    groups: Callable[[nn.Module], list] | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing the pretrained weights were evaluated with (torchvision's Weights.transforms(),
        timm's pretrained_cfg): it belongs to the weights, not to the architecture."""
        return self.weights.preprocessing
