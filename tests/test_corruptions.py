"""The 15 common corruptions (reslab.data.corruptions): each severity farther from the clean
image than the one before, in a distance that fits the corruption; dtype, shape and range
kept; the same corruption for the same (seed, image) whatever the batch; the published
parameters where an independent implementation can check them. The test images are crops
of scikit-learn's two bundled photographs: natural images, not a constant."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from reslab.data import corruptions
from reslab.data.corruptions import (
    CATEGORIES,
    CIFAR_10_C,
    CORRUPTIONS,
    IMAGENET_C,
    TINY_IMAGENET_C,
    ImageRandom,
    corrupt,
    corruption_names,
    crop_zoom_matrix,
    frost_layer,
    frost_photographs,
    frost_source,
    frost_texture,
    gaussian_blur,
    motion_blur_lines,
    neighbour_copies,
    parameter_table,
    severity_list,
)
from reslab.errors import ReslabError

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform"}
SHAPES = {"32x32x3": (3, 32), "28x28x1": (1, 28)}


def photographs(count: int, channels: int, side: int, seed: int = 0) -> torch.Tensor:
    from sklearn.datasets import load_sample_image

    pictures = [torch.from_numpy(np.array(load_sample_image(name))).permute(2, 0, 1).float() / 255
                for name in ("china.jpg", "flower.jpg")]
    generator = torch.Generator().manual_seed(seed)
    crops = []
    for index in range(count):
        picture = pictures[index % 2]
        size = int(torch.randint(160, 400, (1,), generator=generator))
        top = int(torch.randint(0, picture.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, picture.shape[2] - size + 1, (1,), generator=generator))
        crops.append(F.interpolate(picture[None, :, top:top + size, left:left + size], size=(side, side),
                                   mode="area"))
    images = torch.cat(crops).clamp(0, 1)
    if channels == 1:
        images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return images


@pytest.fixture(scope="module")
def clean():
    return {shape: photographs(12, channels, side) for shape, (channels, side) in SHAPES.items()}


@pytest.fixture(scope="module")
def corrupted(clean):
    """Every type at every severity, once, on both image sets."""
    return {(shape, name): [corrupt(images, name, severity) for severity in range(1, 6)]
            for shape, images in clean.items() for name in CORRUPTIONS}


def mean_absolute_difference(clean: torch.Tensor, other: torch.Tensor) -> float:
    return float((clean - other).abs().mean())


def decorrelation(clean: torch.Tensor, other: torch.Tensor) -> float:
    """1 - the mean Pearson correlation of each image with its clean self."""
    a, b = clean.flatten(1), other.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(1 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


def blurred_difference(clean: torch.Tensor, other: torch.Tensor) -> float:
    """The mean absolute difference at the scale of a pixel's neighbourhood (both blurred, sigma 1)."""
    return mean_absolute_difference(gaussian_blur(clean, 1.0), gaussian_blur(other, 1.0))


# The distance each corruption is monotone in. The published (CIFAR-10-C) parameters do not
# order every type by pixel difference:
# - frost weighs the image down (1, 1, 0.9, 0.85, 0.75) while the ice grows (0.2 .. 0.45): the
#   share of ice in the blend grows with severity, so the image's correlation with its clean
#   self falls, but a dimmer image can be closer in absolute difference;
# - glass blur shuffles pixels once (severities 1-3) or twice (4, 5) and blurs by sigma 0.05,
#   0.25, 0.4 (0.25, 0.4): compared at a pixel's scale (both blurred) the second pass moves
#   farther, while unblurred the extra blur smooths the shuffle's noise away.
# Elastic has a test of its own below.
DISTANCES = {"frost": decorrelation, "glass_blur": blurred_difference}
# Steps (severity s to s+1) that the published parameters make equal: they must be equal
# within the tolerance given, whichever way the draw falls.
TIES = {
    ("motion_blur", 3): (0.05, "radius 6 -> 8 at sigma 2 only adds taps weighing under 1e-9"),
    ("glass_blur", 1): (0.05, "sigma 0.05 and 0.25 both round to a one-tap Gaussian (the next tap weighs 3e-4)"),
    # The published "swap" copies a neighbour into each pixel (see reslab.data.corruptions): one
    # pass moves a pixel by one at most, so at one pass the only change is sigma 0.25 -> 0.4, or at
    # two passes sigma 0.25 -> 0.4, whose extra blur the blurred distance hardly sees.
    ("glass_blur", 2): (0.05, "one pass each; sigma 0.25 -> 0.4 (3e-4 -> 4e-2 for the next tap)"),
    ("glass_blur", 4): (0.05, "two passes each; sigma 0.25 -> 0.4"),
    ("snow", 2): (0.1, "severity 3's flakes, N(0.15, 0.3), are zoomed 1.75x before the 0.55 threshold, which "
                       "smooths them to about N(0.15, 0.2): about as much snow over the threshold as severity 2's "
                       "N(0.1, 0.2) over 0.5"),
    ("frost", 3): (0.1, "severity 4 dims the image (0.9 -> 0.85) under the same weight of ice (0.4): less of the "
                        "blend is cut at white, which offsets the larger share of ice"),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n != "elastic_transform"])
