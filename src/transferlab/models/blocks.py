"""Every backbone seen as an ordered list of named blocks: stem .. stages .. pool .. head.

"Freeze the first N groups" then means the same thing for every architecture, the frozen prefix
can be run once and cached (training/features.py), and the head is always the last block.

Freeze groups are the blocks themselves unless the architecture gives finer ones: timm models whose
body is not a sequence of stages (ViT, ConvNeXt, ...) keep one body block for the forward pass and
freeze by timm's own group_matcher (stem, each transformer block, norm, head).
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..core.options import BN_POLICIES


class BlockNet(nn.Module):
    """A classifier whose forward is its blocks applied in order."""

    def __init__(self, blocks: "OrderedDict[str, nn.Module]", groups: list | None = None):
        super().__init__()
        if not blocks:
            raise ValueError("a BlockNet needs at least one block")
        self.blocks = nn.ModuleDict(blocks)
        self.groups = self._group_names_of(groups) if groups else [
            (name, [f"blocks.{name}.{p}" for p, _ in module.named_parameters()]) for name, module in blocks.items()]
        self.frozen_groups = 0
        self.frozen_blocks = 0  # leading blocks with every parameter frozen: the prefix that can be cached
        self.bn_policy = "frozen"
        self.checkpointed_blocks = 0  # leading blocks recomputed in backward instead of storing activations

    def _group_names_of(self, groups: list) -> list[tuple[str, list[str]]]:
        """(name, parameters) groups -> (name, parameter names in this network); parameters no group
        holds (a classifier the architecture replaced) join the last group, the head."""
        names = {id(p): n for n, p in self.named_parameters()}
        out = [(name, [names[id(p)] for p in params if id(p) in names]) for name, params in groups]
        grouped = {n for _, ns in out for n in ns}
        out[-1][1].extend(n for n in names.values() if n not in grouped)
        return [(name, ns) for name, ns in out if ns]

    # --- structure -------------------------------------------------------------------------
    @property
    def block_names(self) -> list[str]:
        """The sequential blocks of the forward pass, stem first, head last."""
        return list(self.blocks.keys())

    @property
    def group_names(self) -> list[str]:
        """The freeze groups, stem first, head last: what `freeze(n)` and freeze points count."""
        return [name for name, _ in self.groups]

    def group_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters of one freeze group."""
        params = dict(self.named_parameters())
        return [params[n] for group, names in self.groups if group == name for n in names]

    @property
    def head(self) -> nn.Module:
        """The last block (holds the classifier)."""
        return self.blocks[self.block_names[-1]]

    @property
    def classifier(self) -> nn.Linear:
        """The last Linear of the head: the layer replaced for a new set of classes."""
        linears = [m for m in self.head.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise TypeError("the head block has no Linear layer")
        return linears[-1]

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier."""
        return self.classifier.out_features

    @property
    def num_features(self) -> int:
        """Inputs of the classifier (the feature width)."""
        return self.classifier.in_features

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear by a freshly initialised one with `num_classes` outputs."""
        old = self.classifier
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        for parent in self.modules():
            for name, child in parent.named_children():
                if child is old:
                    setattr(parent, name, new)
                    return

    def group_index(self, group: int | str) -> int:
        """Resolve a freeze point given as a count (0..len) or as the name of the first trainable group."""
        names = self.group_names
        if isinstance(group, str) and not group.lstrip("-").isdigit():
            if group not in names:
                raise ValueError(f"unknown block {group!r}; blocks are: {', '.join(names)}")
            return names.index(group)
        n = int(group)
        if n < 0:
            n += len(names)
        if not 0 <= n <= len(names):
            raise ValueError(f"freeze point {group} out of range 0..{len(names)} (blocks: {', '.join(names)})")
        return n

    # --- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: every block in order."""
        return self.forward_blocks(x, 0, len(self.blocks))

    def forward_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Run blocks[start:stop]; with start=N this continues from cached frozen-prefix features."""
        modules = list(self.blocks.values())
        for i in range(start, stop):
            module = modules[i]
            if i < self.checkpointed_blocks and self.training and torch.is_grad_enabled() and i >= self.frozen_blocks:
                x = checkpoint(module, x, use_reentrant=False,
                               context_fn=lambda m=module: (nullcontext(), _batchnorm_statistics_kept(m)))
            else:
                x = module(x)
        return x

    def high_resolution_blocks(self, input_size: int) -> int:
        """How many leading blocks take inputs of at least a quarter of the image side.

        They hold most of a training step's activation memory for a small share of its compute, so
        recomputing them in backward (gradient checkpointing) is the cheap place to save memory:
        efficientnet_lite0 at batch 32 went from 3.5 to 2.9 GiB, for about a fifth of its images/s on CPU.
        """
        was_training = self.training
        self.eval()  # no BatchNorm statistics updated by this probe
        x = torch.zeros(1, 3, input_size, input_size, device=next(self.parameters()).device)
        count = 0
        with torch.no_grad():
            for module in self.blocks.values():
                if x.dim() != 4 or 4 * min(x.shape[-2:]) < input_size:
                    break
                x = module(x)
                count += 1
        self.train(was_training)
        return count

    # --- freezing --------------------------------------------------------------------------
    def freeze(self, n: int | str, bn_policy: str = "frozen") -> int:
        """Freeze the first n groups (requires_grad off); unfreeze the rest. Returns n as an int."""
        if bn_policy not in BN_POLICIES:
            raise ValueError(f"bn policy must be one of {BN_POLICIES}")
        n = self.group_index(n)
        frozen = {name for _, names in self.groups[:n] for name in names}
        for name, p in self.named_parameters():
            p.requires_grad_(name not in frozen)
        self.frozen_groups = n
        self.frozen_blocks = 0
        for module in self.blocks.values():
            if any(p.requires_grad for p in module.parameters()):
                break
            self.frozen_blocks += 1
        if n < len(self.groups):  # a trailing block without parameters (pool) still runs with the trainable rest
            self.frozen_blocks = min(self.frozen_blocks, len(self.blocks) - 1)
        self.bn_policy = bn_policy
        self.train(self.training)
        return n

    def train(self, mode: bool = True):
        """Training mode, with BatchNorm statistics kept where the BN policy says."""
        super().train(mode)
        if mode and self.bn_policy != "train":
            # Frozen BatchNorm keeps its ImageNet statistics: updating running stats of a layer
            # whose weights cannot adapt shifts every activation downstream of it.
            stop = len(self.blocks) if self.bn_policy == "eval" else self.frozen_blocks
            for module in list(self.blocks.values())[:stop]:
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def trainable_parameters(self) -> int:
        """How many parameters will be trained."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


@contextmanager
def _batchnorm_statistics_kept(module: nn.Module):
    """During a checkpointed block's recomputation: its BatchNorm running statistics were already
    updated by the first forward and must not move a second time."""
    saved = [(b, b.clone()) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


class TransformInput(nn.Module):
    """GoogLeNet/Inception-v3's torchvision weights expect (x-0.5)/0.5 inputs; this converts ImageNet-normalised ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised input -> the (x - 0.5) / 0.5 the weights expect."""
        x0 = x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x1 = x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x2 = x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x0, x1, x2), 1)


class Pool(nn.Sequential):
    """Global average pooling to a flat feature vector (optionally after an activation)."""

    def __init__(self, pre: nn.Module | None = None):
        layers = [pre] if pre is not None else []
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
