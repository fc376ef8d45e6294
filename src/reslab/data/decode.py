"""Image files (or uploaded bytes) to uint8 tensors, the same way for training, evaluation,
prediction and the web page, so a model always sees the same pixels for the same file.

- ``data.decoder=auto`` (the default) decodes with TorchCodec where it is installed
  (``pip install -e '.[torchcodec]'``; JPEG, PNG, WebP, GIF), otherwise JPEGs with
  torchvision.io, and everything else, and whatever they cannot read, with Pillow. The
  names ``torchcodec``, ``torchvision`` and ``pil`` force one (Pillow still reads the
  formats the first two lack: BMP, TIFF, PPM). Speeds: benchmarks/data_loading.py.
- torchvision.io decodes JPEGs only, whichever name chose it: its PNG decoder crashes the
  process (SIGSEGV, right after libpng's "IDAT: incorrect data check") on a PNG whose IDAT
  fails its zlib data check or is shorter than the header promises, which kills a loader
  worker and the run, ``reslab predict`` or the ``reslab serve`` process. Under
  ``data.decoder=torchvision`` PNGs go to Pillow (the same pixels: PNG is lossless);
  TorchCodec and Pillow report such a file as damaged, and it is skipped and listed.
- No image over ``MAX_PIXELS`` is decoded, whichever decoder: a 249 KB PNG can declare a
  16000x16000 canvas (768 MB of pixels). The size is read from the header first.
- One EXIF policy: the orientation tag is applied whichever decoder ran (a phone photo is
  used as it is displayed): TorchCodec does it by itself, torchvision.io and Pillow are asked
  to; tests/test_data_files.py holds the three to the same pixels for all eight tags.
"""

from __future__ import annotations

import functools
import importlib.util
import io

import numpy as np
import torch

from ..config import CHOICES
from ..extras import missing_extra

DECODERS = tuple(name for name in CHOICES["data.decoder"] if name != "auto")
MAX_PIXELS = 50_000_000
JPEG_MAGIC = b"\xff\xd8\xff"


def resolve_decoder(name: str = "auto", strict: bool = True) -> str:
    """``auto`` -> ``torchcodec`` where it is installed, else ``torchvision-jpeg`` (torchvision.io
    for JPEGs, Pillow for the rest: see above); other names as they are. ``torchcodec`` where it
    is missing is an error when ``strict`` (a config asked for it), else ``auto``'s choice (a
    checkpoint trained elsewhere)."""
    has_torchcodec = importlib.util.find_spec("torchcodec") is not None
    if name == "torchcodec" and not has_torchcodec:
        if strict:
            raise missing_extra("data.decoder=torchcodec", "torchcodec", "or data.decoder=auto")
        name = "auto"
    if name != "auto":
        return name
    return "torchcodec" if has_torchcodec else "torchvision-jpeg"


DEFAULT_DECODER = "auto"
KNOWN_DECODERS = ("auto", *DECODERS, "torchvision-jpeg")  # the last: what auto means without TorchCodec


@functools.cache
def _resolved(decoder: str) -> str:
    """``resolve_decoder`` once per process and name: looking TorchCodec up took about a
    third of a small PNG's decode (40 of 115 us)."""
    return resolve_decoder(decoder, strict=False)


class BadImage(Exception):
    """A file that does not decode to an image (the message says why)."""


def decode(source: str | bytes, decoder: str = DEFAULT_DECODER, channels: int = 3) -> torch.Tensor:
    """The image in a file path or in ``bytes`` as uint8 (channels, H, W): RGB for 3 channels,
    grey for 1. Palette, CMYK and RGBA images come out as RGB (alpha dropped), 16-bit ones as
    8-bit. ``BadImage`` if it is no image, a damaged one or too large."""
    decoder = _resolved(decoder)
    # Grey images: Pillow's luma rounding, the one prediction on grey checkpoints always used.
    if decoder == "pil" or channels == 1 or (decoder.startswith("torchvision") and not _is_jpeg(source)):
        return _decode_pil(source, channels)  # never torchvision.io's PNG path: see above
    _check_size(source)  # refuses huge canvases before a decoder allocates them
    try:
        if decoder == "torchcodec":
            image = _decode_torchcodec(source, channels)
        else:
            image = _decode_torchvision(source, channels)
    except (RuntimeError, ValueError, OSError):
        return _decode_pil(source, channels)  # formats it lacks (BMP, TIFF, PPM); Pillow names the problem
    if image.dtype != torch.uint8:  # 16-bit PNGs
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def _is_jpeg(source: str | bytes) -> bool:
    if isinstance(source, bytes):
        return source[:3] == JPEG_MAGIC
    try:
        with open(source, "rb") as file:
            return file.read(3) == JPEG_MAGIC
    except OSError:
        return False  # Pillow will say why


def _decode_torchcodec(source: str | bytes, channels: int) -> torch.Tensor:
    from torchcodec.decoders import decode_image

    # EXIF orientation applied; 16-bit PNGs come as uint16, scaled below as the others scale them
    image = decode_image(source, mode="RGB" if channels == 3 else "GRAY", output_dtype="auto")
    return image[0] if image.dim() == 4 else image  # an animated GIF or WebP: its first frame


def _decode_torchvision(source: str | bytes, channels: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    data = source if isinstance(source, str) else torch.frombuffer(bytearray(source), dtype=torch.uint8)
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    return decode_image(data, mode=mode, apply_exif_orientation=True)


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
    except Exception:
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
