"""Any timm architecture by name (`timm:NAME`), with timm's own preprocessing and weights."""
from __future__ import annotations

from functools import lru_cache

from ..errors import TransferlabError
from ..preprocess import Preprocessing
from ..weights import TimmWeights
from . import architectures as A
from .registry import TIMM_PREFIX, ModelSpec


@lru_cache(maxsize=None)
def timm_spec(architecture: str) -> ModelSpec:
    import timm

    if not timm.is_model(architecture):
        raise TransferlabError(
            f"timm has no model {architecture!r}; list them with python -c \"import timm; print(timm.list_models())\""
        )
    cfg = timm.models.get_pretrained_cfg(architecture)
    size = int(cfg.input_size[-1]) if cfg else 224
    crop_pct = getattr(cfg, "crop_pct", 0.875) if cfg else 0.875
    preprocessing = Preprocessing(
        input_size=size,
        resize=int(round(size / crop_pct)),
        mean=tuple(cfg.mean) if cfg else Preprocessing().mean,
        std=tuple(cfg.std) if cfg else Preprocessing().std,
        interpolation=getattr(cfg, "interpolation", "bicubic") or "bicubic",
    )
    return ModelSpec(
        name=TIMM_PREFIX + architecture,
        build=lambda: timm.create_model(architecture, pretrained=False),
        blocks=A.timm_generic_blocks,
        preprocessing=preprocessing,
        weights=TimmWeights(architecture),
        description=f"timm {architecture}",
    )
