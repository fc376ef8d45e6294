"""Weights from elsewhere: torchvision, Keras (applications' files and users' whole models),
timm and Hugging Face hub folders, other PyTorch reproductions."""

from .files import load_state_dict_flexible, read_weights_file
from .hub import load_hub_model, load_hub_weights
from .keras_weights import load_keras_weights
from .torchvision_weights import load_torchvision_weights

__all__ = ["load_hub_model", "load_hub_weights", "load_keras_weights", "load_state_dict_flexible",
           "load_torchvision_weights", "read_weights_file"]
