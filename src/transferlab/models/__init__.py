from . import torchvision_models  # noqa: F401  (registers the built-in architectures)
from .blocks import BlockNet
from .registry import (ModelSpec, count_parameters, create_model, get_spec, installed_models, list_models,
                       register_model)

__all__ = [
    "BlockNet", "ModelSpec", "count_parameters", "create_model", "get_spec", "installed_models", "list_models",
    "register_model",
]
