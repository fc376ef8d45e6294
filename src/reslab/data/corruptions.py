"""The 15 common corruptions of CIFAR-10-C / ImageNet-C (Hendrycks & Dietterich, ICLR 2019)
at their 5 severities, generated on the fly on batches of image tensors.

``corrupt(images, name, severity, seed, indices)`` takes (N, C, H, W) pixels in [0, 1]
(float) or 0..255 (uint8), one or three channels, of any size, and returns the same dtype,
shape and device. The algorithms are those of the published generators
(``make_cifar_c.py``, ``make_tinyimagenet_c.py`` and ``make_imagenet_c.py`` in
hendrycks/robustness), re-implemented as tensor ops; uint8 results are truncated to 8 bits
as the published ``np.uint8(...)`` does (not rounded: a brightness of +0.05 on a black
pixel is 12, not 13).

Parameters: each published generator has its own table, written for one image side:
CIFAR-10-C's for 32, Tiny ImageNet-C's for 64, ImageNet-C's for 224 (``TABLES``). An image
gets the table whose side is nearest its shorter side on a log scale (CIFAR's below 46
pixels, Tiny ImageNet's below 120, ImageNet's from 120 up; ``parameter_table``), and the
table's lengths in pixels (blur radii and sigmas, motion length, glass shuffle distance,
elastic displacements, the frost photographs' scale) are multiplied by side / table side.
The CIFAR table's lengths are never shrunk (a 28x28 Fashion-MNIST image gets CIFAR's own:
they are a pixel or two already). Fractions of the image (pixelate, zoom, fog's fractal)
follow the image by construction.

Randomness: each image draws from its own generator seeded by (seed, corruption, image
index), on the CPU whatever the device, so an image is corrupted the same way in any
batch, on any device, and every severity of one image reuses the same draws (common
random numbers: severity 5 is severity 1's noise, stronger, which keeps the severity
curve smooth).

Where it runs: noise addition, brightness, contrast, fog, pixelate, the blurs, snow, frost,
glass blur's shuffle and elastic are tensor ops on the images' device; shot noise
(``torch.poisson`` with per-image generators) and JPEG (Pillow, as published) run on the
CPU.

Frost blends a crop of one of the published frost photographs. They ship in the MIT-licensed
``imagecorruptions`` package (the ``corruptions`` extra); reslab reads them as
package data, checked against their SHA-256, without importing that package. Without them a
generated stand-in takes their place (``frost_texture``), and ``frost_source()`` says which
is used: robustness results name it, since the stand-in's errors are not comparable with
CIFAR-10-C's.

What the published code does that is easy to miss, and is reproduced here:
- glass blur's "swap" (``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy rows of a colour
  image) copies the neighbour into the pixel and leaves the neighbour as it was: each pixel
  takes the value its neighbour has at that moment of the sequential sweep;
- zoom blur and snow crop ceil(side / zoom) pixels from the top-left of the centre, zoom the
  crop with SciPy (linear, corners aligned) and trim the centre: the zoom is not about the
  image's centre (a zoom of 1.04 on 32 pixels stretches the first 31 over 32), and a zoom of
  1.01 on 32 pixels leaves the image as it is;
- motion blur and snow's streaks go through ImageMagick and come back as 8-bit images,
  truncated (its Q16 result is scaled down, not rounded);
- the defocus kernel is a 17x17 aliased disk (larger past radius 8) smoothed by OpenCV's 3x3
  (5x5) Gaussian with its reflected border, not normalised again;
- frost picks among the first five photographs only (``randint(5)``), and CIFAR's resizes
  them to a fifth first.

Severity order: the published parameters make each severity harder for a classifier, but not
always farther from the clean image in pixels, and a few steps are equal (the tests check
each type in the distance it is monotone in): frost dims the image (weights 1 .. 0.75) as the
ice grows (0.2 .. 0.45), so it is monotone in decorrelation, not in absolute difference, and
its severities 3 and 4 are about equal (the image dimmed under the same weight of ice);
glass blur is monotone only in its passes (one at severities 1-3, two at 4 and 5): its
shuffle moves a pixel by one at most per pass, and within one pass count only sigma grows
(0.05 and 0.25 both round to a one-tap kernel); elastic trades a shrinking random affine warp
for a growing elastic field, so its pixel difference falls while its non-affine distortion
rises; motion blur's severities 3 and 4 are equal (radius 6 and 8 at sigma 2 differ by taps
under 1e-9), and snow's 2 and 3 hold about as much snow.

Deviations from the published code, all deliberate and small:
- motion blur is ImageMagick's MotionBlurImage kernel (a one-sided Gaussian-weighted line
  of 2*ceil(radius)+1 taps at rounded offsets, edge pixels repeated), written as tensor ops;
- the elastic affine warp interpolates in floating point (OpenCV's warpAffine quantises its
  coordinates to 1/32 pixel);
- one-channel images are corrupted as the published code corrupts a grey colour image
  (frost's photograph turned grey), so a grey image and its three-channel copy agree;
- ImageNet-C's files were stored as JPEG at quality 85; images corrupted here are not
  re-encoded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..errors import ReslabError
from ..extras import install_hint

logger = logging.getLogger(__name__)

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
CATEGORIES = {"noise": CORRUPTIONS[0:3], "blur": CORRUPTIONS[3:7], "weather": CORRUPTIONS[7:11],
              "digital": CORRUPTIONS[11:15]}
ALIASES = {"elastic": "elastic_transform", "jpeg": "jpeg_compression", "glass": "glass_blur", "motion": "motion_blur",
           "zoom": "zoom_blur", "defocus": "defocus_blur", "gaussian": "gaussian_noise", "shot": "shot_noise",
           "impulse": "impulse_noise"}
SEVERITIES = (1, 2, 3, 4, 5)
# Changes whenever an algorithm or a parameter changes: stored results of another version are measured again.
GENERATOR = "published-v2"


@dataclass(frozen=True)
class ParameterTable:
    """One published generator's parameters, one entry per severity 1..5, for images of ``side`` pixels."""

    name: str
    side: int
    gaussian_noise: tuple  # standard deviation
    shot_noise: tuple  # photons per unit of intensity
    impulse_noise: tuple  # share of values set to 0 or 1
    defocus_blur: tuple  # (disk radius, anti-alias sigma)
    glass_blur: tuple  # (sigma, shuffle distance, passes)
    motion_blur: tuple  # (ImageMagick radius, sigma)
    zoom_blur: tuple  # (bound, step): the zooms np.arange(1, bound, step) are averaged with the image
    snow: tuple  # (flake mean, flake std, zoom, threshold, motion radius, motion sigma, share of the image kept)
    frost: tuple  # (image weight, frost weight)
    frost_scale: float  # the photographs are resized by this before a crop is taken
    fog: tuple  # (fog strength, fractal decay)
    brightness: tuple  # added to the HSV value
    contrast: tuple  # factor towards the channel mean
    elastic_transform: tuple  # (displacement alpha, displacement sigma, affine jitter), in pixels
    pixelate: tuple  # share of the side kept by the box downsampling
    jpeg_compression: tuple  # quality

    def scale(self, height: int, width: int) -> float:
        """How much longer this image's lengths are than the table's."""
        ratio = min(height, width) / self.side
        return max(1.0, ratio) if self is TABLES[0] else ratio


