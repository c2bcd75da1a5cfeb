"""MNIST and Fashion-MNIST in their original IDX files (raw or .gz) in one directory.

IDX layout: a 4-byte big-endian magic number (0x00000803 for a 3-D array of
images, 0x00000801 for a 1-D array of labels), one big-endian uint32 per
dimension, then the uint8 values.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from dlscale.data.guards import names_a_file, require_memory, require_regular_file
from dlscale.data.splits import Splits, image_splits, split_arrays
from dlscale.errors import UserError
from dlscale.units import format_bytes

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
MAX_DEFLATE_RATIO = 1032  # deflate's most: one byte of gzip never holds more than this many bytes
# Memory per byte of file, in total, by the time the splits are built: the bytes read, the
# split's copy, then float32 pixels (4 bytes) or int64 labels (8 bytes).
LOAD_BYTES_PER_BYTE = {"images": 1 + 1 + 4, "labels": 1 + 1 + 8}


def find_idx_file(directory: Path, name: str) -> Path | None:
    """The file for a standard IDX name, raw or gzipped, or spelt 'train-images.idx3-ubyte' as some mirrors do."""
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        if names_a_file(directory / candidate):  # a FIFO under this name is refused when read, not skipped
            return directory / candidate
    return None


def is_idx_dir(directory: Path) -> bool:
    return any(find_idx_file(directory, name) for name in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS))


def load_idx(directory: Path, name: str) -> Splits:
    """train-* gives a fixed 90/10 train/val split and t10k-* the test set; without t10k-*, train is split 80/10/10."""
    train_files = _read_pair(directory, TRAIN_IMAGES, TRAIN_LABELS)
    if train_files is None:
        raise UserError(
            f"{directory} has MNIST test files but no {TRAIN_IMAGES} / {TRAIN_LABELS}; "
            "put the training files (raw or .gz) in the same directory"
        )
    test = _read_pair(directory, TEST_IMAGES, TEST_LABELS)
    images, labels = train_files
    if test is None:
        train, val, test = split_arrays(images, labels, val_pct=10, test_pct=10)
    else:
        train, val, _ = split_arrays(images, labels, val_pct=10, test_pct=0)
    num_classes = max(int(pair[1].max()) for pair in (train, val, test) if pair is not None) + 1
    return image_splits(name, train, val, test, num_classes)


def _read_pair(directory: Path, images_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Images (N, 1, H, W) uint8 and labels (N,) from a matching pair of files; None when neither exists."""
    images_path = find_idx_file(directory, images_name)
    labels_path = find_idx_file(directory, labels_name)
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        found, missing = (labels_path, images_name) if images_path is None else (images_path, labels_name)
        raise UserError(
            f"found {found} but not {missing} (raw or .gz) next to it; "
            "images and labels come in pairs, add the missing file"
        )
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise UserError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "use an images file and a labels file from the same set"
        )
    if len(images) == 0:
        raise UserError(f"{images_path} holds no images; use a complete MNIST file")
    return images[:, None], labels


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The array stored in one IDX file, checked against the expected magic number and its own header.

    The header's size is checked before anything is allocated, and the body is read
    with that size as a cap, so a gzip bomb is refused instead of decompressed.
    """
    what = "images" if magic == IMAGES_MAGIC else "labels"
    require_regular_file(path)
    gzipped = path.suffix == ".gz"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as stream:
            dims = _read_header(stream, path, magic, what)
            expected = math.prod(dims)
            _check_declared_size(path, what, expected, 4 + 4 * len(dims), gzipped)
            values = np.empty(expected, np.uint8)
            found = _read_into(stream, values)
            extra = stream.read(1)
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read {path} ({error}); download the file again") from None
    if found < expected:
        raise UserError(
            f"{path} is truncated: its header promises {expected} bytes of {what} but only "
            f"{found} follow; download it again"
        )
    if extra:
        raise UserError(
            f"{path} holds more than the {expected} bytes of {what} its header declares; the file is damaged "
            "or not an MNIST file (a gzip bomb looks like this), download it again"
        )
    return values.reshape(dims)


def _read_header(stream, path: Path, magic: int, what: str) -> tuple[int, ...]:
    """The dimensions from the header, after checking the magic number."""
    ndim = magic & 0xFF
    header = stream.read(4 + 4 * ndim)
    found_magic = int.from_bytes(header[:4], "big")
    if len(header) >= 4 and found_magic != magic:
        raise UserError(
            f"{path} is not an IDX {what} file (magic number 0x{found_magic:08x}, "
            f"expected 0x{magic:08x}); check that images and labels files are not swapped or damaged"
        )
    if len(header) < 4 + 4 * ndim:
        raise UserError(f"{path} is truncated: it has {len(header)} bytes, less than the IDX header; download it again")
    return struct.unpack(f">{ndim}I", header[4:])


def _check_declared_size(path: Path, what: str, expected: int, header_size: int, gzipped: bool) -> None:
    """Refuse a header that declares more than the file can hold or than memory can take."""
    file_size = path.stat().st_size
    if not gzipped and expected > file_size - header_size:
        raise UserError(
            f"{path} is truncated: its header promises {expected} bytes of {what} but only "
            f"{file_size - header_size} follow; download it again"
        )
    if gzipped and expected > file_size * MAX_DEFLATE_RATIO:
        raise UserError(
            f"{path} is damaged or a gzip bomb: its header declares {format_bytes(expected)} of {what}, more than "
            f"a {format_bytes(file_size)} gzip file can hold (deflate expands at most {MAX_DEFLATE_RATIO}-fold); "
            "download it again"
        )
    require_memory(
        expected * LOAD_BYTES_PER_BYTE[what],
        f"{path} ({format_bytes(expected)} of {what} by its header)",
        "use a machine with more memory or a smaller data set",
    )


def _read_into(stream, values: np.ndarray) -> int:
    """Fill values from stream; the number of bytes read, fewer at the end of the stream."""
    view = memoryview(values).cast("B")
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled
