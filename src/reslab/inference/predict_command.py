"""``reslab predict``: its options checked, the images predicted and formatted, and the
Grad-CAM overlays written when asked for."""

from __future__ import annotations

from pathlib import Path

from ..errors import ReslabError
from .gradcam import write_overlays
from .predict import FORMATS, class_index, format_results, is_multi_label, load_images, load_model, predict_images


def run_predict(checkpoint: str, specs: list[str], top_k: int = 5, style: str = "table",
                threshold: float | None = None, explain: str | None = None, target_class: str | None = None,
                batch_size: int = 256, device: str = "auto", note=print) -> str:
    """What ``reslab predict`` prints. Skipped inputs and where overlays went are told
    through ``note`` (stderr in the CLI, so stdout stays clean CSV or JSON)."""
    if style not in FORMATS:
        raise ReslabError(f"--format must be one of {', '.join(FORMATS)}, got {style!r}")
    if top_k < 1:
        raise ReslabError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ReslabError(f"--batch-size must be at least 1, got {batch_size}")
    if target_class is not None and explain is None:
        raise ReslabError("--class chooses the class Grad-CAM explains; add --explain DIR")
    model, meta = load_model(checkpoint, device)
    if threshold is not None and not is_multi_label(meta):
        raise ReslabError(f"--threshold is for multi-label checkpoints; {checkpoint} is single-label (use --top-k)")
    if is_multi_label(meta):
        threshold = 0.5 if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise ReslabError(f"--threshold must be between 0 and 1, got {threshold}")
    target = class_index(meta, target_class) if target_class is not None else None

    if meta.get("temperature"):
        note(f"reslab: probabilities divided by the temperature T = {meta['temperature']:.4f} that reslab calibrate "
             "stored for this checkpoint")
    loaded = load_images(specs, meta)
    for what, why in loaded.skipped:
        note(f"reslab: warning: skipped {what}: {why}")
    results = predict_images(model, meta, loaded, top_k, threshold if threshold is not None else 0.5, batch_size)
    text = format_results(results, meta, style, threshold)
    if explain is not None:
        written = write_overlays(model, meta, loaded, Path(explain), target, batch_size)
        note(f"Grad-CAM overlays: {len(written)} PNG files in {explain}")
    return text
