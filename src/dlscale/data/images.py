"""One image file to uint8 pixels at the size the model sees, cropped the way training
(random) or evaluation (center) asks.

Decoding is most of a photo pipeline's cost: a 500x375 JPEG takes milliseconds on one
core. Two things make it cheaper here:

- The crop and the resize are one Pillow call (``resize`` with a ``box``): no
  intermediate image is made for the crop.
- For JPEGs, Pillow's draft mode lets libjpeg-turbo scale by 1/2, 1/4 or 1/8 inside the
  inverse DCT. The smallest scale that still holds the crop at the output's resolution
  is asked for, so a 224-pixel crop of a 2000-pixel photo is decoded at 1/8 of the work,
  and a crop that needs every pixel is decoded whole.

The crops are torchvision's (the ImageNet recipe that ResNet results are quoted with):
RandomResizedCrop (8-100% of the area, aspect 3/4-4/3) with a horizontal flip for
training, and for evaluation the center square of 224/256 of the shorter side (resize to
256, center crop 224), both at the model's input size. The random numbers come from the
generator the caller seeds per sample and epoch, so a resumed run crops exactly the same.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

try:  # libjpeg-turbo through a thin binding: 1.2-1.4x Pillow's JPEG decode here (benchmarks/data_decoders.py)
    import simplejpeg
except ImportError:  # optional: Pillow decodes everything without it
    simplejpeg = None

Box = tuple[float, float, float, float]  # left, top, right, bottom in the image's pixels

CENTER_CROP = 224 / 256  # evaluation: the center square of this share of the shorter side
CROP_SCALE = (0.08, 1.0)  # training: the crop's share of the image's area
CROP_RATIO = (3 / 4, 4 / 3)  # training: the crop's aspect (width / height)
CROP_TRIES = 10  # random crops tried before falling back to the center, as torchvision
DECODERS = ("auto", "pillow", "pillow-full", "simplejpeg")  # auto: simplejpeg for JPEGs where it imports, else pillow
DIRECT_MODES = ("L", "RGB")  # modes resized as they are; others (palette, alpha, CMYK, 16-bit) are converted first


def random_crop_box(rng: np.random.Generator, width: int, height: int) -> Box:
    """RandomResizedCrop's box: a random share of the area at a random aspect, inside the image."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (left, top, left + w, top + h)
    # an image too long or too tall for every try: the whole of it at the nearest allowed aspect
    aspect = width / height
    if aspect < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif aspect > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def center_crop_box(width: int, height: int, fraction: float = CENTER_CROP) -> Box:
    """The centered square whose side is ``fraction`` of the shorter side."""
    side = fraction * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def decode(image: Image.Image, mode: str, size: tuple[int, int], box: Box | None = None, flip: bool = False,
           draft: bool = True) -> np.ndarray:
    """``image`` (opened, not yet loaded) cropped to ``box`` (all of it for None), resized to
    ``size`` (width, height), converted to ``mode`` ('L' or 'RGB'), mirrored when ``flip``:
    uint8 (C, H, W). ``draft=False`` decodes every pixel (``bench data`` shows the difference)."""
    width, height = image.size
    box = box or (0, 0, width, height)
    if draft and image.format == "JPEG":
        box = _draft(image, mode, size, box)
    if image.mode not in DIRECT_MODES:
        image = image.convert(mode)
    image = image.resize(size, Image.Resampling.BILINEAR, box=box)
    if image.mode != mode:  # a grey image for an RGB model, or the reverse: converted at the output's size
        image = image.convert(mode)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if image.mode == "L":
        return np.array(image)[None]  # a copy: writable, as torch wants
    return np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))


def _draft(image: Image.Image, mode: str, size: tuple[int, int], box: Box) -> Box:
    """Ask libjpeg for the smallest DCT scale that keeps ``box`` at least ``size``; the box
    in the drafted image's pixels."""
    width, height = image.size
    scale = min((box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1])  # > 1: the crop will be shrunk
    if scale < 2:
        return box
    image.draft(mode, (math.ceil(width / scale), math.ceil(height / scale)))
    sx, sy = image.size[0] / width, image.size[1] / height
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def fast_jpeg(data: bytes, decoder: str = "auto") -> bool:
    """Whether ``data`` goes to simplejpeg: a JPEG (SOI marker), simplejpeg importable, and
    the decoder auto or simplejpeg. It decodes only YCbCr and grey JPEGs: CMYK goes to Pillow."""
    if simplejpeg is None or decoder not in ("auto", "simplejpeg") or data[:2] != b"\xff\xd8":
        return False
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False  # broken: Pillow reports it with its reason
    return colorspace in ("YCbCr", "Gray")


def jpeg_size(data: bytes) -> tuple[int, int]:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return width, height


def decode_jpeg(data: bytes, mode: str, size: tuple[int, int], box: Box | None = None, flip: bool = False) -> np.ndarray:
    """``decode`` for a JPEG's bytes through simplejpeg: the DCT scaled down as draft mode
    does (the smallest scale that keeps the box at least ``size``), then Pillow's resize."""
    width, height = jpeg_size(data)
    box = box or (0, 0, width, height)
    scale = min((box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1])
    minimum = {"min_width": math.ceil(width / scale), "min_height": math.ceil(height / scale)} if scale >= 2 else {}
    pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if mode == "L" else "RGB", **minimum)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    image = Image.fromarray(pixels)
    sx, sy = image.size[0] / width, image.size[1] / height
    image = image.resize(size, Image.Resampling.BILINEAR, box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if image.mode == "L":
        return np.array(image)[None]
    return np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))
