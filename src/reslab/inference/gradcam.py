"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies.

A forward hook on the model's last stage keeps its feature maps A^k, a backward hook the
gradients of the class score y^c (the logit, before softmax or sigmoid) with respect to
them. Each map is weighted by its mean gradient (Eq. 1), the weighted sum is rectified
(Eq. 2) and upsampled to the input's size, then scaled to [0, 1] per image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ..errors import ReslabError
from ..figures import new_figure, save_figure
from .predict import LoadedImages, is_multi_label, normalize, probabilities


class Explanation(NamedTuple):
    maps: torch.Tensor  # (N, H, W) in [0, 1], the input's size
    targets: torch.Tensor  # (N,) the class each map explains
    logits: torch.Tensor  # (N, classes)


def last_stage(model: nn.Module) -> nn.Module:
    stages = model.stages() if hasattr(model, "stages") else {}
    if not stages:
        raise ReslabError(f"{type(model).__name__} has no stages(); Grad-CAM needs a reslab model or a layer")
    return list(stages.values())[-1]


class GradCAM:
    """Grad-CAM on ``layer`` (default: the model's last stage). Hooks live only for one call."""

    def __init__(self, model: nn.Module, layer: nn.Module | None = None):
        self.model = model
        self.layer = layer if layer is not None else last_stage(model)

    def __call__(self, images: torch.Tensor, target: int | torch.Tensor | None = None) -> Explanation:
        """``images``: normalized (N, C, H, W); ``target``: a class for all, one per image,
        or None for each image's predicted class."""
        captured: dict[str, torch.Tensor] = {}

        def keep_features(module, inputs, output):
            captured["features"] = output

        def keep_gradients(module, grad_inputs, grad_outputs):
            captured["gradients"] = grad_outputs[0]

        handles = [self.layer.register_forward_hook(keep_features),
                   self.layer.register_full_backward_hook(keep_gradients)]
        was_training = self.model.training
        checkpointing = getattr(self.model, "grad_checkpointing", False)
        self.model.eval()
        if checkpointing:  # checkpointed stages are run block by block and would skip the hooks
            self.model.grad_checkpointing = False
        try:
            with torch.enable_grad():
                # Gradients are taken with respect to the input, not the weights: a frozen model
                # works too, and no .grad is left on the parameters.
                images = images.detach().clone().requires_grad_(True)
                logits = self.model(images)
                targets = self._targets(logits, target)
                score = logits.gather(1, targets[:, None]).sum()  # images are independent in eval mode
                torch.autograd.grad(score, images)
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
            if checkpointing:
                self.model.grad_checkpointing = True
        if "gradients" not in captured:
            raise RuntimeError(f"the hooked layer {type(self.layer).__name__} was not on the path to the output")
        features, gradients = captured["features"].detach(), captured["gradients"].detach()
        weights = gradients.mean(dim=(2, 3), keepdim=True)  # alpha_k^c, Eq. 1
        cam = F.relu((weights * features).sum(1, keepdim=True))  # Eq. 2
        cam = F.interpolate(cam, size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.amax(dim=(1, 2), keepdim=True)
        cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
        return Explanation(cam.float().cpu(), targets.cpu(), logits.detach().float().cpu())

    @staticmethod
    def _targets(logits: torch.Tensor, target) -> torch.Tensor:
        count, classes = logits.shape
        if target is None:
            return logits.argmax(1)
        targets = torch.as_tensor(target, device=logits.device, dtype=torch.long).expand(count)
        if (targets < 0).any() or (targets >= classes).any():
            raise ReslabError(f"class index {targets.tolist()} out of range for a model with {classes} classes")
        return targets


def grad_cam(model: nn.Module, meta: dict, images: torch.Tensor, target=None, batch_size: int = 256) -> Explanation:
    """Grad-CAM of uint8 images (N, C, H, W) at the checkpoint's size, in batches."""
    device = next(model.parameters()).device
    if target is not None and not isinstance(target, int):
        target = torch.as_tensor(target, dtype=torch.long)
    explain = GradCAM(model)
    parts = []
    for start in range(0, len(images), batch_size):
        chunk_target = target[start:start + batch_size] if isinstance(target, torch.Tensor) and target.ndim else target
        parts.append(explain(normalize(images[start:start + batch_size], meta, device), chunk_target))
    return Explanation(*(torch.cat(values) for values in zip(*parts)))


# ---------------------------------------------------------------- pictures


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as RGB uint8 through matplotlib's jet colour map (blue low, red high)."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.45, min_side: int = 224) -> Image.Image:
    """A uint8 (C, H, W) image with its Grad-CAM map blended over it, enlarged to at least
    ``min_side`` pixels (pixels stay sharp, the heatmap is smoothed)."""
    pixels = image.cpu().numpy().transpose(1, 2, 0)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    height, width = pixels.shape[:2]
    scale = max(1, math.ceil(min_side / max(height, width)))
    size = (width * scale, height * scale)
    base = Image.fromarray(np.ascontiguousarray(pixels), "RGB").resize(size, Image.Resampling.NEAREST)
    heat = Image.fromarray(cam.cpu().numpy().astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR)
    colours = Image.fromarray(heat_colours(np.asarray(heat)), "RGB")
    return Image.blend(base, colours, alpha)


def _unique_name(stem: str, taken: set[str]) -> str:
    name, copy = f"{stem}.gradcam.png", 1
    while name in taken:
        copy += 1
        name = f"{stem}-{copy}.gradcam.png"
    taken.add(name)
    return name


def write_overlays(model: nn.Module, meta: dict, loaded: LoadedImages, folder: Path, target: int | None = None,
                   batch_size: int = 256) -> list[Path]:
    """One ``<image name>.gradcam.png`` per image in ``folder``: the predicted class's map, or ``target``'s."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReslabError(f"cannot create the --explain folder {folder}: {exc.strerror}") from None
    explained = grad_cam(model, meta, loaded.images, target, batch_size)
    written, taken = [], set()
    for name, image, cam in zip(loaded.names, loaded.images, explained.maps):
        path = folder / _unique_name(Path(name).stem, taken)
        try:
            overlay(image, cam).save(path, format="PNG")
        except OSError as exc:
            raise ReslabError(f"cannot write {path}: {exc.strerror}") from None
        written.append(path)
    return written


def gallery(model: nn.Module, meta: dict, images_uint8: torch.Tensor, labels, path: Path,
            max_items: int = 16) -> int:
    """A PNG of the misclassified images among ``images_uint8`` (N, C, H, W): each one, its
    true label and prediction, and the Grad-CAM map of the predicted class. The most
    confident mistakes come first; returns how many are shown.

    ``labels``: class indices (N,), or for a multi-label checkpoint multi-hot rows (N, classes).
    """
    classes = meta["classes"]
    labels = torch.as_tensor(labels).cpu()
    probs = probabilities(model, meta, images_uint8)
    if is_multi_label(meta):
        predicted = probs > 0.5
        wrong = (predicted != labels.bool()).any(1)
        # Explain the label the model is most sure of among those it got wrong.
        targets = torch.where(predicted != labels.bool(), probs, torch.full_like(probs, -1.0)).argmax(1)
        confidence = probs.gather(1, targets[:, None])[:, 0]
    else:
        confidence, targets = probs.max(1)
        wrong = targets != labels
    order = sorted(torch.nonzero(wrong).flatten().tolist(), key=lambda i: -float(confidence[i]))[:max_items]

    if not order:
        figure, axis = new_figure(size=(4, 1))
        axis.axis("off")
        axis.text(0.5, 0.5, f"no misclassified examples among {len(labels)} images", ha="center", va="center")
        save_figure(figure, Path(path))
        return 0
    index = torch.tensor(order)
    maps = grad_cam(model, meta, images_uint8[index], targets[index]).maps
    columns = min(4, len(order))
    rows = math.ceil(len(order) / columns)
    figure, axes = new_figure(rows, 2 * columns, size=(2.4 * 2 * columns, 2.8 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for slot, (i, cam) in enumerate(zip(order, maps)):
        row, column = divmod(slot, columns)
        image_axis, heat_axis = axes[row, 2 * column], axes[row, 2 * column + 1]
        pixels = images_uint8[i].cpu().numpy().transpose(1, 2, 0)
        grey = pixels.shape[2] == 1
        image_axis.imshow(pixels[:, :, 0] if grey else pixels, cmap="gray" if grey else None, vmin=0, vmax=255,
                          interpolation="nearest")
        heat_axis.imshow(np.asarray(overlay(images_uint8[i], cam)))
        if is_multi_label(meta):
            true = ", ".join(classes[c] for c in torch.nonzero(labels[i]).flatten().tolist()) or "none"
            guess = ", ".join(classes[c] for c in torch.nonzero(probs[i] > 0.5).flatten().tolist()) or "none"
        else:
            true, guess = classes[int(labels[i])], classes[int(targets[i])]
        image_axis.set_title(f"true: {true}", fontsize=9)
        heat_axis.set_title(f"pred: {guess} ({float(confidence[i]):.2f})", fontsize=9, color="firebrick")
    figure.suptitle(f"Misclassified: {int(wrong.sum())} of {len(labels)} (Grad-CAM of the prediction)", fontsize=10)
    save_figure(figure, Path(path))
    return len(order)
