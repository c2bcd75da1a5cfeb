"""An .npz archive with arrays x (samples) and y, as np.savez writes it: integer y are class
labels; float y are regression targets, (N,) or (N, k), used as given.

x may be images (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3, 4},
or tabular (N, F). uint8 values are pixels and are scaled to [0, 1].
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dlscale.data.guards import check_labels, first_non_finite, require_memory
from dlscale.data.splits import Splits, image_splits, split_arrays
from dlscale.errors import UserError

CHANNEL_COUNTS = (1, 3, 4)
HOW_TO_SAVE = "save it with np.savez(path, x=samples, y=labels) (integer class labels, or float regression targets)"
# Memory per value, besides the array as loaded and its split's copy: x becomes float32, y int64.
CONVERTED_BYTES = {"x.npy": 4, "y.npy": 8}
READ_HEADER_1_0 = np.lib.format.read_array_header_1_0
READ_HEADER_2_0 = np.lib.format.read_array_header_2_0


def load_npz(path: Path, name: str) -> Splits:
    """A fixed 80/10/10 split of (x, y), standardised with train statistics."""
    x, y = _read_arrays(path)
    if x.dtype.kind not in "biuf":
        raise UserError(f"x in {path} has dtype {x.dtype}, not numbers; {HOW_TO_SAVE}")
    if y.dtype.kind not in "iuf":
        raise UserError(
            f"y in {path} has dtype {y.dtype}, neither integer class labels nor float targets; "
            "save y.astype(np.int64) for classes or y.astype(np.float32) for regression"
        )
    targets = "values" if y.dtype.kind == "f" else "classes"
    if y.ndim != 1 and not (targets == "values" and y.ndim == 2 and y.shape[1] > 0):
        raise UserError(
            f"y in {path} has shape {y.shape}; give one integer label per sample, shape (N,), "
            "or float regression targets of shape (N,) or (N, k)"
        )
    if len(x) != len(y):
        raise UserError(f"x in {path} has {len(x)} samples but y has {len(y)} labels; give one label per sample")
    if len(y) == 0:
        raise UserError(f"{path} holds no samples; {HOW_TO_SAVE}")
    if targets == "classes":
        check_labels(y, f"y in {path}")
    else:
        bad = first_non_finite(y)
        if bad is not None:
            raise UserError(
                f"y in {path} holds a non-finite target (NaN or inf) at sample {bad}; "
                "fix or drop those samples, e.g. keep = np.isfinite(y).reshape(len(y), -1).all(1); x, y = x[keep], y[keep]"
            )
    bad = first_non_finite(x)
    if bad is not None:
        raise UserError(
            f"x in {path} holds non-finite values (NaN or inf, or too large for float32) at sample {bad}; "
            "fix or drop those samples, e.g. keep = np.isfinite(x).reshape(len(x), -1).all(1); x, y = x[keep], y[keep]"
        )

    x = _channels_first(x, path)
    train, val, test = split_arrays(x, y, val_pct=10, test_pct=10)
    if targets == "values":
        return image_splits(name, train, val, test, num_classes=1 if y.ndim == 1 else y.shape[1], targets="values")
    return image_splits(name, train, val, test, num_classes=int(y.max()) + 1)


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # Checked first: np.load would treat any other file as a pickle, and a .npy as a single array.
    with open(path, "rb") as file:  # an OSError here reaches load_data, which reports it
        is_zip = zipfile.is_zipfile(file)
    if not is_zip:
        raise UserError(f"{path} is not a readable .npz file (not a zip archive); {HOW_TO_SAVE}")
    check_memory(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                found = sorted(archive.files)
                raise UserError(f"{path} has no array {' or '.join(missing)} (it has {found}); {HOW_TO_SAVE}")
            return archive["x"], archive["y"]
    except ValueError as error:
        if "allow_pickle" in str(error):  # NumPy refuses object arrays unless allowed to unpickle
            raise UserError(
                f"{path} holds Python objects, which dlscale does not unpickle; {HOW_TO_SAVE} of numeric arrays"
            ) from None
        raise UserError(f"{path} is not a readable .npz file ({error}); {HOW_TO_SAVE}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise UserError(f"{path} is not a readable .npz file ({error}); {HOW_TO_SAVE}") from None


def check_memory(path: Path) -> None:
    """Refuse arrays that cannot fit, from the sizes in their .npy headers, before NumPy allocates them."""
    needed = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for key in set(archive.namelist()) & {"x.npy", "y.npy"}:
                with archive.open(key) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = READ_HEADER_1_0 if version == (1, 0) else READ_HEADER_2_0  # 2.0 and 3.0
                    shape, _, dtype = read_header(member)
                needed += math.prod(shape) * (2 * dtype.itemsize + CONVERTED_BYTES[key])
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error):
        return  # a damaged archive: np.load reports it in its own words
    require_memory(needed, str(path), "use a machine with more memory or a smaller data set")


def _channels_first(x: np.ndarray, path: Path) -> np.ndarray:
    """x as (N, C, H, W) for images or (N, F) for tabular data."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        channels_last = x.shape[3] in CHANNEL_COUNTS and x.shape[1] not in CHANNEL_COUNTS
        return x.transpose(0, 3, 1, 2) if channels_last else x
    raise UserError(
        f"x in {path} has shape {x.shape}; give (N, F) features or images as (N, H, W), (N, C, H, W) or (N, H, W, C)"
    )
