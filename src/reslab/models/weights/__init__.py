"""Weights from elsewhere: torchvision, Keras applications, other PyTorch reproductions."""

from .files import load_state_dict_flexible, read_weights_file
from .keras_weights import load_keras_weights
from .torchvision_weights import load_torchvision_weights

__all__ = ["load_keras_weights", "load_state_dict_flexible", "load_torchvision_weights", "read_weights_file"]
