"""transferlab: turn a pretrained vision model into your own."""
__version__ = "0.1.0"

from .classifier import Classifier, load, predict  # noqa: E402
from .models import create_model, list_models  # noqa: E402

__all__ = ["Classifier", "create_model", "list_models", "load", "predict", "__version__"]
