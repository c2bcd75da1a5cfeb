"""What a loaded data set looks like (DataSpec, Splits) and how arrays become splits.

Every reader ends here: it hands over NumPy arrays, this module splits them with a
fixed seed, scales and standardises images, and wraps them in TensorDatasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from dlscale.data import preprocess

# Real data is always split the same way, whatever --seed says, so that test
# accuracy from two runs is measured on the same samples.
SPLIT_SEED = 1797


@dataclass(frozen=True)
class DataSpec:
    """What the model would like; synthetic data is shaped by it, real data ignores it except seq_len for text."""

    kind: str  # "image" or "tokens"
    input_shape: tuple[int, ...]  # (C, H, W) for images, (seq_len,) for tokens
    num_classes: int  # number of classes, or vocabulary size for tokens


@dataclass
class Splits:
    """A loaded data set: what one sample looks like and the three splits."""

    name: str  # "digits", "synthetic", or the path as given
    kind: str  # "image" or "tokens"
    input_shape: tuple[int, ...]  # shape of one input sample
    num_classes: int  # classes (images) or vocabulary size (tokens)
    train: Dataset
    val: Dataset | None
    test: Dataset | None
    # What inference needs to take raw inputs as the reader took them (written to RUN/model.json):
    preprocess: dict | None = None  # see dlscale.data.preprocess; None: inputs are used as given
    class_names: tuple[str, ...] | None = None  # image folders: the class of each label
    targets: str = "classes"  # "classes" (integer labels, cross-entropy) or "values" (float regression targets, MSE)


def split_indices(n: int, val_pct: int, test_pct: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle 0..n-1 with SPLIT_SEED and cut it into train, val and test indices (each sorted)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_val = n * val_pct // 100
    n_test = n * test_pct // 100
    val, test, train = np.split(order, [n_val, n_val + n_test])
    return np.sort(train), np.sort(val), np.sort(test)


def split_arrays(x: np.ndarray, y: np.ndarray, val_pct: int, test_pct: int):
    """Split paired arrays into (x, y) pairs for train, val and test; an empty split is None."""
    return tuple((x[idx], y[idx]) if len(idx) else None for idx in split_indices(len(y), val_pct, test_pct))


def image_splits(
    name: str, train, val, test, num_classes: int, raw_scale: float = 1.0, targets: str = "classes"
) -> Splits:
    """Turn (x, y) array pairs into a Splits of TensorDatasets, standardised with train statistics.

    x is (N, C, H, W) or tabular (N, F); uint8 pixels are scaled to [0, 1] first,
    any other dtype is taken as already scaled. Val and test may be None. ``raw_scale``
    is what the reader already multiplied the raw values by (recorded, not applied). y holds
    class labels (int64), or with ``targets="values"`` regression targets (float32, used as
    given; ``num_classes`` is then the number of values per sample).
    """
    y_dtype = np.int64 if targets == "classes" else np.float32
    uint8_pixels = train[0].dtype == np.uint8
    train_x = _unit_float(train[0])
    mean, std = _channel_stats(train_x)

    def to_dataset(pair, x=None):
        if pair is None or len(pair[1]) == 0:
            return None
        x = _unit_float(pair[0]) if x is None else x
        x -= mean
        x /= std
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(pair[1].astype(y_dtype)))

    return Splits(
        name=name,
        kind="image",
        input_shape=tuple(train_x.shape[1:]),
        num_classes=int(num_classes),
        train=to_dataset(train, train_x),
        val=to_dataset(val),
        test=to_dataset(test),
        preprocess=preprocess.standardise(mean, std, uint8_pixels=uint8_pixels, raw_scale=raw_scale),
        targets=targets,
    )


def _unit_float(x: np.ndarray) -> np.ndarray:
    """A float32 copy of x, with uint8 pixels mapped from 0..255 to [0, 1]."""
    out = x.astype(np.float32)  # always a copy: standardising below works in place
    if x.dtype == np.uint8:
        out /= 255
    return out


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each channel (axis 1; each feature for tabular data), shaped to broadcast over x."""
    shape = [1] * x.ndim
    shape[1] = x.shape[1]
    mean = np.empty(x.shape[1], np.float64)
    std = np.empty(x.shape[1], np.float64)
    for c in range(x.shape[1]):  # one channel at a time keeps the float64 temporaries small
        mean[c] = x[:, c].mean(dtype=np.float64)
        std[c] = x[:, c].std(dtype=np.float64)
    std[std < 1e-8] = 1.0  # a constant channel stays constant (zero) instead of dividing by zero
    return mean.astype(np.float32).reshape(shape), std.astype(np.float32).reshape(shape)
