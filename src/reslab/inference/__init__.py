"""Using trained models: predictions on image files, Grad-CAM explanations, export to
ONNX / TorchScript / safetensors, and a small local web page.

``predict``   images on disk -> top-k classes (or multi-label sets) as a table, CSV or JSON
``gradcam``   Grad-CAM heatmaps (Selvaraju et al. 2017), overlays and a misclassified gallery
``export``    ONNX and TorchScript with a parity check, safetensors weights with JSON metadata
``server``    ``reslab serve``: upload an image, see the predictions and the heatmap
"""

from .gradcam import GradCAM, gallery, grad_cam, overlay
from .predict import load_images, load_model, predict_images, probabilities

__all__ = ["GradCAM", "gallery", "grad_cam", "load_images", "load_model", "overlay", "predict_images",
           "probabilities"]
