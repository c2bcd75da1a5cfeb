"""How a reader turned raw inputs into model inputs, recorded so that a trained model
takes raw inputs exactly as its training data took them (RUN/model.json, ``dlscale.load``).

A reader records one of four recipes in ``Splits.preprocess``:

- ``standardise``: arrays (digits, MNIST, CIFAR-10, .npz). uint8 pixels are scaled to
  [0, 1] (when the reader did that), values are multiplied by ``raw_scale`` (digits'
  0..16 pixels: 1/16), then each channel (feature, for tabular data) is standardised
  with the training set's mean and std.
- ``image_files``: an image folder. Each file is cropped to the center ``crop`` share
  of its shorter side (absent or None: the whole image), resized to ``size`` (width,
  height), converted to ``mode`` (L or RGB) and scaled from [0, 255] to [-1, 1].
- ``bytes``: text as byte-level tokens (UTF-8 bytes, vocabulary 256).
- ``token_ids``: ids of another tokenizer (vocabulary ``vocab_size``, e.g. GPT-2's 50257
  in a nanoGPT .bin). dlscale has no such tokenizer: the model takes ids, never text.

None (synthetic data, arrays given to ``fit``) means inputs are used as given.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from dlscale.data import images
from dlscale.errors import UserError

CHANNEL_COUNTS = (1, 3, 4)


def standardise(mean: np.ndarray, std: np.ndarray, *, uint8_pixels: bool, raw_scale: float = 1.0) -> dict[str, Any]:
    """The recipe of ``data.splits.image_splits``: per-channel statistics as plain lists."""
    return {
        "kind": "standardise",
        "uint8_pixels": bool(uint8_pixels),
        "raw_scale": float(raw_scale),
        "mean": [float(v) for v in np.ravel(mean)],
        "std": [float(v) for v in np.ravel(std)],
    }


def image_files(mode: str, size: tuple[int, int], crop: float | None = None) -> dict[str, Any]:
    return {"kind": "image_files", "mode": mode, "size": [int(size[0]), int(size[1])], "crop": crop}


def byte_tokens() -> dict[str, Any]:
    return {"kind": "bytes", "vocab_size": 256}


def token_ids(vocab_size: int) -> dict[str, Any]:
    """Token ids of a tokenizer dlscale does not have (a nanoGPT .bin): inputs are ids, never text."""
    return {"kind": "token_ids", "vocab_size": int(vocab_size)}


def decode_image(image: Image.Image, mode: str, size: tuple[int, int], crop: float | None = None) -> np.ndarray:
    """One opened image as the image-folder reader evaluates it: float32 (C, H, W) in [-1, 1]."""
    box = images.center_crop_box(*image.size, crop) if crop else None
    return pixels_to_input(images.decode(image, mode, size, box))


def pixels_to_input(pixels: np.ndarray | torch.Tensor) -> Any:
    """uint8 pixels as the model takes them: float32 in [-1, 1] (image folders deliver
    uint8 and the training device scales them, a quarter of the bytes to copy)."""
    if isinstance(pixels, torch.Tensor):
        return pixels.to(torch.float32) / 127.5 - 1.0
    return pixels.astype(np.float32) / 127.5 - 1.0


def encode_text(text: str) -> torch.Tensor:
    """Byte-level tokens of ``text``: its UTF-8 bytes as int64 ids."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)


def decode_tokens(ids: torch.Tensor | list[int]) -> str:
    """Text of byte-level tokens; bytes that are not valid UTF-8 become U+FFFD."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return bytes(int(v) for v in values).decode("utf-8", errors="replace")


def prepare_arrays(recipe: dict[str, Any] | None, x: Any, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A batch of raw samples (numpy, tensor or nested lists) as the model's float32
    (N, *input_shape) input. One sample without a batch dimension is taken as a batch of
    one; flat samples of the right size (digits' 64 pixels) and channels-last images are
    brought to ``input_shape``."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.dtype.kind not in "biuf":
        raise UserError(f"inputs must be numbers, got an array of dtype {array.dtype}")
    batch = _batched(array, input_shape)
    uint8 = batch.dtype == np.uint8
    values = batch.astype(np.float32)
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(1))[0])
        raise UserError(f"input sample {bad} holds non-finite values (NaN or inf); fix or drop it")
    if recipe is not None and recipe.get("kind") == "standardise":
        if uint8 and recipe["uint8_pixels"]:
            values /= 255
        values *= recipe["raw_scale"]
        shape = [1] * values.ndim
        shape[1] = values.shape[1]
        mean = np.asarray(recipe["mean"], np.float32)
        std = np.asarray(recipe["std"], np.float32)
        if len(mean) == values.shape[1]:
            values = (values - mean.reshape(shape)) / std.reshape(shape)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _batched(array: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """``array`` as (N, *input_shape): add the batch dimension, a lone channel, move
    channels first, or unflatten, whichever makes the shapes agree."""
    shape = tuple(input_shape)
    size = math.prod(shape)
    if array.shape == shape or (array.ndim == len(shape) - 1 and array.size == size):
        array = array[None]  # one sample
    if array.ndim == 1 and array.size == size:
        array = array[None]
    if array.ndim >= 1 and array.shape[1:] == shape:
        return array
    if len(shape) == 3:
        c, h, w = shape
        if array.shape[1:] == (h, w) and c == 1:
            return array[:, None]
        if array.shape[1:] == (h, w, c):  # channels last, as image libraries give them
            return array.transpose(0, 3, 1, 2)
    if array.ndim >= 2 and math.prod(array.shape[1:]) == size:
        return array.reshape(len(array), *shape)
    raise UserError(
        f"inputs of shape {tuple(array.shape)} do not fit the model, which takes samples of shape {shape} "
        f"(a batch: (N, {', '.join(map(str, shape))})); give samples shaped like the training data"
    )
