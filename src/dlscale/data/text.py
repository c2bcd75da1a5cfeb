"""A plain text file as byte-level tokens (vocabulary 256) for next-token prediction.

The byte stream is cut contiguously 90/5/5 into train/val/test, and each part
into non-overlapping windows of seq_len + 1 bytes: x = window[:-1], y = window[1:].

The file is memory-mapped, never read whole: a byte is a token (uint8, nanoGPT's .bin
idea with the file itself as the .bin), windows are cut when a batch asks for them, and
only the batch becomes int64. A text larger than memory trains with the resident memory
of the model and the pages the batches touch (which the kernel can drop again).
"""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dlscale.data import preprocess
from dlscale.data.guards import require_regular_file
from dlscale.data.splits import Splits
from dlscale.errors import UserError

VOCAB_SIZE = 256
SNIFF_BYTES = 1 << 16


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
        size = path.stat().st_size
        data = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error
        raise UserError(f"cannot read {path} ({reason}); check the path and its permissions") from None
    window = seq_len + 1
    if len(data) * 9 // 10 < window:
        needed = (10 * window + 8) // 9  # the smallest size whose first 90% holds one window
        raise UserError(
            f"{path} has {len(data)} bytes, too short for one training window of {window} bytes "
            f"(seq_len {seq_len} + 1); give a text of at least {needed} bytes or a shorter sequence length"
        )
    train, val, test = split_90_5_5(data, window)
    return Splits(
        name=name,
        kind="tokens",
        input_shape=(seq_len,),
        num_classes=VOCAB_SIZE,
        train=train,
        val=val,
        test=test,
        preprocess=preprocess.byte_tokens(),
    )


def split_90_5_5(tokens: np.ndarray, window: int) -> tuple[TokenWindows | None, TokenWindows | None, TokenWindows | None]:
    """Train, val and test windows from a contiguous 90/5/5 cut of ``tokens``; a part too
    short for one window is None. Shared with the token .bin reader (data.token_bin)."""
    train_end = len(tokens) * 9 // 10
    val_end = len(tokens) * 19 // 20
    return _windows(tokens[:train_end], window), _windows(tokens[train_end:val_end], window), _windows(tokens[val_end:], window)


class TokenWindows(Dataset):
    """Non-overlapping windows of ``window`` tokens over ``tokens`` (a memory map of uint8,
    uint16 or uint32 ids: a text's bytes or a token .bin), as (x, y) next-token pairs of
    int64. ``gather`` cuts a whole batch with one vectorised index; only the batch is cast."""

    def __init__(self, tokens: np.ndarray, window: int):
        self.tokens, self.window = tokens, window
        self.count = len(tokens) // window
        self._offsets = np.arange(window)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.count <= i < self.count:
            raise IndexError(f"window {i} of {self.count}")
        x, y = self.gather(torch.tensor([i % self.count]))
        return x[0], y[0]

    def head(self, n: int) -> TokenWindows:
        """The first ``n`` windows."""
        return TokenWindows(self.tokens[: n * self.window], self.window)

    def gather(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows at ``index`` (a tensor of window numbers, or a slice of them)."""
        if isinstance(index, slice):  # contiguous windows are one stretch of the file
            start, stop, _ = index.indices(self.count)
            windows = self.tokens[start * self.window : stop * self.window].reshape(-1, self.window)
        else:
            starts = np.asarray(index, dtype=np.int64) * self.window
            windows = self.tokens[starts[:, None] + self._offsets]
        windows = torch.from_numpy(windows.astype(np.int64))
        return windows[:, :-1], windows[:, 1:]


def _windows(part: np.ndarray, window: int) -> TokenWindows | None:
    """(x, y) next-token pairs from non-overlapping windows; None when the part holds no full window."""
    return TokenWindows(part, window) if len(part) >= window else None
