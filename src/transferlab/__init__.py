"""transferlab: turn a pretrained vision model into your own."""
import os as _os

__version__ = "0.1.0"

# OpenMP threads that finish a parallel region spin-wait for the next one by default. When anything
# else wants the cores (our own decoding workers, another job), the spinning steals them: on a shared
# 2-core machine a forward pass measured ~20x slower with 2 spinning threads than with 1. Passive
# waiting costs little when the machine is idle. Only effective before torch is first imported, which
# is why it is set here; a value the user set is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .core.lazy import lazy_exports as _lazy_exports  # noqa: E402

__all__ = ["Classifier", "Detector", "TrainConfig", "__version__", "advise", "audit", "create_model", "evaluate",
           "export", "list_models", "load", "predict", "train"]
__getattr__, __dir__ = _lazy_exports(__name__, {
    "load": "api", "predict": "api", "evaluate": "api", "export": "api", "train": "api", "audit": "api",
    "Classifier": "inference.classifier", "advise": "advice.rules", "create_model": "models",
    "list_models": "models", "TrainConfig": "training.config", "Detector": "detect.detector",
})
