"""The 15 common corruptions of CIFAR-10-C / ImageNet-C (Hendrycks & Dietterich, ICLR 2019)
at their 5 severities, generated on the fly on batches of image tensors.

``corrupt(images, name, severity, seed, indices)`` takes (N, C, H, W) pixels in [0, 1]
(float) or 0..255 (uint8), one or three channels, of any size, and returns the same dtype,
shape and device. The parameters are those of the published CIFAR-10-C generator
(``make_cifar_c.py`` in hendrycks/robustness), written for 32x32 images; on other sizes
every parameter that is a length in pixels (blur radii and sigmas, motion length, glass
shuffle distance) is multiplied by ``min(H, W) / 32``, and those that are fractions of the
image (elastic, pixelate, zoom, fog's fractal) follow the image by construction. So a
28x28 Fashion-MNIST image gets 0.875 times CIFAR's lengths, a 224x224 one 7 times (the
ImageNet-C parameters are a separate, larger table, not used here).

Randomness: each image draws from its own generator seeded by (seed, corruption, image
index), on the CPU whatever the device, so an image is corrupted the same way in any
batch, on any device, and every severity of one image reuses the same draws (common
random numbers: severity 5 is severity 1's noise, stronger, which keeps the severity
curve smooth).

Where it runs: noise addition, brightness, contrast, fog, pixelate, defocus, motion and
zoom blur, snow, frost and elastic are tensor ops on the images' device; shot noise
(``torch.poisson`` with per-image generators), glass blur (a sequential pixel shuffle)
and JPEG (Pillow, as published) run on the CPU.

Severity order: the published parameters make each severity harder for a classifier, but not
always farther from the clean image in pixels, and a few steps are equal (the tests check
each type in the distance it is monotone in): frost dims the image (weights 1 .. 0.75) as the
ice grows (0.2 .. 0.45), so it is monotone in decorrelation, not in absolute difference;
glass blur is monotone at the scale of its one-pixel shuffle (both images blurred), its
severities 1 and 2 nearly equal (sigma 0.05 and 0.25 both round to a one-tap kernel);
elastic trades a shrinking random affine warp for a growing elastic field, so its pixel
difference falls while its non-affine distortion rises; motion blur's severities 3 and 4
are equal (radius 6 and 8 at sigma 2 differ by taps under 1e-9), and snow's 2 and 3 hold
about as much snow.

Deviations from the published code, all deliberate:
- frost: the published corruption blends a crop of one of six frost photographs, which
  cannot ship; ``frost_texture`` generates a stand-in (a plasma-fractal haze with needle
  streaks, bluish-white), so frost errors are not comparable with CIFAR-10-C's.
- motion blur is ImageMagick's MotionBlurImage kernel (a one-sided Gaussian-weighted line
  of 2*ceil(radius)+1 taps at rounded offsets, edge pixels repeated), written as tensor ops.
- zooms (zoom blur, snow) resample about the centre with bilinear ``grid_sample`` rather
  than SciPy's crop-then-zoom; the elastic warp uses ``grid_sample`` with reflection.
"""

from __future__ import annotations

import functools
import io
import math
import zlib
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..errors import ReslabError

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
CATEGORIES = {"noise": CORRUPTIONS[0:3], "blur": CORRUPTIONS[3:7], "weather": CORRUPTIONS[7:11],
              "digital": CORRUPTIONS[11:15]}
ALIASES = {"elastic": "elastic_transform", "jpeg": "jpeg_compression", "glass": "glass_blur", "motion": "motion_blur",
           "zoom": "zoom_blur", "defocus": "defocus_blur", "gaussian": "gaussian_noise", "shot": "shot_noise",
           "impulse": "impulse_noise"}
SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIDE = 32  # CIFAR-10-C's parameters are for 32x32 images

