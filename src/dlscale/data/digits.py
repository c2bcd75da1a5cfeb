"""The built-in real data set: scikit-learn's 8x8 handwritten digits (1,797 images, no download)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from dlscale.data.splits import Splits, image_splits, split_arrays


def load_digits() -> Splits:
    """Digits as (1, 8, 8) images in a fixed 70/15/15 split, the same in every run."""
    images, target = read_digits()
    x = (images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # pixel values are 0..16 (recorded as raw_scale)
    train, val, test = split_arrays(x, target.astype(np.int64), val_pct=15, test_pct=15)
    return image_splits("digits", train, val, test, num_classes=10, raw_scale=1 / 16)


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 64 pixels and the label of every image, read straight from the CSV that
    scikit-learn ships: importing sklearn itself takes about a second, a third of a short
    run's start-up. Falls back to sklearn's own loader if the file has moved."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as handle:
                table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
            return table[:, :64], table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return bunch.data, bunch.target
