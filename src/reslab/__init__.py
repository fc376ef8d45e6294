"""reslab: deep residual networks for image recognition, in PyTorch."""

__version__ = "0.1.0"

from .errors import ReslabError

__all__ = ["ReslabError", "create_model", "list_models", "__version__"]


def __getattr__(name: str):
    # PEP 562: the model registry (and PyTorch with it) loads on first use, not on `import
    # reslab`, so that processes that never build a model (a cluster job's supervisor, `reslab
    # --help`) start in a fraction of a second.
    if name in ("create_model", "list_models"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'reslab' has no attribute {name!r}")
