"""The 1000 ImageNet class names, built in so that no download is needed to read predictions."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 class names in the order of the pretrained heads' outputs."""
    text = resources.files("transferlab.models").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)
