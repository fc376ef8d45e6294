"""reslab: deep residual networks for image recognition, in PyTorch."""

__version__ = "0.1.0"

from .errors import ReslabError
from .models import create_model, list_models

__all__ = ["ReslabError", "create_model", "list_models", "__version__"]
