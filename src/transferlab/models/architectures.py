"""Block decompositions of the supported architectures.

Each `*_blocks` function takes the original torchvision/timm module (with its pretrained weights
already loaded) and returns its named blocks, whose sequential application equals the original
forward pass in eval mode (checked in tests against the original models).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .blocks import Pool, TransformInput


def _seq(*modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(*modules)


def resnet_blocks(m: nn.Module) -> "OrderedDict[str, nn.Module]":
    """ResNet: stem, layer1..4, pool, head."""
    act = getattr(m, "relu", None) or getattr(m, "act1")
    return OrderedDict(
        stem=_seq(m.conv1, m.bn1, act, m.maxpool),
        layer1=m.layer1,
        layer2=m.layer2,
        layer3=m.layer3,
        layer4=m.layer4,
        pool=Pool(),
        head=m.fc,
    )


def mobilenet_v2_blocks(m: nn.Module) -> "OrderedDict[str, nn.Module]":
    """MobileNet-V2: stem, stages by resolution, pool, head."""
    f = m.features
    # Stages split where the spatial resolution halves (strides at features 2, 4, 7, 14).
    return OrderedDict(
        stem=_seq(f[0], f[1]),
        stage1=_seq(*f[2:4]),
        stage2=_seq(*f[4:7]),
        stage3=_seq(*f[7:11]),
        stage4=_seq(*f[11:14]),
        stage5=_seq(*f[14:18]),
        conv_head=f[18],
        pool=Pool(),
        head=m.classifier,
    )


def densenet_blocks(m: nn.Module) -> "OrderedDict[str, nn.Module]":
    """DenseNet: stem, dense blocks with their transitions, pool, head."""
    f = m.features
    return OrderedDict(
        stem=_seq(f.conv0, f.norm0, f.relu0, f.pool0),
        dense1=_seq(f.denseblock1, f.transition1),
        dense2=_seq(f.denseblock2, f.transition2),
        dense3=_seq(f.denseblock3, f.transition3),
        dense4=_seq(f.denseblock4, f.norm5),
        pool=Pool(nn.ReLU()),
        head=m.classifier,
    )


def _split_at_pools(features: nn.Sequential) -> list[nn.Sequential]:
    """VGG/AlexNet features as conv stages, each ending at its max-pool."""
    stages, current = [], []
    for layer in features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(_seq(*current))
            current = []
    if current:
        stages.append(_seq(*current))
    return stages


def vgg_like_blocks(m: nn.Module) -> "OrderedDict[str, nn.Module]":
    """VGG/AlexNet: convolution groups split at the max-pools, pool, head."""
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    for i, stage in enumerate(_split_at_pools(m.features)):
        blocks["stem" if i == 0 else f"conv{i + 1}"] = stage
    c = list(m.classifier)
    last_linear = max(i for i, layer in enumerate(c) if isinstance(layer, nn.Linear))
    # fc6/fc7 are pretrained and trainable like any stage; only the final Linear is the "head".
    blocks["fc"] = _seq(m.avgpool, nn.Flatten(1), *c[:last_linear])
    blocks["head"] = _seq(*c[last_linear:])
    return blocks


def googlenet_blocks(m: nn.Module) -> "OrderedDict[str, nn.Module]":
    """GoogLeNet: stem, inception groups, pool, head."""
    return OrderedDict(
        stem=_seq(TransformInput(), m.conv1, m.maxpool1, m.conv2, m.conv3, m.maxpool2),
        inception3=_seq(m.inception3a, m.inception3b, m.maxpool3),
        inception4a=_seq(m.inception4a, m.inception4b),
        inception4c=_seq(m.inception4c, m.inception4d, m.inception4e, m.maxpool4),
        inception5=_seq(m.inception5a, m.inception5b),
        pool=Pool(),
        head=_seq(m.dropout, m.fc),
    )


def inception_v3_blocks(m: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Inception-v3: stem, mixed groups, pool, head."""
    return OrderedDict(
        stem=_seq(TransformInput(), m.Conv2d_1a_3x3, m.Conv2d_2a_3x3, m.Conv2d_2b_3x3, m.maxpool1),
        stem2=_seq(m.Conv2d_3b_1x1, m.Conv2d_4a_3x3, m.maxpool2),
        mixed5=_seq(m.Mixed_5b, m.Mixed_5c, m.Mixed_5d),
        mixed6a=_seq(m.Mixed_6a, m.Mixed_6b),
        mixed6c=_seq(m.Mixed_6c, m.Mixed_6d, m.Mixed_6e),
        mixed7=_seq(m.Mixed_7a, m.Mixed_7b, m.Mixed_7c),
        pool=Pool(),
        head=_seq(m.dropout, m.fc),
    )


def timm_efficientnet_blocks(m: nn.Module) -> "OrderedDict[str, nn.Module]":
    """timm EfficientNet / MobileNetV3 family: conv_stem, bn1, blocks[i], conv_head, bn2."""
    blocks: OrderedDict[str, nn.Module] = OrderedDict(stem=_seq(m.conv_stem, m.bn1))
    for i, stage in enumerate(m.blocks):
        blocks[f"stage{i + 1}"] = stage
    head_conv = [m.conv_head] + ([m.bn2] if hasattr(m, "bn2") else [])
    if hasattr(m, "act2"):
        head_conv.append(m.act2)
    blocks["conv_head"] = _seq(*head_conv)
    blocks["pool"] = m.global_pool if getattr(m.global_pool, "flatten", None) is not None else Pool()
    drop = getattr(m, "drop_rate", 0.0)
    blocks["head"] = _seq(nn.Dropout(drop), m.classifier) if drop else m.classifier
    return blocks


class TimmFeatures(nn.Module):
    """Fallback for timm models with a non-sequential body (ViTs, ...): one block for the body."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        """Pre-logit features of the wrapped timm model."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def timm_generic_blocks(m: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Blocks of any timm model: staged CNNs split by stage, others one body block."""
    names = {n for n, _ in m.named_children()}
    if {"conv_stem", "bn1", "blocks", "conv_head", "global_pool", "classifier"} <= names and hasattr(m, "bn2"):
        return timm_efficientnet_blocks(m)
    if {"conv1", "bn1", "layer1", "layer4", "fc"} <= names and hasattr(m, "global_pool"):
        return resnet_blocks(m)
    classifier = m.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise TypeError(f"timm model {type(m).__name__} has no single Linear classifier")
    m.reset_classifier(0)  # the Linear moves to the head block; the body ends at pre-logits
    return OrderedDict(body=TimmFeatures(m), head=classifier)
