"""`--quality fast|default|best`: presets of backbone, resolution, epochs and recipe, chosen from
bench/recipe.py's measurements (docs/benchmarks.md, "Training recipe"). A preset fills only what the
user left unset, and the run records which preset chose what, and why (model.json "quality")."""
from __future__ import annotations

import math

from ..core.errors import TransferlabError
from ..core.options import QUALITIES

# The input size follows the pixels the images hold (default and best; fast sets its own): the largest
# multiple of INPUT_STEP (the backbones' stride) whose evaluation resize does not upsample the median image,
# at least the backbone's own size and at most PIXEL_SIZE_CAP times it. On aquarium (median shorter side
# 384 px) the frozen probe scored 0.953, 0.972 and 0.970 mAP at 224, 288 and 352 px, and training at 288 px
# gained 0.7 points over 224 (two-stage and auto alike) for 1.5x the time (docs/benchmarks.md, "Tables and
# multi-label"); past 1.3x the probe gained nothing while the time grows with the pixels. Images no larger
# than the backbone's input keep it: upsampling adds no detail (the advisor's probe at 288 px moved
# flowers, EuroSAT and clothing, all at most 256 px, by -1.9 to +0.4).
INPUT_STEP = 32
PIXEL_SIZE_CAP = 1.3


# the EfficientNet-Lite backbones from the largest: `best` takes the largest one installed
LARGER_BACKBONES = ("efficientnet_lite2", "efficientnet_lite1", "efficientnet_lite0")

# per quality level: TrainConfig field -> (value, why)
PRESETS = {
    "fast": {"image_size": (160, "input 160 px: about half the pixels of 224, about half the time per epoch"),
             "epochs": (5, "5 epochs: the head and fine-tuning each get their share of half the default")},
    "default": {},
    # EMA and TTA are not in it: on the recipe bench (docs/benchmarks.md) EMA changed nothing (flowers,
    # eurosat; -0.1 mAP on aquarium) and mirror TTA cost 1-2 points; each stays an option (--ema, --tta on)
    # two-stage, not auto: with auto `best` scored 0.4 points over the defaults on the recipe bench's mean
    # against 1.5 with two-stage (docs/benchmarks.md), though at a third to a half of the CPU on two sets.
    # The default's 10 epochs, not 15: efficientnet_lite2 for 10 epochs scored level with 15 on the mean of
    # four sets (0.888 against 0.887 on three over two seeds, 0.986 against 0.986 mAP on aquarium) for two
    # thirds of the fine-tuning, and 15 epochs of lite0 gained nothing (docs/benchmarks.md); the backbone
    # (quality_settings) is what `best` buys.
    "best": {},
}


def input_size_for_pixels(short_side: int, preprocessing) -> tuple[int, str] | None:
    """The input size the images' median shorter side supports above the backbone's own (see
    PIXEL_SIZE_CAP), and why; None when the backbone's own size is as large as they allow."""
    own = preprocessing.input_size
    supported = short_side * own / preprocessing.resize  # evaluation resizes the shorter side to `resize`
    size = min(math.floor(supported / INPUT_STEP), math.floor(PIXEL_SIZE_CAP * own / INPUT_STEP)) * INPUT_STEP
    if size <= own:
        return None
    return size, (f"input {size} px: the images' median shorter side is {short_side} px, more detail than the "
                  f"backbone's own {own} px keeps (at most {PIXEL_SIZE_CAP}x it; --image-size {own} trains faster)")


def quality_settings(quality: str, installed: list[str], given: set[str], model: str = "efficientnet_lite0",
                     short_side: int | None = None) -> tuple[dict, dict]:
    """The TrainConfig fields a quality level sets, leaving those the user `given` alone, and why
    each (field -> reason); `best` takes the largest installed backbone. `model`: the backbone the run
    trains unless the level picks one; `short_side`: the training images' median shorter side, which
    sets the input size (input_size_for_pixels) where the level leaves it to the data."""
    from ..models import get_spec

    if quality not in QUALITIES:
        raise TransferlabError(f"--quality must be one of {', '.join(QUALITIES)}")
    chosen = dict(PRESETS[quality])
    if quality == "best":
        larger = next(m for m in LARGER_BACKBONES if m in installed or m == LARGER_BACKBONES[-1])
        chosen["model"] = (larger, f"backbone {larger}: the largest EfficientNet-Lite installed")
    if "image_size" not in chosen and short_side:
        backbone = chosen["model"][0] if "model" in chosen and "model" not in given else model
        by_pixels = input_size_for_pixels(short_side, get_spec(backbone).preprocessing)
        if by_pixels is not None:
            chosen["image_size"] = by_pixels
    chosen = {k: v for k, v in chosen.items() if k not in given}
    return {k: value for k, (value, _) in chosen.items()}, {k: why for k, (_, why) in chosen.items()}


def best_under_budget(installed: list[str], given: dict, short_side: int | None, seconds: float,
                      price) -> tuple[dict, dict]:
    """`--quality best` with a budget of `seconds`: the first schedule whose estimate `price(backbone,
    input size, epochs)` fits, trying the installed EfficientNet-Lites from the largest (what the user
    `given` stays fixed), at the input size its pixels support; when none fits, the defaults, which the
    budget trims as they train. Returns the fields and why each, as quality_settings does."""
    from ..models import get_spec
    from .config import TrainConfig

    if "model" in given:
        backbones = [given["model"]]
    else:
        backbones = [m for m in LARGER_BACKBONES if m in installed or m == LARGER_BACKBONES[-1]]
    epochs = given.get("epochs", TrainConfig.epochs)
    tried = []
    for backbone in backbones:
        own = get_spec(backbone).preprocessing
        by_pixels = input_size_for_pixels(short_side, own) if short_side else None
        size = given.get("image_size") or (by_pixels[0] if by_pixels else own.input_size)
        need = price(backbone, size, epochs)
        tried.append(f"{backbone} at {size} px for {epochs} epochs ~{need:.0f}s")
        if need <= seconds:
            over = f" (over it: {'; '.join(tried[:-1])})" if len(tried) > 1 else ""
            chosen = {"model": backbone, "image_size": size}
            return ({k: v for k, v in chosen.items() if k not in given},
                    {"budget": f"budget {seconds:.0f}s: {tried[-1]} fits{over}"})
    return {}, {"budget": f"budget {seconds:.0f}s: no schedule of best fits ({'; '.join(tried)}); the defaults "
                          "train, trimmed by the budget as they go"}
