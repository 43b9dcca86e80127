"""transferlab: turn a pretrained vision model into your own."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The public API, imported on first use so that `transferlab --help` does not pay for torch.
_API = {
    "Classifier": "classifier", "load": "classifier", "predict": "classifier",
    "create_model": "models", "list_models": "models",
    "train": "train", "TrainConfig": "train",
    "evaluate": "evaluate", "export": "export",
    "advise": "advise",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
