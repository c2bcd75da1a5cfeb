"""Raw inputs, in the forms a user has them, as a batch the trained model takes: arrays
or tensors, image files and folders, an .npz file, or text for a language model. The
run's recorded preprocessing (``data.preprocess``) is applied, so inputs are given as the
training data was (digits' 0..16 pixels, MNIST's uint8, a photo file)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlscale.data import preprocess
from dlscale.data.guards import require_regular_file
from dlscale.data.imagefolder import IMAGE_SUFFIXES, image_files_in, read_image
from dlscale.data.npz import check_memory
from dlscale.errors import UserError


def is_path_like(value: Any) -> bool:
    return isinstance(value, Path) or (isinstance(value, str) and Path(value).suffix.lower() in IMAGE_SUFFIXES | {".npz"})


def model_inputs(spec: dict[str, Any], inputs: Any) -> tuple[torch.Tensor, list[str] | None]:
    """The batch for the model, and the file each sample came from (None for arrays)."""
    if spec["input_kind"] == "tokens":
        return token_inputs(inputs, spec.get("preprocess")), None
    paths = _paths(inputs)
    if paths is not None:
        return image_batch(spec, paths), [str(p) for p in paths]
    recipe = spec.get("preprocess")
    if recipe is not None and recipe.get("kind") == "image_files":
        values = np.asarray(inputs.numpy() if isinstance(inputs, torch.Tensor) else inputs)
        if values.dtype == np.uint8:  # pixels as an image library gives them: as the reader scaled them
            return torch.from_numpy(values.astype(np.float32) / 127.5 - 1.0).reshape(-1, *spec["input_shape"]), None
        return preprocess.prepare_arrays(None, values, tuple(spec["input_shape"])), None
    return preprocess.prepare_arrays(recipe, inputs, tuple(spec["input_shape"])), None


def _paths(inputs: Any) -> list[Path] | None:
    """Image files named by ``inputs`` (one path, a folder, or a list of them); None for arrays."""
    items = inputs if isinstance(inputs, (list, tuple)) and inputs and all(is_path_like(i) or isinstance(i, Path) for i in inputs) else None
    if items is None and (isinstance(inputs, Path) or is_path_like(inputs)):
        items = [inputs]
    if items is None and isinstance(inputs, str) and Path(inputs).is_dir():
        items = [inputs]
    if items is None:
        return None
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if not path.exists():
            raise UserError(f"input {item} does not exist; give image files, folders of images, or arrays")
        found = image_files_in(path)
        if path.is_dir() and not found:
            raise UserError(f"folder {item} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
    return files


def image_batch(spec: dict[str, Any], files: list[Path]) -> torch.Tensor:
    """Image files decoded for the model: as the image-folder reader decoded them, or, for
    a model trained on arrays (MNIST, CIFAR-10, digits), as pixels in [0, 1] standardised
    with the run's statistics."""
    shape = tuple(spec["input_shape"])
    if len(shape) != 3:
        raise UserError(f"the model takes samples of shape {shape}, not images; give arrays (an .npz or numbers)")
    channels, height, width = shape
    recipe = spec.get("preprocess") or {}
    if recipe.get("kind") == "image_files":
        mode, size, crop = recipe["mode"], tuple(recipe["size"]), recipe.get("crop")
        return torch.from_numpy(np.stack([read_image(f, mode, size, crop) for f in files]))
    if channels not in (1, 3):
        raise UserError(f"the model takes {channels}-channel inputs, which image files cannot give; give arrays")
    mode = "L" if channels == 1 else "RGB"
    unit = np.stack([(read_image(f, mode, (width, height)) + 1.0) / 2.0 for f in files])  # [0, 1] pixels
    if recipe.get("kind") == "standardise":
        unit_recipe = dict(recipe, uint8_pixels=False, raw_scale=1.0)  # already in [0, 1]
        return preprocess.prepare_arrays(unit_recipe, unit, shape)
    return torch.from_numpy(unit)


TOKEN_IDS_ONLY = "this model was trained on token ids of a tokenizer dlscale does not have; give token ids"


def token_inputs(inputs: Any, recipe: dict[str, Any] | None = None) -> torch.Tensor:
    """Text (one string or a list of equally long ones) or token ids as an int64 (B, T) batch.
    A model trained on another tokenizer's ids (recipe ``token_ids``) takes ids only, each
    below the recipe's vocabulary size."""
    if isinstance(inputs, str):
        inputs = [inputs]
    is_text = isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs)
    if is_text and recipe is not None and recipe.get("kind") == "token_ids":
        raise UserError(TOKEN_IDS_ONLY)
    if is_text:
        encoded = [preprocess.encode_text(t) for t in inputs]
        if any(len(e) == 0 for e in encoded):
            raise UserError("a prompt is empty; give at least one character")
        if len({len(e) for e in encoded}) > 1:
            raise UserError("prompts of different lengths: give one prompt at a time, or prompts of equal length in bytes")
        return torch.stack(encoded)
    ids = torch.as_tensor(np.asarray(inputs))
    if ids.is_floating_point() or ids.dim() not in (1, 2) or ids.numel() == 0:
        raise UserError("a language model takes text or integer token ids of shape (T,) or (B, T)")
    vocab = (recipe or {}).get("vocab_size")
    if vocab is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise UserError(f"token ids must be from 0 to {vocab - 1} (the model's vocabulary), got {int(ids.min())}..{int(ids.max())}")
    return ids.long().reshape(-1, ids.shape[-1])


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """x (and y, when present) of an .npz file, read without unpickling anything."""
    path = Path(path)
    require_regular_file(path, f"input {path}")
    try:
        with open(path, "rb") as handle:
            if not zipfile.is_zipfile(handle):
                raise UserError(f"{path} is not an .npz file (not a zip archive); save it with np.savez(path, x=...)")
        check_memory(path)  # a header may declare terabytes in a few bytes: refused before NumPy allocates
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise UserError(f"{path} has no array x (it has {sorted(archive.files)}); save it with np.savez(path, x=...)")
            return archive["x"], (archive["y"] if "y" in archive.files else None)
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(f"{path} holds Python objects or is damaged ({exc}); dlscale does not unpickle") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise UserError(f"{path} is not a readable .npz file ({exc})") from None