def test_each_severity_is_farther_from_the_clean_image(clean, corrupted, shape, name):
    distance = DISTANCES.get(name, mean_absolute_difference)
    values = [distance(clean[shape], image) for image in corrupted[(shape, name)]]
    assert values[0] > 0, f"{name} severity 1 left the images unchanged"
    for severity in range(1, 5):
        before, after = values[severity - 1], values[severity]
        if (name, severity) in TIES:
            assert abs(after - before) < TIES[(name, severity)][0] * before, (name, severity, values)
        else:
            assert after > before, (name, severity, values)
    assert values[4] > 1.3 * values[0], (name, values)


def warp_residual(source_x: torch.Tensor, source_y: torch.Tensor, margin: int) -> tuple[float, float]:
    """Fit an affine map to where each interior pixel was read from; return (RMS residual,
    RMS displacement of the affine part), in pixels."""
    height, width = source_x.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    inner = (slice(margin, height - margin), slice(margin, width - margin))
    design = torch.stack([cols[inner].flatten(), rows[inner].flatten(), torch.ones_like(cols[inner].flatten())], 1)
    residuals, shifts = [], []
    for sx, sy in zip(source_x, source_y):
        target = torch.stack([sx[inner].flatten(), sy[inner].flatten()], 1).double()
        solution = torch.linalg.lstsq(design, target).solution
        residuals.append((target - design @ solution).square().sum(1).mean())
        shifts.append((design @ solution - design[:, :2]).square().sum(1).mean())
    return float(torch.stack(residuals).mean().sqrt()), float(torch.stack(shifts).mean().sqrt())


def test_elastic_severity_grows_the_elastic_part_of_the_warp():
    """Elastic's published severities trade a random affine warp that shrinks (jitter 8% .. 3%
    of the side) for a smooth displacement field that grows (alpha 0 .. 10%, sigma 20% .. 3%):
    pixel distance falls with severity, the non-affine distortion rises. Corrupting coordinate
    ramps reveals where each pixel was read from (bilinear reads of a ramp are exact)."""
    side, count = 32, 6
    ramp = torch.linspace(0, 1, side)
    ramps = torch.stack([ramp.expand(side, side), ramp[:, None].expand(side, side), torch.full((side, side), 0.5)])
    ramps = ramps.expand(count, -1, -1, -1)
    residual, affine = [], []
    for severity in range(1, 6):
        warped = corrupt(ramps, "elastic_transform", severity)
        r, a = warp_residual(warped[:, 0] * (side - 1), warped[:, 1] * (side - 1), margin=8)
        residual.append(r)
        affine.append(a)
    assert residual[0] < 1e-3  # severity 1 is a pure affine warp
    assert all(after > before for before, after in zip(residual, residual[1:])), residual
    assert affine[0] > affine[4], affine  # the published trade


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_dtype_shape_and_range_are_kept(clean, name):
    images = clean["28x28x1"][:2]
    for dtype in (torch.float32, torch.float64):
        out = corrupt(images.to(dtype), name, 5)
        assert out.dtype == dtype and out.shape == images.shape
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    pixels = (clean["32x32x3"][:2] * 255).round().to(torch.uint8)
    out = corrupt(pixels, name, 2)
    assert out.dtype == torch.uint8 and out.shape == pixels.shape