def _pixels(side: float, fractions) -> tuple:
    return tuple(tuple(side * f for f in entry) for entry in fractions)


CIFAR_10_C = ParameterTable(
    name="CIFAR-10-C", side=32,
    gaussian_noise=(0.04, 0.06, 0.08, 0.09, 0.10),
    shot_noise=(500, 250, 100, 75, 50),
    impulse_noise=(0.01, 0.02, 0.03, 0.05, 0.07),
    defocus_blur=((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    glass_blur=((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    motion_blur=((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    zoom_blur=((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)),
    snow=((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
          (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    frost=((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)), frost_scale=0.2,
    fog=((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    brightness=(0.05, 0.1, 0.15, 0.2, 0.3),
    contrast=(0.75, 0.5, 0.4, 0.3, 0.15),
    elastic_transform=_pixels(32, ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                                   (0.1, 0.03, 0.03))),
    pixelate=(0.95, 0.9, 0.85, 0.75, 0.65),
    jpeg_compression=(80, 65, 58, 50, 40),
)

TINY_IMAGENET_C = ParameterTable(
    name="Tiny ImageNet-C", side=64,
    gaussian_noise=(0.04, 0.08, 0.12, 0.15, 0.18),
    shot_noise=(250, 100, 50, 30, 15),
    impulse_noise=(0.01, 0.02, 0.05, 0.08, 0.14),
    defocus_blur=((0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)),
    glass_blur=((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)),
    motion_blur=((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),
    zoom_blur=((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)),
    snow=((0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
          (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)),
    frost=((1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)), frost_scale=0.3,
    fog=((0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)),
    brightness=(0.1, 0.2, 0.3, 0.4, 0.5),
    contrast=(0.4, 0.3, 0.2, 0.1, 0.05),
    elastic_transform=_pixels(64, ((0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03),
                                   (0.16, 0.03, 0.02))),
    pixelate=(0.9, 0.8, 0.7, 0.6, 0.5),
    jpeg_compression=(65, 58, 50, 40, 25),
)

IMAGENET_C = ParameterTable(
    name="ImageNet-C", side=224,
    gaussian_noise=(0.08, 0.12, 0.18, 0.26, 0.38),
    shot_noise=(60, 25, 12, 5, 3),
    impulse_noise=(0.03, 0.06, 0.09, 0.17, 0.27),
    defocus_blur=((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    glass_blur=((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    motion_blur=((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    zoom_blur=((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
    snow=((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
          (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
    frost=((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)), frost_scale=1.0,
    fog=((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
    brightness=(0.1, 0.2, 0.3, 0.4, 0.5),
    contrast=(0.4, 0.3, 0.2, 0.1, 0.05),
    # 244, not 224: the published table's slip ("ultimately nothing is incorrect"), which made ImageNet-C
    elastic_transform=_pixels(244, ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02),
                                    (0.12, 0.01, 0.02))),
    pixelate=(0.6, 0.5, 0.4, 0.3, 0.25),
    jpeg_compression=(25, 18, 15, 10, 7),
)

TABLES = (CIFAR_10_C, TINY_IMAGENET_C, IMAGENET_C)


def parameter_table(height: int, width: int) -> ParameterTable:
    """The published table for images of this size: the one whose side is nearest the
    image's shorter side on a log scale."""
    side = max(1, min(height, width))
    return min(TABLES, key=lambda table: abs(math.log(side / table.side)))


def table_named(name: str) -> ParameterTable:
    for table in TABLES:
        if table.name.lower().replace(" ", "-") == name.lower().replace(" ", "-").replace("_", "-"):
            return table
    raise ReslabError(f"unknown corruption parameters {name!r}; choose among {', '.join(t.name for t in TABLES)}")


def corruption_names(text: str) -> list[str]:
    """``all``, a category (noise, blur, weather, digital) or comma-separated names, as a list."""
    names: list[str] = []
    for item in (part.strip().lower().replace("-", "_") for part in text.split(",")):
        if not item:
            continue
        if item == "all":
            names.extend(CORRUPTIONS)
        elif item in CATEGORIES:
            names.extend(CATEGORIES[item])
        elif item in CORRUPTIONS or item in ALIASES:
            names.append(ALIASES.get(item, item))
        else:
            import difflib

            close = difflib.get_close_matches(item, [*CORRUPTIONS, *ALIASES, *CATEGORIES, "all"], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ReslabError(f"unknown corruption {item!r}{hint}; use all, a category (noise, blur, weather, "
                              f"digital) or names among {', '.join(CORRUPTIONS)}")
    if not names:
        raise ReslabError("no corruption named; use all or names such as gaussian_noise,fog")
    return list(dict.fromkeys(names))


def severity_list(text: str) -> list[int]:
    """``1-5``, ``3`` or ``1,3,5`` as a sorted list of severities."""
    found: set[int] = set()
    try:
        for item in (part.strip() for part in str(text).split(",")):
            if "-" in item:
                low, high = (int(v) for v in item.split("-", 1))
                if not (SEVERITIES[0] <= low <= high <= SEVERITIES[-1]):  # bounds first: no huge range built
                    raise ReslabError(f"severities are 1 to 5 (e.g. 1-5 or 1,3,5), got {text!r}")
                found.update(range(low, high + 1))
            elif item:
                found.add(int(item))
    except ValueError:
        raise ReslabError(f"severities must look like 1-5 or 1,3,5, got {text!r}") from None
    if not found or not found <= set(SEVERITIES):
        raise ReslabError(f"severities are 1 to 5 (e.g. 1-5 or 1,3,5), got {text!r}")
    return sorted(found)


# ---------------------------------------------------------------- randomness per image


def image_seed(seed: int, name: str, index: int) -> int:
    """The seed of one image's draws for one corruption (a 63-bit mix of the three)."""
    mixed = (seed * 1_000_003 + zlib.crc32(name.encode())) * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9
    return mixed % (2**63 - 1)


class ImageRandom:
    """One CPU generator per image; each call draws ``shape`` from every image's stream in
    turn and returns them stacked, (N, *shape), on ``device``."""

    def __init__(self, seed: int, name: str, indices: Sequence[int], device: torch.device):
        self.generators = [torch.Generator().manual_seed(image_seed(seed, name, int(i))) for i in indices]
        self.device = device

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        draws = torch.stack([torch.rand(shape, generator=g) for g in self.generators])
        return (draws * (high - low) + low).to(self.device)

    def normal(self, *shape: int) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(self.device)

    def integers(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """Integers in [low, high), on the CPU."""
        return torch.stack([torch.randint(low, high, shape, generator=g) for g in self.generators])

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        """Poisson counts of per-image ``rates`` (N, ...), drawn on the CPU."""
        return torch.stack([torch.poisson(r, generator=g) for r, g in zip(rates.cpu(), self.generators)])


# ---------------------------------------------------------------- the entry point


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0,
            indices: Sequence[int] | torch.Tensor | None = None,
            table: ParameterTable | None = None) -> torch.Tensor:
    """``images`` (N, C, H, W; C 1 or 3; float in [0, 1] or uint8) with corruption ``name``
    at ``severity`` (1..5); image k draws from the stream of (seed, name, indices[k])
    (default: its position in the batch). The parameters are ``table``'s (default: the
    published table for the images' size, ``parameter_table``). Same dtype, shape and
    device back; uint8 truncated to 8 bits as the published generators store their images."""
    name = ALIASES.get(name, name)
    if name not in CORRUPTIONS:
        raise ReslabError(f"unknown corruption {name!r}; choose among {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ReslabError(f"severity must be 1 to 5, got {severity!r}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ReslabError(f"corruptions take (N, C, H, W) images with 1 or 3 channels, got {tuple(images.shape)}")
    indices = range(len(images)) if indices is None else [int(i) for i in indices]
    if len(indices) != len(images):
        raise ReslabError(f"{len(images)} images but {len(indices)} indices")
    if len(images) == 0:
        return images.clone()
    table = table or parameter_table(*images.shape[-2:])
    pixels = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    random = ImageRandom(seed, name, indices, images.device)
    out = _FUNCTIONS[name](pixels, severity - 1, random, table).clamp(0, 1)
    if images.dtype == torch.uint8:
        return to_8_bits(out)
    return out.to(images.dtype)


def to_8_bits(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels as uint8 the way the published generators store them: ``np.uint8`` of
    the values times 255, which truncates. In float32 a thousandth of a level keeps the last
    bit from turning an exact level (a JPEG's, a pixelated image's) into the one below; the
    corruptions computed in float64 as the published code computes them (defocus, glass blur,
    brightness) are truncated with no margin, as NumPy truncates them."""
    margin = 0.0 if x.dtype == torch.float64 else 1e-3
    return x.mul(255).add_(margin).floor_().clamp_(0, 255).to(torch.uint8)


def _quantised(x: torch.Tensor) -> torch.Tensor:
    """Rounded to 8 bits, as an image that went through Pillow comes back."""
    return (x * 255).round_() / 255


def _truncated(x: torch.Tensor) -> torch.Tensor:
    """Truncated to 8 bits, as an 8-bit image comes back from ImageMagick's (Q16) motion blur."""
    return to_8_bits(x.clamp(0, 1)).to(x.dtype) / 255


# ---------------------------------------------------------------- noise


def gaussian_noise(x, level, random, table):
    return x + table.gaussian_noise[level] * random.normal(*x.shape[1:])


def shot_noise(x, level, random, table):
    photons = table.shot_noise[level]
    return (random.poisson(x * photons) / photons).to(x.device)


def impulse_noise(x, level, random, table):
    # salt and pepper on each value independently (skimage's random_noise, mode="s&p")
    hit = random.uniform(*x.shape[1:]) < table.impulse_noise[level]
    salt = random.uniform(*x.shape[1:]) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


# ---------------------------------------------------------------- blur


@functools.lru_cache(maxsize=256)
def gaussian_matrix(size: int, sigma: float, truncate: float = 4.0, mode: str = "nearest") -> torch.Tensor:
    """(size, size) float64 weights of SciPy's ``gaussian_filter1d`` along one axis: taps
    out to ``int(truncate * sigma + 0.5)``, the border extended as SciPy's ``mode``
    ("nearest": edge repeated; "reflect": mirrored about the edge, d c b a | a b c d),
    whatever the radius against the size."""
    radius = int(truncate * sigma + 0.5)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    if sigma <= 0 or radius == 0:
        return matrix.fill_diagonal_(1.0)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-taps.square() / (2 * sigma * sigma))
    weights = weights / weights.sum()
    source = torch.arange(size)[:, None] + taps.long()[None, :]
    if mode == "nearest":
        source = source.clamp(0, size - 1)
    elif mode == "reflect":
        source = source.remainder(2 * size)
        source = torch.where(source >= size, 2 * size - 1 - source, source)
    else:
        raise ValueError(f"unknown border mode {mode!r}")
    rows = torch.arange(size)[:, None].expand_as(source)
    return matrix.index_put_((rows.reshape(-1), source.reshape(-1)), weights.repeat(size), accumulate=True)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "nearest") -> torch.Tensor:
    """scikit-image's ``gaussian`` per channel: SciPy's separable filter, rows then columns,
    the border extended as ``mode``. With the "nearest" border it is summed in SciPy's own
    order (the centre tap, then the pairs of taps from the outside in), so that in float64
    it gives SciPy's very bits: the published glass blur truncates its result to 8 bits, and a
    flat patch that SciPy leaves 6e-14 under a level falls to the level below."""
    if mode != "nearest":
        rows = gaussian_matrix(x.shape[-2], float(sigma), truncate, mode).to(x.device, x.dtype)
        cols = gaussian_matrix(x.shape[-1], float(sigma), truncate, mode).to(x.device, x.dtype)
        return rows @ x @ cols.T
    weights = _gaussian_weights(float(sigma), truncate)
    radius = len(weights) - 1
    for dim in (-2, -1):
        size = x.shape[dim]
        padded = F.pad(x, (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius), mode="replicate")
        out = x * weights[0]
        for tap in range(radius, 0, -1):
            out = out + (padded.narrow(dim, radius - tap, size) + padded.narrow(dim, radius + tap, size)) * weights[tap]
        x = out
    return x


@functools.lru_cache(maxsize=64)
def _gaussian_weights(sigma: float, truncate: float) -> tuple[float, ...]:
    """SciPy's normalised Gaussian taps 0..radius (computed by NumPy, as SciPy does)."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return (1.0,)
    taps = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * taps ** 2)
    phi = phi / phi.sum()
    return tuple(float(w) for w in phi[radius:])


@functools.lru_cache(maxsize=64)
def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The published defocus kernel: an aliased disk on a 17x17 grid (2r+1 past radius 8),
    normalised, then smoothed by OpenCV's 3x3 (5x5 past radius 8) Gaussian of sigma
    ``alias_blur`` with OpenCV's reflected border, and not normalised again. Rings of zeros
    are cut off (they change no sum)."""
    half, size = (8, 3) if radius <= 8 else (math.ceil(radius), 5)
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = (taps[:, None].square() + taps[None, :].square() <= radius * radius).double()
    disk /= disk.sum()
    smooth = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2).square() / (2 * alias_blur ** 2))
    smooth = torch.outer(smooth, smooth) / smooth.sum() ** 2
    padded = F.pad(disk[None, None], (size // 2,) * 4, mode="reflect")  # OpenCV's BORDER_REFLECT_101
    kernel = F.conv2d(padded, smooth[None, None])[0, 0]
    reach = int((kernel != 0).nonzero().sub(half).abs().max()) if bool((kernel != 0).any()) else 0
    return kernel[half - reach : half + reach + 1, half - reach : half + reach + 1].float()


def defocus_blur(x, level, random, table):
    radius, alias_blur = table.defocus_blur[level]
    scale = table.scale(*x.shape[-2:])
    kernel = disk_kernel(radius * scale, alias_blur * scale).to(x.device, torch.float64)
    half = kernel.shape[0] // 2
    mode = "reflect" if half < min(x.shape[-2:]) else "replicate"  # OpenCV's filter2D border, reflect-101
    channels = x.shape[1]
    out = F.conv2d(F.pad(_exact_levels(x), (half,) * 4, mode=mode), kernel.expand(channels, 1, -1, -1),
                   groups=channels)
    # float64, for ``to_8_bits``: the float32 kernel sums to 1 + 2e-8 or 1 - 3e-8, which decides a flat patch's level
    return out


def _exact_levels(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float64, values within 1e-4 of a level k / 255 made exactly that (as NumPy's
    ``uint8 / 255.``), so that float64 arithmetic can follow the published code's."""
    levels = x.double() * 255
    return torch.where((levels - levels.round()).abs() < 1e-4, levels.round(), levels) / 255


def glass_blur(x, level, random, table):
    """Blur, truncate to 8 bits, let each pixel take a neighbour's value in a sequential
    sweep (the published "swap"; see ``neighbour_copies``), blur again. Neighbours are
    drawn from [-d, d) as published."""
    sigma, distance, passes = table.glass_blur[level]
    scale = table.scale(*x.shape[-2:])
    sigma *= scale
    distance = max(1, round(distance * scale))
    height, width = x.shape[-2:]
    rows = torch.arange(height - distance, distance, -1)
    cols = torch.arange(width - distance, distance, -1)
    steps = len(rows) * len(cols)
    offsets = random.integers(-distance, distance, max(p for _, _, p in table.glass_blur), steps, 2)
    # In float64 from the exact levels (k / 255), summed as SciPy sums: the published code
    # truncates the blurred image to 8 bits, which turns SciPy's last bit into a level.
    pixels = (gaussian_blur(_exact_levels(x), sigma) * 255).clamp(0, 255).floor()
    if steps:
        targets = (rows[:, None] * width + cols[None, :]).reshape(-1)
        for sweep in range(passes):
            dx, dy = offsets[:, sweep, :, 0], offsets[:, sweep, :, 1]
            sources = targets[None, :] + dy * width + dx
            pixels = neighbour_copies(pixels, targets.to(x.device), sources.to(x.device))
    return gaussian_blur(pixels / 255, sigma)  # float64: ``to_8_bits`` truncates it as published


def neighbour_copies(pixels: torch.Tensor, targets: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """The sweep ``for t: image[targets[t]] = image[sources[n, t]]`` over flat pixel
    positions, done in order on each image n of (N, C, H, W) ``pixels``, without a Python
    loop: a pixel read at step t holds its original value unless step w < t wrote it, in
    which case it holds what step w read. Following those links to their end (pointer
    jumping, log2(steps) rounds) gives each step the original pixel it copies."""
    batch, channels, height, width = pixels.shape
    steps = len(targets)
    written_at = torch.full((height * width,), steps, dtype=torch.long, device=pixels.device)
    written_at[targets] = torch.arange(steps, device=pixels.device)
    step = torch.arange(steps, device=pixels.device).expand(batch, -1)
    when = written_at[sources]
    link = torch.where(when < step, when, step)
    while True:
        further = link.gather(1, link)
        if torch.equal(further, link):
            break
        link = further
    origin = sources.gather(1, link)
    flat = pixels.reshape(batch, channels, -1)
    out = flat.clone()
    out[:, :, targets] = flat.gather(2, origin[:, None, :].expand(-1, channels, -1))
    return out.view_as(pixels)


def motion_blur_lines(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's MotionBlurImage per image: the mean of 2*ceil(radius)+1 copies shifted
    by i pixels along the image's angle (degrees), weighted exp(-i^2 / 2 sigma^2); pixels
    beyond the edge repeat the edge."""
    width = 2 * math.ceil(radius) + 1 if radius > 0 else 3
    taps = torch.arange(width, device=x.device, dtype=torch.float64)
    weights = torch.exp(-taps.square() / (2 * sigma * sigma))
    weights = (weights / weights.sum()).to(x.dtype)
    theta = torch.deg2rad(angles.to(x.device).float().view(-1, 1))
    shift_x = torch.ceil(taps * torch.cos(theta) - 0.5).long()  # ImageMagick's rounding
    shift_y = torch.ceil(taps * torch.sin(theta) - 0.5).long()
    batch, channels, height, width_px = x.shape
    pad = width - 1  # edge pixels repeated as far as the longest shift reaches
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate").reshape(batch, channels, -1)
    stride = width_px + 2 * pad
    rows = torch.arange(height, device=x.device)[:, None] + pad
    cols = torch.arange(width_px, device=x.device)[None, :] + pad
    pixels = (rows * stride + cols).view(1, 1, -1)
    index = pixels + (shift_y * stride + shift_x)[:, :, None]  # (N, taps, H*W) into the padded image
    out = torch.empty(batch, channels, height * width_px, device=x.device, dtype=x.dtype)
    chunk = max(1, 2**24 // (channels * width * height * width_px))  # bounds the gathered copies' memory
    for start in range(0, batch, chunk):
        part = index[start : start + chunk]
        taken = padded[start : start + chunk].gather(2, part.reshape(len(part), 1, -1).expand(-1, channels, -1))
        out[start : start + chunk] = weights @ taken.view(len(part), channels, width, -1)
    return out.view_as(x)


def motion_blur(x, level, random, table):
    radius, sigma = table.motion_blur[level]
    scale = table.scale(*x.shape[-2:])
    angles = random.uniform(1, low=-45, high=45).view(-1)
    return motion_blur_lines(x, radius * scale, sigma * scale, angles)  # truncated to 8 bits, as ImageMagick's


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` zoomed ``factor`` times as the published ``clipped_zoom``: see ``crop_zoom_matrix``."""
    rows = crop_zoom_matrix(x.shape[-2], float(factor)).to(x.device, x.dtype)
    cols = crop_zoom_matrix(x.shape[-1], float(factor)).to(x.device, x.dtype)
    return rows @ x @ cols.T


@functools.lru_cache(maxsize=512)
def crop_zoom_matrix(size: int, factor: float) -> torch.Tensor:
    """(size, size) weights of the published zoom along one axis: crop ceil(size / factor)
    pixels starting (size - crop) // 2, zoom them with ``scipy.ndimage.zoom`` (order 1: to
    round(crop * factor) pixels, output pixel j read at j * (crop - 1) / (zoomed - 1), the
    corners aligned), keep ``size`` pixels from (zoomed - size) // 2."""
    crop = math.ceil(size / factor)
    top = (size - crop) // 2
    zoomed = int(round(crop * factor))
    trim = (zoomed - size) // 2
    ratio = (crop - 1) / (zoomed - 1) if zoomed > 1 else 0.0
    source = (torch.arange(trim, trim + size, dtype=torch.float64) * ratio).clamp(0, crop - 1)
    low = source.floor().long().clamp(max=max(crop - 2, 0))
    share = source - low
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix[torch.arange(size), top + low] = 1 - share
    if crop > 1:
        matrix[torch.arange(size), top + low + 1] += share
    return matrix


def zoom_blur(x, level, random, table):
    bound, step = table.zoom_blur[level]
    zooms = np.arange(1, bound, step).tolist()  # np.arange as published: its rounding can keep the bound
    out = x.clone()
    for factor in zooms:
        out += clipped_zoom(x, factor)
    return out / (len(zooms) + 1)


# ---------------------------------------------------------------- weather


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)  # OpenCV's RGB2GRAY


def snow(x, level, random, table):
    mean, std, zoom, threshold, radius, sigma, kept = table.snow[level]
    scale = table.scale(*x.shape[-2:])
    flakes = random.normal(1, *x.shape[-2:]).double() * std + mean
    angles = random.uniform(1, low=-135, high=-45).view(-1)
    flakes = clipped_zoom(flakes, zoom)
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes)
    flakes = ((flakes.clamp(0, 1) * 255).floor() / 255).to(x.dtype)  # an 8-bit PNG for ImageMagick (astype: truncated)
    flakes = _truncated(motion_blur_lines(flakes, radius * scale, sigma * scale, angles))
    x = kept * x + (1 - kept) * torch.maximum(x, _grey(x) * 1.5 + 0.5)
    return x + flakes + flakes.flip(-1, -2)


def plasma_fractal(count: int, size: int, decay: float, uniform: torch.Tensor) -> torch.Tensor:
    """Diamond-square height maps (count, size, size) in [0, 1] on a torus, ``size`` a power
    of two; ``uniform`` (count, >= size*size) holds each map's draws in [-1, 1). As the
    published ``plasma_fractal``: the noise starts at 100^2 and shrinks by decay^2 per level."""
    maps = torch.zeros(count, size, size, device=uniform.device, dtype=uniform.dtype)
    step, wibble, used = size, 100.0, 0

    def noise(shape):
        nonlocal used
        values = uniform[:, used : used + shape[0] * shape[1]].view(count, *shape)
        used += shape[0] * shape[1]
        return wibble * wibble * values

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        maps[:, half::step, half::step] = squares / 4 + noise(squares.shape[1:])
        centres, corners = maps[:, half::step, half::step], maps[:, 0::step, 0::step]
        left = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        maps[:, 0::step, half::step] = left / 4 + noise(left.shape[1:])
        top = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        maps[:, half::step, 0::step] = top / 4 + noise(top.shape[1:])
        step, wibble = half, wibble / decay
    maps -= maps.amin((1, 2), keepdim=True)
    return maps / maps.amax((1, 2), keepdim=True).clamp_min(1e-12)


def _fractal(x: torch.Tensor, decay: float, uniform: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2:]
    size = 1 << max(1, math.ceil(math.log2(max(height, width))))  # 32 for CIFAR, 64 for Tiny, 256 for ImageNet
    return plasma_fractal(len(x), size, decay, uniform[:, : size * size])[:, None, :height, :width]


def _fractal_draws(x: torch.Tensor, random: ImageRandom) -> torch.Tensor:
    size = 1 << max(1, math.ceil(math.log2(max(x.shape[-2:]))))
    return random.uniform(size * size, low=-1.0, high=1.0)


def fog(x, level, random, table):
    strength, decay = table.fog[level]
    brightest = x.amax((1, 2, 3), keepdim=True)
    x = x + strength * _fractal(x, decay, _fractal_draws(x, random))
    return x * brightest / (brightest + strength)


# The published frost photographs (the generators pick among the first five), as the
# imagecorruptions package ships them, and their SHA-256.
FROST_PHOTOGRAPHS = {
    "frost1.png": "ff9f907860bd7a835d459e32f9d588062b7f61ee267343cc7222b56753a14755",
    "frost2.png": "fe211a89b336999c207a852ce05818d4545d0b57c5beadd824b4cc9d9a9b6137",
    "frost3.png": "2d0d50b4a9bb213f38b024ef7768731bb83cc08d2f26b5766bbc167cdfa0e504",
    "frost4.jpg": "3f8b91ca1a9fa7167b09e773da53f5ae60d0a1fd88f02a783f6e328a72887f6e",
    "frost5.jpg": "5fc6a19df4a429ba68abdcc8f8a4278d4c9f81c9ccafd2c92ab0c8cf8992ebd2",
}
FROST_STAND_IN = f"generated stand-in (for the published photographs: {install_hint('corruptions')})"


@functools.lru_cache(maxsize=1)
def _frost_folder() -> tuple[Path | None, str]:
    """The imagecorruptions package's frost/ folder (found, not imported: its import needs
    OpenCV) when it holds the five photographs with the published digests, and why not."""
    try:
        spec = importlib.util.find_spec("imagecorruptions")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, "the imagecorruptions package is not installed"
    folder = Path(list(spec.submodule_search_locations)[0]) / "frost"
    for name, digest in FROST_PHOTOGRAPHS.items():
        path = folder / name
        if not path.is_file():
            return None, f"{path} is missing"
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return None, f"{path} is not the published photograph (its SHA-256 differs)"
    return folder, ""


def frost_source() -> str:
    """Which frost the corruption blends: the published photographs, or the stand-in."""
    folder, why = _frost_folder()
    if folder is None:
        return FROST_STAND_IN
    try:
        from importlib.metadata import version

        return f"photographs (imagecorruptions {version('imagecorruptions')})"
    except Exception:
        return "photographs (imagecorruptions)"


@functools.lru_cache(maxsize=8)
def frost_photographs(scale: float) -> tuple[torch.Tensor, ...] | None:
    """The five photographs as uint8 (3, h, w), resized by ``scale`` as OpenCV's
    ``resize(fx=scale, fy=scale)`` (bilinear, pixel centres at k + 0.5, no anti-aliasing),
    or None where they are not installed."""
    folder, why = _frost_folder()
    if folder is None:
        logger.info("frost: %s; the generated stand-in is used", why)
        return None
    photos = []
    for name in FROST_PHOTOGRAPHS:
        with Image.open(folder / name) as picture:
            pixels = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1).double()
        if scale != 1.0:
            rows = _bilinear_matrix(pixels.shape[1], scale)
            cols = _bilinear_matrix(pixels.shape[2], scale)
            pixels = (rows @ pixels @ cols.T).round()
        photos.append(pixels.clamp(0, 255).to(torch.uint8))
    return tuple(photos)


def _bilinear_matrix(size: int, scale: float) -> torch.Tensor:
    """(round(size * scale), size) weights of OpenCV's INTER_LINEAR along one axis."""
    out = max(1, int(round(size * scale)))
    source = ((torch.arange(out, dtype=torch.float64) + 0.5) / scale - 0.5).clamp(0, size - 1)
    low = source.floor().long().clamp(max=max(size - 2, 0))
    share = source - low
    matrix = torch.zeros(out, size, dtype=torch.float64)
    matrix[torch.arange(out), low] = 1 - share
    if size > 1:
        matrix[torch.arange(out), low + 1] += share
    return matrix


def frost_layer(x: torch.Tensor, random: ImageRandom, table: ParameterTable) -> torch.Tensor:
    """Per image, a crop the size of ``x`` of one of the first five frost photographs
    (resized by the table's scale), in [0, 1]; grey for one-channel images. The stand-in
    (``frost_texture``) where the photographs are not installed."""
    height, width = x.shape[-2:]
    scale = table.frost_scale * table.scale(height, width)
    photos = frost_photographs(round(scale, 6))
    if photos is not None and any(p.shape[1] <= height or p.shape[2] <= width for p in photos):
        # an image wider than a photograph: enlarge them all until the widest image fits
        need = max(max((height + 1) / p.shape[1], (width + 1) / p.shape[2]) for p in photos)
        photos = frost_photographs(round(scale * need * 1.1, 6))
    if photos is None:
        return frost_texture(x, random)
    choice = random.integers(0, len(photos), 1).view(-1).tolist()
    where = random.uniform(2).cpu()
    crops = []
    for index, (u, v) in zip(choice, where.tolist()):
        photo = photos[index]
        top = int(u * (photo.shape[1] - height))  # np.random.randint(0, h - 32): the last offset is never drawn
        left = int(v * (photo.shape[2] - width))
        crops.append(photo[:, top : top + height, left : left + width])
    layer = torch.stack(crops).to(x.device, x.dtype) / 255
    return _grey(layer) if x.shape[1] == 1 else layer


def frost_texture(x: torch.Tensor, random: ImageRandom) -> torch.Tensor:
    """The stand-in for the frost photographs (when they are not installed): a bluish-white
    layer in [0, 1] the size of ``x``: a plasma-fractal haze (the uneven thickness of the
    ice) and needles (sparse seeds drawn out into short streaks, both ways, along three
    directions 60 degrees apart as ice crystals grow, at a random rotation per image),
    brighter where the haze is thick. Lengths follow the image side. Its mean is about 0.45;
    it is not fitted to the photographs, and its errors are not comparable with CIFAR-10-C's."""
    side = min(x.shape[-2:])
    haze = _fractal(x, 1.6, _fractal_draws(x, random))
    seeds = (random.uniform(1, *x.shape[-2:]) < 0.08).float() * random.uniform(1, *x.shape[-2:], low=0.3, high=1.0)
    rotation = random.uniform(1, low=0.0, high=60.0).view(-1)
    length = max(2.0, 0.06 * side)
    needles = torch.zeros_like(haze)
    for direction in (0.0, 60.0, 120.0):
        for turn in (0.0, 180.0):
            needles = needles + motion_blur_lines(seeds, length, length / 2, rotation + direction + turn)
    needles = needles / needles.amax((1, 2, 3), keepdim=True).clamp_min(1e-6)
    ice = (0.15 + 0.4 * haze + 1.2 * needles * (0.4 + haze)).clamp(0, 1)
    if x.shape[1] == 1:
        return ice
    tint = torch.tensor([0.85, 0.93, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # ice is bluish
    return ice * tint


def frost(x, level, random, table):
    image_weight, frost_weight = table.frost[level]
    return image_weight * x + frost_weight * frost_layer(x, random, table)


def brightness(x, level, random, table):
    """HSV value + c, hue and saturation kept (scikit-image's rgb2hsv / hsv2rgb): every channel
    scales by V'/V, a grey pixel becomes V' itself (a black one turns grey). In float64, as
    published: 0.2 above some levels lands a hair under the next one, which truncation sees."""
    pixels = _exact_levels(x)
    value = pixels.amax(1, keepdim=True)
    brighter = (value + table.brightness[level]).clamp(max=1.0)
    grey = pixels.amin(1, keepdim=True) == value
    out = torch.where(grey, brighter.expand_as(pixels), pixels * brighter / value.clamp_min(1e-12))
    return out  # float64, for ``to_8_bits``


# ---------------------------------------------------------------- digital


def contrast(x, level, random, table):
    means = x.mean((2, 3), keepdim=True)
    return (x - means) * table.contrast[level] + means


def elastic_transform(x, level, random, table):
    """A random affine warp (three points around the centre moved by up to ``affine``
    pixels; OpenCV's warpAffine, border reflect-101), then a smooth random displacement
    field (uniform noise blurred by ``sigma`` with SciPy's reflected border, times
    ``alpha``; SciPy's map_coordinates, border mirrored about the edge). Both bilinear."""
    batch, _, height, width = x.shape
    alpha, sigma, affine = (value * table.scale(height, width) for value in table.elastic_transform[level])
    side = min(height, width)
    jitter = random.uniform(3, 2, low=-1.0, high=1.0)
    fields = random.uniform(2, height, width, low=-1.0, high=1.0)
    rows = torch.arange(height, device=x.device, dtype=x.dtype)
    cols = torch.arange(width, device=x.device, dtype=x.dtype)
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    if side >= 3:
        centre_x, centre_y, reach = width // 2, height // 2, side // 3
        before = torch.tensor([[centre_x + reach, centre_y + reach], [centre_x + reach, centre_y - reach],
                               [centre_x - reach, centre_y - reach]], device=x.device, dtype=x.dtype)
        after = before + affine * jitter
        # The map from each output point back to its source: it takes the moved points to the old ones.
        homogeneous = torch.cat([after, torch.ones(batch, 3, 1, device=x.device, dtype=x.dtype)], 2)
        inverse = torch.linalg.solve(homogeneous.double(), before.double().expand(batch, 3, 2)).to(x.dtype)
        points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], -1).view(1, -1, 3)
        source = (points @ inverse).view(batch, height, width, 2)
        x = _sample(x, source[..., 0], source[..., 1], about_edge_pixels=True)
    if alpha > 0:
        shift = gaussian_blur(fields.double(), sigma, truncate=3.0, mode="reflect").to(x.dtype) * alpha
        x = _sample(x, grid_x + shift[:, 0], grid_y + shift[:, 1], about_edge_pixels=False)
    return x


def _sample(x: torch.Tensor, source_x: torch.Tensor, source_y: torch.Tensor, about_edge_pixels: bool) -> torch.Tensor:
    """``x`` read bilinearly at pixel coordinates, the border mirrored about the edge pixels'
    centres (OpenCV's reflect-101) or about the image's edge (SciPy's "reflect")."""
    height, width = x.shape[-2:]
    if about_edge_pixels:
        grid = torch.stack([2 * source_x / max(width - 1, 1) - 1, 2 * source_y / max(height - 1, 1) - 1], -1)
    else:
        grid = torch.stack([(2 * source_x + 1) / width - 1, (2 * source_y + 1) / height - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=about_edge_pixels)


@functools.lru_cache(maxsize=64)
def box_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) weights of Pillow's BOX resampling along one axis: each output
    pixel averages the input pixels whose centres fall in its footprint (upscaling: nearest)."""
    scale = size_in / size_out
    support = 0.5 * max(scale, 1.0)
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    for out in range(size_out):
        centre = (out + 0.5) * scale
        low, high = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), size_in)
        for source in range(low, high):
            offset = (source - centre + 0.5) / max(scale, 1.0)
            matrix[out, source] = 1.0 if -0.5 < offset <= 0.5 else 0.0
        matrix[out] /= matrix[out].sum().clamp_min(1e-12)
    return matrix.float()


def pixelate(x, level, random, table):
    """Pillow's BOX resize down to the kept share of the side and back, each pass rounded to 8 bits as Pillow's."""
    height, width = x.shape[-2:]
    small_h, small_w = max(1, int(height * table.pixelate[level])), max(1, int(width * table.pixelate[level]))
    small = box_resize_matrix(height, small_h).to(x.device) @ x @ box_resize_matrix(width, small_w).to(x.device).T
    small = _quantised(small)
    return _quantised(box_resize_matrix(small_h, height).to(x.device) @ small
                      @ box_resize_matrix(small_w, width).to(x.device).T)


def jpeg_compression(x, level, random, table):
    """Saved and read back as JPEG by Pillow at the published quality, as the published code does."""
    pixels = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            buffer, "JPEG", quality=table.jpeg_compression[level])
        decoded = np.asarray(Image.open(buffer))
        out.append(decoded[..., None] if decoded.ndim == 2 else decoded)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device).float() / 255


_FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}
