"""CIFAR-10 "python version" batches: data_batch_1..5 and test_batch, pickled dicts.

A pickle can run any code it names, so the batches are read with an unpickler
that only knows the handful of builtins and NumPy functions a CIFAR-10 batch
needs; anything else is refused before it is imported, let alone called.
"""

from __future__ import annotations

import codecs
import pickle
import re
from pathlib import Path

import numpy as np

from dlscale.data.guards import check_labels, names_a_file, require_memory, require_regular_file
from dlscale.data.splits import Splits, image_splits, split_arrays
from dlscale.errors import UserError

try:  # NumPy 2 moved its internals to numpy._core; pickles name either location
    from numpy._core import multiarray, numeric
except ImportError:  # NumPy 1.x
    from numpy.core import multiarray, numeric

SUBDIRECTORY = "cifar-10-batches-py"  # what cifar-10-python.tar.gz unpacks to
DATA_BATCH = re.compile(r"data_batch_(\d+)")
USE_ORIGINALS = "use the batches from cifar-10-python.tar.gz"

# Everything a CIFAR-10 batch may name: the original Python 2 files name
# numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype; re-pickled
# copies may use _codecs.encode (protocols 0-2) or _frombuffer (protocol 5).
BUILTINS = {"dict": dict, "list": list, "bytes": bytes, "str": str, "int": int}
ALLOWED = {
    **{("builtins", name): obj for name, obj in BUILTINS.items()},
    **{("__builtin__", name): obj for name, obj in BUILTINS.items()},  # the Python 2 spelling
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
}


def find_cifar_dir(path: Path) -> Path | None:
    """The directory holding the batches: path itself or its cifar-10-batches-py/; None if neither has any."""
    for directory in (path, path / SUBDIRECTORY):
        if directory.is_dir() and (_data_batches(directory) or names_a_file(directory / "test_batch")):
            return directory
    return None


def load_cifar(directory: Path, name: str) -> Splits:
    """data_batch_* give a fixed 90/10 train/val split and test_batch the test set (or 80/10/10 without it)."""
    batches = _data_batches(directory)
    if not batches:
        raise UserError(f"{directory} has a CIFAR-10 test_batch but no data_batch_1..5; add the training batches")
    test_batch = directory / "test_batch"
    files = batches + ([test_batch] if names_a_file(test_batch) else [])
    # Unpickling holds each file's bytes about twice, then come a joined copy, a split copy and float32 pixels.
    require_memory(
        8 * sum(path.stat().st_size for path in files),
        f"the CIFAR-10 batches in {directory}",
        "use a machine with more memory or fewer batches",
    )
    parts = [read_batch(path) for path in batches]
    images = np.concatenate([x for x, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    if len(labels) == 0:
        raise UserError(f"the data_batch files in {directory} hold no images; {USE_ORIGINALS}")
    if test_batch in files:
        train, val, _ = split_arrays(images, labels, val_pct=10, test_pct=0)
        test = read_batch(test_batch)
    else:
        train, val, test = split_arrays(images, labels, val_pct=10, test_pct=10)
    num_classes = max(int(pair[1].max()) for pair in (train, val, test) if pair is not None) + 1
    return image_splits(name, train, val, test, num_classes)


def _data_batches(directory: Path) -> list[Path]:
    """data_batch_<n> files in numeric order."""
    # names_a_file, not is_file: a FIFO named data_batch_1 is refused by name when read, not skipped
    matches = ((DATA_BATCH.fullmatch(p.name), p) for p in directory.iterdir())
    found = [(int(m.group(1)), p) for m, p in matches if m and names_a_file(p)]
    return [p for _, p in sorted(found)]


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")  # the originals are Python 2 pickles with byte-string keys
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        raise UserError(
            f"{self.path} is not a CIFAR-10 batch: it asks to load {module}.{name}, which CIFAR-10 files never do "
            f"(refused, nothing was run); {USE_ORIGINALS}"
        )


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from one batch file."""
    require_regular_file(path)
    try:
        with open(path, "rb") as file:
            batch = _RestrictedUnpickler(file, path).load()
    except UserError:
        raise
    except Exception as error:  # a broken pickle can fail in many ways (UnpicklingError, EOFError, ValueError, ...)
        reason = f"{type(error).__name__}: {error}"
        raise UserError(f"{path} is not a CIFAR-10 batch ({reason}); {USE_ORIGINALS}") from None

    def bad(reason: str) -> UserError:
        return UserError(f"{path} is not a CIFAR-10 batch: {reason}; {USE_ORIGINALS}")

    if not isinstance(batch, dict):
        raise bad(f"it holds a {type(batch).__name__}, not a dict")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise bad("it has no 'data' and 'labels' entries")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise bad("'data' is not an N x 3072 uint8 array")
    try:
        labels = np.asarray(labels)
    except ValueError:  # a ragged list
        raise bad("'labels' is not a flat list of integers") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise bad(f"'labels' is not a list of {len(data)} integers")
    check_labels(labels, f"'labels' in {path}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major: reshape gives (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