# The published CIFAR-10-C parameters, one entry per severity 1..5.
GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # standard deviation
SHOT_NOISE = (500, 250, 100, 75, 50)  # photons per unit of intensity
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of values set to 0 or 1
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # disk radius, anti-alias sigma
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # sigma, shuffle distance, passes
MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # ImageMagick radius, sigma
ZOOM_BLUR = (1.06, 1.11, 1.16, 1.21, 1.26)  # zooms 1.00, 1.01, ... below this are averaged
SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
# (flake mean, flake std, zoom, threshold, motion radius, motion sigma, share of the image kept)
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # image weight, frost weight
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # fog strength, fractal decay
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to the HSV value
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor towards the channel mean
ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
# (displacement alpha, displacement sigma, affine jitter), as fractions of the image side
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # side kept by the box downsampling
JPEG_QUALITY = (80, 65, 58, 50, 40)


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
            indices: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """``images`` (N, C, H, W; C 1 or 3; float in [0, 1] or uint8) with corruption ``name``
    at ``severity`` (1..5); image k draws from the stream of (seed, name, indices[k])
    (default: its position in the batch). Same dtype, shape and device back."""
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
    pixels = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    random = ImageRandom(seed, name, indices, images.device)
    out = _FUNCTIONS[name](pixels, severity - 1, random).clamp_(0, 1)
    if images.dtype == torch.uint8:
        return out.mul_(255).round_().to(torch.uint8)
    return out.to(images.dtype)


def _scale(x: torch.Tensor) -> float:
    # Lengths grow with larger images, but never shrink below the published ones: they are a
    # pixel or two already, and the defocus disk of radius 1 shrunk to 0.875 would be one pixel.
    return max(1.0, min(x.shape[-2:]) / REFERENCE_SIDE)


# ---------------------------------------------------------------- noise


def gaussian_noise(x, level, random):
    return x + GAUSSIAN_NOISE[level] * random.normal(*x.shape[1:])


def shot_noise(x, level, random):
    photons = SHOT_NOISE[level]
    return (random.poisson(x * photons) / photons).to(x.device)


def impulse_noise(x, level, random):
    # salt and pepper on each value independently (skimage's random_noise, mode="s&p")
    hit = random.uniform(*x.shape[1:]) < IMPULSE_NOISE[level]
    salt = random.uniform(*x.shape[1:]) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


# ---------------------------------------------------------------- blur


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, padding: str = "replicate") -> torch.Tensor:
    """Separable Gaussian blur per channel, SciPy's kernel radius ``int(truncate * sigma + 0.5)``."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return x
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-taps.square() / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    if padding == "reflect" and radius >= min(x.shape[-2:]):
        padding = "replicate"  # reflection needs an image larger than the kernel's radius
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode=padding), kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1),
                 groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode=padding), kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1),
                    groups=channels)


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The published defocus kernel: an aliased disk, normalised, smoothed by OpenCV's 3x3
    Gaussian (5x5 past radius 8) of sigma ``alias_blur`` to anti-alias its edge."""
    size = 3 if radius <= 8 else 5
    half = int(math.floor(radius)) + size // 2
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = (taps[:, None].square() + taps[None, :].square() <= radius * radius).double()
    disk /= disk.sum()
    smooth = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2).square() / (2 * alias_blur ** 2))
    smooth = torch.outer(smooth, smooth) / smooth.sum() ** 2
    kernel = F.conv2d(disk[None, None], smooth[None, None], padding=size // 2)[0, 0]
    return (kernel / kernel.sum()).float()


def defocus_blur(x, level, random):
    radius, alias_blur = DEFOCUS_BLUR[level]
    kernel = disk_kernel(radius * _scale(x), alias_blur * _scale(x)).to(x.device)
    half = kernel.shape[0] // 2
    mode = "reflect" if half < min(x.shape[-2:]) else "replicate"  # OpenCV's default border, reflect-101
    channels = x.shape[1]
    return F.conv2d(F.pad(x, (half,) * 4, mode=mode), kernel.expand(channels, 1, -1, -1), groups=channels)


def glass_blur(x, level, random):
    """Blur, quantise, swap each pixel with a neighbour (a sequential shuffle, so a pixel
    can travel), blur again. The neighbour is drawn from [-d, d) as the published code does."""
    sigma, distance, passes = GLASS_BLUR[level]
    sigma *= _scale(x)
    distance = max(1, round(distance * _scale(x)))
    height, width = x.shape[-2:]
    rows, cols = range(height - distance, distance, -1), range(width - distance, distance, -1)
    steps = len(rows) * len(cols)
    offsets = random.integers(-distance, distance, max(p for _, _, p in GLASS_BLUR), steps, 2).numpy()
    # The published code truncates to 8 bits (np.uint8). A batch's convolution may round the last
    # bit differently from one image's, and truncation would turn that into another pixel value:
    # blurred in float64, and truncated 1e-6 of a level up, an image's pixels do not depend on its batch.
    blurred = gaussian_blur(x.double(), sigma)
    pixels = (blurred * 255 + 1e-6).clamp(0, 255).floor().to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).cpu().numpy().copy()
    images = np.arange(len(array))
    for sweep in range(passes):
        step = 0
        for h in rows:
            for w in cols:
                dy, dx = offsets[:, sweep, step, 0], offsets[:, sweep, step, 1]
                held = array[images, h, w].copy()
                array[images, h, w] = array[images, h + dy, w + dx]
                array[images, h + dy, w + dx] = held
                step += 1
    shuffled = torch.from_numpy(array).permute(0, 3, 1, 2).to(x.device).float() / 255
    return gaussian_blur(shuffled, sigma)


