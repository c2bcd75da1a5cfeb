"""The built-in real data set: scikit-learn's 8x8 handwritten digits (1,797 images, no download)."""

from __future__ import annotations

import numpy as np

from dlscale.data.splits import Splits, image_splits, split_arrays


def load_digits() -> Splits:
    """Digits as (1, 8, 8) images in a fixed 70/15/15 split, the same in every run."""
    from sklearn.datasets import load_digits as sklearn_digits  # sklearn is slow to import; only pay when asked

    bunch = sklearn_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    train, val, test = split_arrays(x, y, val_pct=15, test_pct=15)
    return image_splits("digits", train, val, test, num_classes=10)