def test_any_image_size_one_or_three_channels(clean):
    odd = F.interpolate(clean["32x32x3"][:1], size=(20, 27), mode="bilinear", align_corners=False)
    tiny = clean["28x28x1"][:1, :, ::4, ::4][:, :, :7, :7]  # digits are 8x8
    large = photographs(1, 3, 224, seed=3)
    for images in (odd, tiny, large):
        for name in CORRUPTIONS:
            out = corrupt(images, name, 3 if images is not large else 1)
            assert out.shape == images.shape and torch.isfinite(out).all(), (name, tuple(images.shape))
            assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_the_same_seed_and_image_give_the_same_corruption_in_any_batch(clean, name):
    images = clean["28x28x1"][:3]
    batch = corrupt(images, name, 4, seed=7, indices=[10, 11, 12])
    alone = corrupt(images[1:2], name, 4, seed=7, indices=[11])
    assert torch.allclose(batch[1:2], alone, atol=1e-6)  # a batch's kernels may round the last bit differently
    assert torch.equal(batch, corrupt(images, name, 4, seed=7, indices=[10, 11, 12]))
    if name in RANDOM:  # another image index, or another seed, draws other noise
        assert float((alone - corrupt(images[1:2], name, 4, seed=7, indices=[99])).abs().max()) > 0.01
        assert float((alone - corrupt(images[1:2], name, 4, seed=8, indices=[11])).abs().max()) > 0.01


def test_gaussian_noise_has_the_published_standard_deviations():
    grey = torch.full((4, 3, 32, 32), 0.5)
    for severity, sigma in enumerate(CIFAR_10_C.gaussian_noise, 1):
        assert float((corrupt(grey, "gaussian_noise", severity) - grey).std()) == pytest.approx(sigma, rel=0.05)


def test_impulse_noise_sets_the_published_share_of_values_to_black_or_white():
    grey = torch.full((4, 3, 32, 32), 0.5)
    out = corrupt(grey, "impulse_noise", 5)
    changed = out != 0.5
    assert float(changed.float().mean()) == pytest.approx(0.07, abs=0.01)
    assert set(out[changed].unique().tolist()) == {0.0, 1.0}


def test_brightness_adds_to_the_hsv_value_as_scikit_image_does(clean):
    from skimage.color import hsv2rgb, rgb2hsv

    images = clean["32x32x3"][:2]
    out = corrupt(images, "brightness", 5)
    for image, result in zip(images, out):
        hsv = rgb2hsv(image.permute(1, 2, 0).double().numpy())
        hsv[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)
        expected = np.clip(hsv2rgb(hsv), 0, 1)
        assert np.abs(result.permute(1, 2, 0).numpy() - expected).max() < 1e-5


def test_pixelate_is_pillows_box_resize_down_and_up(clean):
    pixels = (clean["32x32x3"][:2] * 255).round().to(torch.uint8)
    out = corrupt(pixels, "pixelate", 4)  # 75%: 32 -> 24 -> 32
    for image, result in zip(pixels, out):
        picture = Image.fromarray(image.permute(1, 2, 0).numpy())
        expected = np.asarray(picture.resize((24, 24), Image.BOX).resize((32, 32), Image.BOX)).astype(int)
        assert np.abs(result.permute(1, 2, 0).numpy().astype(int) - expected).max() <= 2  # Pillow rounds per pass


def test_contrast_pulls_each_channel_to_its_mean(clean):
    images = clean["32x32x3"][:2]
    out = corrupt(images, "contrast", 5)
    means = images.mean((2, 3), keepdim=True)
    assert torch.allclose(out, ((images - means) * 0.15 + means).clamp(0, 1), atol=1e-6)


def test_motion_blur_is_imagemagicks_one_sided_gaussian_line():
    dot = torch.zeros(1, 1, 9, 21)
    dot[0, 0, 4, 10] = 1.0
    out = motion_blur_lines(dot, radius=6, sigma=2, angles=torch.zeros(1))
    weights = torch.exp(-torch.arange(13.0).square() / 8)
    weights /= weights.sum()
    # a pixel reads the dot from i pixels to its right: the dot spreads leftwards, weight w_i at x = 10 - i
    assert torch.allclose(out[0, 0, 4, :11].flip(0), weights[:11], atol=1e-6)
    assert float(out[0, 0, 4, 11:].abs().sum()) == 0.0 and float(out[0, 0, :4].abs().sum()) == 0.0


