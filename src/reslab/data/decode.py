"""Image files (or uploaded bytes) to uint8 tensors, the same way for training, evaluation,
prediction and the web page, so a model always sees the same pixels for the same file.

- Pillow is the default decoder (``data.decoder=auto``): it survives any file, raising an
  error reslab turns into a skipped, listed file. torchvision.io's decoder (opt-in,
  ``data.decoder=torchvision``) was faster here (1,220 against 942 JPEGs/s), but it
  segfaults on some malformed PNGs (an IDAT stream shorter than its header says), which
  kills a loader worker and with it the run: it is for data you trust.
- No image over ``MAX_PIXELS`` is decoded, whichever decoder: a 249 KB PNG can declare a
  16000x16000 canvas (768 MB of pixels). The size is read from the header first.
- EXIF orientation is applied everywhere (a phone photo is used as it is displayed).
"""

from __future__ import annotations

import io

import numpy as np
import torch

from ..config import CHOICES

DECODERS = tuple(name for name in CHOICES["data.decoder"] if name != "auto")
DEFAULT_DECODER = "pil"
MAX_PIXELS = 50_000_000


class BadImage(Exception):
    """A file that does not decode to an image (the message says why)."""


def decode(source: str | bytes, decoder: str = DEFAULT_DECODER, channels: int = 3) -> torch.Tensor:
    """The image in a file path or in ``bytes`` as uint8 (channels, H, W): RGB for 3 channels,
    grey for 1. Palette, CMYK and RGBA images come out as RGB (alpha dropped), 16-bit ones as
    8-bit. ``BadImage`` if it is no image, a damaged one or too large."""
    if decoder == "torchvision" and channels == 3:
        _check_size(source)  # before torchvision allocates the canvas
        from torchvision.io import ImageReadMode, decode_image

        try:
            data = source if isinstance(source, str) else torch.frombuffer(bytearray(source), dtype=torch.uint8)
            image = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except (RuntimeError, ValueError, OSError):
            return _decode_pil(source, channels)  # the formats it lacks (BMP, TIFF, PPM); Pillow names problems
        if image.dtype != torch.uint8:  # 16-bit PNGs
            image = (image.to(torch.int32) >> 8).to(torch.uint8)
        return image
    return _decode_pil(source, channels)


def _open(source: str | bytes):
    from PIL import Image

    try:
        return Image.open(source if isinstance(source, str) else io.BytesIO(source))
    except Image.DecompressionBombError as exc:  # Pillow's own limit, far above ours
        raise BadImage(f"image is larger than the {MAX_PIXELS:,} pixels accepted ({exc})") from None


def _check_size(source: str | bytes) -> None:
    try:
        with _open(source) as image:  # reads the header only
            _refuse_large(image)
    except BadImage:
        raise
    except Exception:  # noqa: BLE001  (not an image Pillow knows: let the decoder say)
        pass


def _refuse_large(image) -> None:
    if image.width * image.height > MAX_PIXELS:
        raise BadImage(f"image of {image.width}x{image.height} pixels is larger than the {MAX_PIXELS:,} pixels "
                       "accepted")


def _decode_pil(source: str | bytes, channels: int) -> torch.Tensor:
    from PIL import Image, ImageOps
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with _open(source) as image:
            _refuse_large(image)
            image = ImageOps.exif_transpose(image)  # loads the pixels
            if image.mode.startswith("I;16") or image.mode == "I":  # Pillow's conversion would clip at 255
                gray = torch.from_numpy((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
                return gray.expand(channels, -1, -1).contiguous()
            mode = "RGB" if channels == 3 else "L"
            return pil_to_tensor(image if image.mode == mode else image.convert(mode))
    except BadImage:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        if isinstance(exc, Image.UnidentifiedImageError):
            raise BadImage("not an image file Pillow can read (it cannot identify it as PNG, JPEG, BMP, GIF, "
                           "TIFF, WebP, ...)") from None
        if isinstance(exc, OSError) and exc.strerror:  # no such file, permission denied ...
            raise BadImage(exc.strerror) from None
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BadImage(f"damaged image data ({reason[:160]})") from None
