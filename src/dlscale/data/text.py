"""A plain text file as byte-level tokens (vocabulary 256) for next-token prediction.

The byte stream is cut contiguously 90/5/5 into train/val/test, and each part
into non-overlapping windows of seq_len + 1 bytes: x = window[:-1], y = window[1:].
"""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dlscale.data import preprocess
from dlscale.data.guards import require_memory, require_regular_file
from dlscale.data.splits import Splits
from dlscale.errors import UserError

VOCAB_SIZE = 256
SNIFF_BYTES = 1 << 16
# Memory per byte of text while the windows are cut: the bytes, an int64 copy, int64 x and y.
LOAD_BYTES_PER_BYTE = 1 + 8 + 16


def is_text_file(path: Path) -> bool:
    """A .txt file, or any file whose first 64 KiB decode as UTF-8."""
    if path.suffix.lower() == ".txt":
        return True
    with open(path, "rb") as file:  # an OSError here reaches load_data, which reports it
        head = file.read(SNIFF_BYTES)
    try:
        # final=False: a multi-byte character cut off at the end of the sample is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def load_text(path: Path, name: str, seq_len: int) -> Splits:
    """Windows of seq_len + 1 bytes from a contiguous 90/5/5 split of the file."""
    require_regular_file(path)
    try:
        require_memory(
            path.stat().st_size * LOAD_BYTES_PER_BYTE,
            f"{path} as byte tokens",
            "use a machine with more memory or a shorter text",
        )
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror}); check the path and its permissions") from None
    window = seq_len + 1
    train_end = len(data) * 9 // 10
    val_end = len(data) * 19 // 20
    if train_end < window:
        needed = (10 * window + 8) // 9  # the smallest size whose first 90% holds one window
        raise UserError(
            f"{path} has {len(data)} bytes, too short for one training window of {window} bytes "
            f"(seq_len {seq_len} + 1); give a text of at least {needed} bytes or a shorter sequence length"
        )
    return Splits(
        name=name,
        kind="tokens",
        input_shape=(seq_len,),
        num_classes=VOCAB_SIZE,
        train=_windows(data[:train_end], window),
        val=_windows(data[train_end:val_end], window),
        test=_windows(data[val_end:], window),
        preprocess=preprocess.byte_tokens(),
    )


def _windows(part: np.ndarray, window: int) -> TensorDataset | None:
    """(x, y) next-token pairs from non-overlapping windows; None when the part holds no full window."""
    count = len(part) // window
    if count == 0:
        return None
    tokens = part[: count * window].reshape(count, window).astype(np.int64)
    return TensorDataset(torch.from_numpy(tokens[:, :-1].copy()), torch.from_numpy(tokens[:, 1:].copy()))