def test_the_frost_stand_in_is_a_generated_texture():
    canvas = torch.zeros(3, 3, 64, 64)
    texture = frost_texture(canvas, ImageRandom(0, "frost", [0, 1, 2], canvas.device))
    assert texture.shape == canvas.shape
    assert 0.3 < float(texture.mean()) < 0.6 and float(texture.std()) > 0.08
    assert not torch.equal(texture[0], texture[1])  # one texture per image
    assert float(texture[:, 2].mean()) > float(texture[:, 0].mean())  # bluish


def test_frost_blends_crops_of_the_published_photographs():
    """The test extra installs imagecorruptions, whose wheel ships the photographs: CIFAR's
    frost is a 32x32 crop of one of the first five, resized to a fifth as OpenCV's
    INTER_LINEAR does (which at exactly 1/5 reads pixels 2, 7, 12, ...: no interpolation)."""
    assert frost_source().startswith("photographs")
    photos = frost_photographs(0.2)
    with Image.open(corruptions._frost_folder()[0] / "frost1.png") as picture:
        full = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(photos[0], full[:, 2::5, 2::5])
    canvas = torch.zeros(6, 3, 32, 32)
    layer = frost_layer(canvas, ImageRandom(0, "frost", range(6), canvas.device), CIFAR_10_C)
    pixels = (layer * 255).round().to(torch.uint8)
    for crop in pixels:
        assert any(bool((photo.unfold(1, 32, 1).unfold(2, 32, 1) == crop[:, None, None]).all(0).all(-1).all(-1).any())
                   for photo in photos), "a crop that is in no photograph"
    grey = frost_layer(canvas[:, :1], ImageRandom(0, "frost", range(6), canvas.device), CIFAR_10_C)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose(grey, (layer * weights).sum(1, keepdim=True), atol=1e-6)  # the same crops, grey


def test_without_the_photographs_frost_is_the_stand_in_and_says_so(monkeypatch):
    monkeypatch.setattr(corruptions, "_frost_folder", lambda: (None, "the imagecorruptions package is not installed"))
    corruptions.frost_photographs.cache_clear()
    try:
        assert frost_source().startswith("generated stand-in")
        canvas = torch.zeros(2, 3, 32, 32)
        random = ImageRandom(0, "frost", [0, 1], canvas.device)
        assert torch.equal(frost_layer(canvas, random, CIFAR_10_C),
                           frost_texture(canvas, ImageRandom(0, "frost", [0, 1], canvas.device)))
    finally:
        corruptions.frost_photographs.cache_clear()


def test_glass_blur_copies_neighbours_as_the_published_swap_does():
    """The published loop ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on a colour image's numpy
    rows: the right side holds views, so the neighbour's values are copied into the pixel and
    then copied back onto themselves. ``neighbour_copies`` does that sweep without a loop,
    for distances that make a pixel read one already written in the sweep (d = 2, 3)."""
    rng = np.random.default_rng(0)
    for distance, side in ((1, 12), (2, 12), (3, 15)):
        image = rng.integers(0, 256, (side, side, 3)).astype(np.float64)
        rows, cols = range(side - distance, distance, -1), range(side - distance, distance, -1)
        offsets = rng.integers(-distance, distance, (len(rows) * len(cols), 2))
        expected, step = image.copy(), 0
        for h in rows:
            for w in cols:
                dx, dy = offsets[step]
                expected[h, w], expected[h + dy, w + dx] = expected[h + dy, w + dx], expected[h, w]
                step += 1
        targets = torch.tensor([h * side + w for h in rows for w in cols])
        sources = targets + torch.from_numpy(offsets[:, 1] * side + offsets[:, 0])
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
        out = neighbour_copies(pixels, targets, sources[None])
        assert torch.equal(out[0].permute(1, 2, 0), torch.from_numpy(expected)), distance