def motion_blur_lines(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's MotionBlurImage per image: the mean of 2*ceil(radius)+1 copies shifted
    by i pixels along the image's angle (degrees), weighted exp(-i^2 / 2 sigma^2); pixels
    beyond the edge repeat the edge."""
    width = 2 * math.ceil(radius) + 1 if radius > 0 else 3
    taps = torch.arange(width, device=x.device, dtype=torch.float32)
    weights = torch.exp(-taps.square() / (2 * sigma * sigma))
    weights = weights / weights.sum()
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


def motion_blur(x, level, random):
    radius, sigma = MOTION_BLUR[level]
    angles = random.uniform(1, low=-45, high=45).view(-1)
    return motion_blur_lines(x, radius * _scale(x), sigma * _scale(x), angles)


def zoom_centre(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` magnified ``factor`` times about its centre, cropped to its size (bilinear, edge
    pixels repeated), as two small matrix products: a zoom is separable."""
    rows = zoom_matrix(x.shape[-2], factor).to(x.device, x.dtype)
    cols = zoom_matrix(x.shape[-1], factor).to(x.device, x.dtype)
    return rows @ x @ cols.T


@functools.lru_cache(maxsize=256)
def zoom_matrix(size: int, factor: float) -> torch.Tensor:
    """(size, size) bilinear weights reading output pixel i at (i + 0.5) / factor + the
    offset that keeps the centre fixed (pixel centres at k + 0.5, as grid_sample's
    align_corners=False), clamped to the edge pixels."""
    source = (torch.arange(size, dtype=torch.float64) + 0.5 - size / 2) / factor + size / 2 - 0.5
    source = source.clamp(0, size - 1)
    low = source.floor().long().clamp(max=size - 2) if size > 1 else source.floor().long()
    share = source - low
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix[torch.arange(size), low] = 1 - share
    if size > 1:
        matrix[torch.arange(size), low + 1] += share
    return matrix.float()


def zoom_blur(x, level, random):
    # zooms 1.00, 1.01, ... up to the severity's bound, averaged with the image; np.arange as
    # published (its rounding keeps the bound itself at severities 1 and 2)
    zooms = np.arange(1, ZOOM_BLUR[level], 0.01).tolist()
    out = x.clone()
    for factor in zooms:
        out += zoom_centre(x, factor)
    return out / (len(zooms) + 1)


# ---------------------------------------------------------------- weather


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)  # OpenCV's RGB2GRAY


