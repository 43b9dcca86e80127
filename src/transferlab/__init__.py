"""transferlab: turn a pretrained vision model into your own."""
__version__ = "0.1.0"

# Bound eagerly on purpose: `from .train import train` rebinds the package attribute `train` from the
# submodule to the function, so `transferlab.train(...)` keeps working after any submodule import.
from .advise import advise  # noqa: E402
from .classifier import Classifier, load, predict  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .export import export  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .train import TrainConfig, train  # noqa: E402

__all__ = ["Classifier", "TrainConfig", "__version__", "advise", "create_model", "evaluate", "export", "list_models",
           "load", "predict", "train"]
