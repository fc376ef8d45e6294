"""reslab's networks: importing this package registers every family."""

from . import (  # noqa: F401  (register the other families)
           cifar,
           imagenet,
           preact,
           report000,
           resnext,
           wide,
)
from .base import ResLabModel, StagedModel
from .registry import create_model, describe_model, list_models, model_from_meta, register_model

__all__ = ["ResLabModel", "StagedModel", "create_model", "describe_model", "list_models", "model_from_meta",
           "register_model"]