def test_zooms_crop_then_zoom_with_scipy_as_published():
    """The published clipped_zoom: crop ceil(side / z) pixels from (side - crop) // 2, zoom them
    with scipy.ndimage.zoom (order 1), keep the middle; a zoom of 1.01 leaves 32 pixels as they are
    (round(32 * 1.01) = 32), and others pull the image towards its top-left."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(1)
    for side in (28, 32, 64, 224):
        image = rng.random((side, side))
        for factor in np.concatenate([np.arange(1, 1.31, 0.01), [1.75, 2.25, 4.5]]):
            crop = int(np.ceil(side / factor))
            top = (side - crop) // 2
            zoomed = zoom(image[top : top + crop, top : top + crop], factor, order=1)
            trim = (zoomed.shape[0] - side) // 2
            expected = zoomed[trim : trim + side, trim : trim + side]
            matrix = crop_zoom_matrix(side, float(factor)).numpy()
            assert np.abs(matrix @ image @ matrix.T - expected).max() < 1e-9, (side, factor)
    assert torch.equal(crop_zoom_matrix(32, 1.01), torch.eye(32, dtype=torch.float64))


def test_gaussian_blur_is_scipys_to_the_last_bit():
    """The published glass blur truncates a blurred image to 8 bits: SciPy's rounding decides
    levels, so the nearest-border blur sums as SciPy does; the reflected one (elastic's) is
    SciPy's for any radius, even one past the image."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (2, 24, 24)) / 255.0
    for sigma in (0.05, 0.25, 0.4, 1.5):
        expected = gaussian_filter(image, sigma=(0, sigma, sigma), mode="nearest")
        assert np.array_equal(gaussian_blur(torch.from_numpy(image)[None], sigma)[0].numpy(), expected), sigma
    for sigma in (0.96, 6.4, 30.0):
        expected = gaussian_filter(image, sigma=(0, sigma, sigma), mode="reflect", truncate=3)
        got = gaussian_blur(torch.from_numpy(image)[None], sigma, truncate=3, mode="reflect")[0].numpy()
        assert np.abs(got - expected).max() < 1e-12, sigma


def test_uint8_results_are_truncated_as_the_published_np_uint8():
    black = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    assert int(corrupt(black, "brightness", 1).max()) == 12  # 0.05 * 255 = 12.75, stored as 12
    flat = torch.full((1, 3, 32, 32), 100, dtype=torch.uint8)
    assert torch.equal(corrupt(flat, "pixelate", 3), flat) and torch.equal(corrupt(flat, "contrast", 2), flat)


def test_each_image_size_gets_its_published_table():
    assert parameter_table(28, 28) is CIFAR_10_C and parameter_table(32, 40) is CIFAR_10_C
    assert parameter_table(64, 64) is TINY_IMAGENET_C and parameter_table(224, 224) is IMAGENET_C
    assert parameter_table(299, 299) is IMAGENET_C
    grey = torch.full((2, 3, 224, 224), 0.5)
    assert float((corrupt(grey, "gaussian_noise", 1) - grey).std()) == pytest.approx(0.08, rel=0.05)  # CIFAR's 0.04
    image = photographs(1, 3, 224, seed=4)
    means = image.mean((2, 3), keepdim=True)
    assert torch.allclose(corrupt(image, "contrast", 1), (image - means) * 0.4 + means, atol=1e-6)  # CIFAR's 0.75
    assert IMAGENET_C.scale(224, 224) == 1.0 and CIFAR_10_C.scale(28, 28) == 1.0 and CIFAR_10_C.scale(40, 40) == 1.25
    pixelated = corrupt(image, "pixelate", 5, table=CIFAR_10_C)  # a table can be asked for
    assert not torch.allclose(pixelated, corrupt(image, "pixelate", 5))


def test_names_categories_and_severities_are_parsed_with_clear_errors():
    assert corruption_names("all") == list(CORRUPTIONS)
    assert corruption_names("noise,jpeg") == [*CATEGORIES["noise"], "jpeg_compression"]
    assert severity_list("1-5") == [1, 2, 3, 4, 5] and severity_list("5,1,3") == [1, 3, 5]
    with pytest.raises(ReslabError, match="did you mean gaussian_noise"):
        corruption_names("gausian_noise")
    for bad in ("0-2", "6", "a", ""):
        with pytest.raises(ReslabError, match="severities"):
            severity_list(bad)
    with pytest.raises(ReslabError, match="1 or 3 channels"):
        corrupt(torch.rand(1, 2, 8, 8), "fog", 1)
    with pytest.raises(ReslabError, match="severity"):
        corrupt(torch.rand(1, 1, 8, 8), "fog", 6)
    assert math.isclose(float(corrupt(torch.rand(0, 1, 8, 8), "fog", 1).numel()), 0.0)