def snow(x, level, random):
    mean, std, zoom, threshold, radius, sigma, kept = SNOW[level]
    flakes = random.normal(1, *x.shape[-2:]) * std + mean
    angles = random.uniform(1, low=-135, high=-45).view(-1)
    flakes = zoom_centre(flakes, zoom) if zoom != 1 else flakes
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes)
    flakes = (flakes.clamp(0, 1) * 255).floor() / 255  # saved as an 8-bit PNG for ImageMagick
    flakes = motion_blur_lines(flakes, radius * _scale(x), sigma * _scale(x), angles)
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
    size = 1 << max(1, math.ceil(math.log2(max(height, width))))  # 32 for CIFAR (the published), 256 for 224
    return plasma_fractal(len(x), size, decay, uniform[:, : size * size])[:, None, :height, :width]


def _fractal_draws(x: torch.Tensor, random: ImageRandom) -> torch.Tensor:
    size = 1 << max(1, math.ceil(math.log2(max(x.shape[-2:]))))
    return random.uniform(size * size, low=-1.0, high=1.0)


def fog(x, level, random):
    strength, decay = FOG[level]
    brightest = x.amax((1, 2, 3), keepdim=True)
    x = x + strength * _fractal(x, decay, _fractal_draws(x, random))
    return x * brightest / (brightest + strength)


def frost_texture(x: torch.Tensor, random: ImageRandom) -> torch.Tensor:
    """The stand-in for the frost photographs (which cannot ship): a bluish-white layer in
    [0, 1] the size of ``x``: a plasma-fractal haze (the uneven thickness of the ice) and
    needles (sparse seeds drawn out into short streaks, both ways, along three directions
    60 degrees apart as ice crystals grow, at a random rotation per image), brighter where
    the haze is thick. Lengths follow the image side. Its mean is about 0.45; it is not
    fitted to the photographs."""
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


def frost(x, level, random):
    image_weight, frost_weight = FROST[level]
    return image_weight * x + frost_weight * frost_texture(x, random)


def brightness(x, level, random):
    # HSV value + c, hue and saturation kept: every channel scales by V'/V (a black pixel turns grey)
    value = x.amax(1, keepdim=True)
    brighter = (value + BRIGHTNESS[level]).clamp(max=1.0)
    return torch.where(value > 0, x * brighter / value.clamp_min(1e-12), brighter.expand_as(x))


# ---------------------------------------------------------------- digital


def contrast(x, level, random):
    means = x.mean((2, 3), keepdim=True)
    return (x - means) * CONTRAST[level] + means


def elastic_transform(x, level, random):
    """A random affine warp (three points around the centre moved by up to ``affine``
    pixels), then a smooth random displacement field (uniform noise blurred by ``sigma``,
    times ``alpha``); both resample bilinearly with reflected borders."""
    batch, _, height, width = x.shape
    side = min(height, width)
    alpha, sigma, affine = (value * side for value in ELASTIC[level])
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
        x = _sample(x, source[..., 0], source[..., 1])
    if alpha > 0:
        shift = gaussian_blur(fields, sigma, truncate=3.0, padding="reflect") * alpha
        x = _sample(x, grid_x + shift[:, 0], grid_y + shift[:, 1])
    return x


def _sample(x: torch.Tensor, source_x: torch.Tensor, source_y: torch.Tensor) -> torch.Tensor:
    """``x`` read at pixel coordinates (bilinear, borders reflected about the edge pixels)."""
    height, width = x.shape[-2:]
    grid = torch.stack([2 * source_x / max(width - 1, 1) - 1, 2 * source_y / max(height - 1, 1) - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


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


def pixelate(x, level, random):
    height, width = x.shape[-2:]
    small_h, small_w = max(1, int(height * PIXELATE[level])), max(1, int(width * PIXELATE[level]))
    rows = (box_resize_matrix(small_h, height) @ box_resize_matrix(height, small_h)).to(x.device)
    cols = (box_resize_matrix(small_w, width) @ box_resize_matrix(width, small_w)).to(x.device)
    return rows @ x @ cols.T


def jpeg_compression(x, level, random):
    """Saved and read back as JPEG by Pillow at the published quality, as the published code does."""
    pixels = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG",
                                                                                quality=JPEG_QUALITY[level])
        decoded = np.asarray(Image.open(buffer))
        out.append(decoded[..., None] if decoded.ndim == 2 else decoded)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device).float() / 255


_FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}
