"""The embedded default: scikit-learn's bundled handwritten digits (UCI optdigits test
set, 1,797 8x8 grayscale images of 10 digits; real data that needs no download)."""

from __future__ import annotations

import numpy as np
import torch

from .arrays import ArrayDataset


def read_digits() -> tuple[ArrayDataset, list[str]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are counts 0..16 of the 4x4 blocks of the original 32x32 bitmaps.
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(pixels).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return ArrayDataset(images, labels), [str(name) for name in bunch.target_names]
