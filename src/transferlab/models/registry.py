"""The model registry: a name -> how to build it, its blocks, its preprocessing and its weights."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.errors import TransferlabError
from ..core.io import load_state_dict_file
from .weights import load_user_weights
from .blocks import BlockNet
from .spec import TIMM_PREFIX, ModelSpec

NO_WEIGHTS = (None, False, "none", "random", "scratch")
PRETRAINED = (True, "default", "pretrained", "imagenet")


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model (and its aliases) to the registry."""
    for key in (spec.name, *spec.aliases):
        _REGISTRY[key] = spec
    return spec


def list_models() -> list[str]:
    """The registered model names (timm models are reachable as timm:NAME besides these)."""
    return sorted({spec.name for spec in _REGISTRY.values()})


def installed_models() -> list[str]:
    """Registered models whose pretrained weights are on this machine (no download needed)."""
    return [name for name in list_models() if _REGISTRY[name].weights.available()]


def get_spec(name: str) -> ModelSpec:
    """The ModelSpec of a registered name or of timm:NAME."""
    if name.startswith(TIMM_PREFIX):
        from .timm_models import timm_spec

        return timm_spec(name[len(TIMM_PREFIX):])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TransferlabError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}, or any timm model as timm:NAME"
        ) from None


def create_model(
    name: str,
    num_classes: int | None = None,
    weights: str | Path | bool | None = "default",
) -> BlockNet:
    """Build a registered model as a BlockNet.

    weights: "default" (pretrained ImageNet, offline first), "none" (random init), or a file
    (safetensors or torch state dict) in the original architecture's layout or in transferlab's.
    num_classes: replace the classifier by a new one with this many outputs (None keeps it).
    """
    spec = get_spec(name)
    raw = spec.build()
    user_state = None
    if weights in PRETRAINED:
        spec.weights.load_into(raw, spec.name)
    elif weights not in NO_WEIGHTS:
        user_state = load_state_dict_file(weights)
        if not _is_blocknet_state(user_state):
            load_user_weights(raw, user_state, str(weights), spec.optional_keys)
            user_state = None
    groups = spec.groups(raw) if spec.groups else None  # before blocks(), which may move the classifier
    model = BlockNet(spec.blocks(raw), groups)
    model.arch = spec.name
    model.preprocessing = spec.preprocessing
    if user_state is not None:
        classes = _classes_in_state(model, user_state)
        if classes != model.num_classes:
            model.reset_classifier(classes)
        load_user_weights(model, user_state, str(weights))
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    model.eval()
    return model


def _is_blocknet_state(state: dict) -> bool:
    return all(k.startswith("blocks.") for k in state)


def _classes_in_state(model: BlockNet, state: dict) -> int:
    """The class count a transferlab state dict was saved with (its classifier's rows)."""
    for name, module in model.named_modules():
        if module is model.classifier:
            key = f"{name}.weight"
            return int(state[key].shape[0]) if key in state else model.num_classes
    return model.num_classes


def count_parameters(model: nn.Module) -> int:
    """All parameters of a model, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def example_input(spec_or_model, batch: int = 1) -> torch.Tensor:
    """A random batch of the model's input size."""
    size = spec_or_model.preprocessing.input_size
    return torch.randn(batch, 3, size, size)
