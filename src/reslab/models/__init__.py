"""reslab's networks: importing this package registers every family."""

from . import cifar  # noqa: F401  (registers the CIFAR nets)
from . import imagenet, preact, report000, resnext, wide  # noqa: F401  (register the other families)
from .base import ResLabModel, StagedModel
from .registry import create_model, describe_model, list_models, model_from_meta, register_model

__all__ = ["ResLabModel", "StagedModel", "create_model", "describe_model", "list_models", "model_from_meta",
           "register_model"]
