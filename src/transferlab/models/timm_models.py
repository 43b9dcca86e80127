"""Any timm architecture by name (`timm:NAME`), with timm's own preprocessing, weights and freeze groups."""
from __future__ import annotations

from functools import lru_cache

from torch import nn

from ..core.errors import TransferlabError
from .weights import TimmWeights
from . import architectures as A
from .spec import TIMM_PREFIX, ModelSpec


@lru_cache(maxsize=None)
def timm_spec(architecture: str) -> ModelSpec:
    """A ModelSpec for any timm architecture; freeze groups come from the model's own group_matcher."""
    import timm

    if not timm.is_model(architecture):
        raise TransferlabError(
            f"timm has no model {architecture!r}; list them with python -c \"import timm; print(timm.list_models())\""
        )
    return ModelSpec(
        name=TIMM_PREFIX + architecture,
        build=lambda: timm.create_model(architecture, pretrained=False),
        blocks=A.timm_generic_blocks,
        weights=TimmWeights(architecture),
        description=f"timm {architecture}",
        groups=timm_freeze_groups,
    )


def timm_freeze_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]] | None:
    """(name, parameters) per freeze group, stem first and head last, from timm's group_matcher
    (the groups timm itself uses for layer-wise learning-rate decay). None where the model has none."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        return None
    params = dict(model.named_parameters())
    grouped = group_parameters(model, model.group_matcher(coarse=False))
    groups = []
    for i, names in enumerate(grouped.values()):
        groups.append((_group_name(names, i, len(grouped)), [params[n] for n in names]))
    return groups


def _group_name(names: list[str], i: int, count: int) -> str:
    """stem, head, else the dotted prefix the group's parameters share (stages.1.blocks.0); a group
    that also takes a final norm (timm merges it into the last block) is named by its first parameter."""
    if i in (0, count - 1):
        return "stem" if i == 0 else "head"
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if not common:
        first = parts[0]
        numeric = [k for k, part in enumerate(first) if part.isdigit()]
        common = first[: numeric[-1] + 1] if numeric else first[:1]
    return ".".join(common) or f"group{i}"
