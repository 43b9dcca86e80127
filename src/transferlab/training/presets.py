"""`--quality fast|default|best`: presets of backbone, resolution, epochs and recipe, chosen from
bench/recipe.py's measurements (docs/benchmarks.md, "Training recipe"). A preset fills only what the
user left unset, and the run records which preset chose what, and why (model.json "quality")."""
from __future__ import annotations

from ..core.errors import TransferlabError
from ..core.options import QUALITIES


# the EfficientNet-Lite backbones from the largest: `best` takes the largest one installed
LARGER_BACKBONES = ("efficientnet_lite2", "efficientnet_lite1", "efficientnet_lite0")

# per quality level: TrainConfig field -> (value, why)
PRESETS = {
    "fast": {"image_size": (160, "input 160 px: about half the pixels of 224, about half the time per epoch"),
             "epochs": (5, "5 epochs: the head and fine-tuning each get their share of half the default")},
    "default": {},
    # EMA and TTA are not in it: on the recipe bench (docs/benchmarks.md) EMA changed nothing (flowers,
    # eurosat) and mirror TTA cost 1-2 points; each stays an option (--ema, --tta on)
    # two-stage, not auto: with auto `best` scored 0.4 points over the defaults on the recipe bench's mean
    # against 1.5 with two-stage (docs/benchmarks.md), though at a third to a half of the CPU on two sets
    "best": {"epochs": (15, "15 epochs: fine-tuning goes on gaining past the default's 10")},
}


def quality_settings(quality: str, installed: list[str], given: set[str]) -> tuple[dict, dict]:
    """The TrainConfig fields a quality level sets, leaving those the user `given` alone, and why
    each (field -> reason); `best` takes the largest installed backbone at its own input size."""
    if quality not in QUALITIES:
        raise TransferlabError(f"--quality must be one of {', '.join(QUALITIES)}")
    chosen = dict(PRESETS[quality])
    if quality == "best":
        model = next(m for m in LARGER_BACKBONES if m in installed or m == LARGER_BACKBONES[-1])
        chosen["model"] = (model, f"backbone {model}: the largest EfficientNet-Lite installed, at its own input size")
    chosen = {k: v for k, v in chosen.items() if k not in given}
    return {k: value for k, (value, _) in chosen.items()}, {k: why for k, (_, why) in chosen.items()}
