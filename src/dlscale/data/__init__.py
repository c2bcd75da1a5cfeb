"""Data sets by name or path: `load_data` picks the reader and returns train/val/test splits.

Built-in names: "digits" (scikit-learn's 8x8 digits) and "synthetic" (shaped like
the model wants, or "synthetic:CxHxW" / "synthetic:SEQ_LEN"). Anything else is a
path to files the user has; the reader is chosen by what is found there:

- a directory with nanoGPT's train.bin and val.bin (token ids), MNIST IDX files, CIFAR-10
  python batches, class subfolders of images, or image shards (``dlscale data pack``)
- a .npz file with arrays x and y
- a .bin file of token ids (``dlscale data pack``'s, or nanoGPT's uint16 GPT-2 ids)
- any other file that is text (byte-level tokens)

Image samples are (x float32 [C, H, W] or [F], y int64 scalar); token samples are
(x int64 [T], y int64 [T]) with y the next token of each position. dlscale never downloads.
"""

from __future__ import annotations

from pathlib import Path

from dlscale.data.cifar import find_cifar_dir, load_cifar
from dlscale.data.digits import load_digits
from dlscale.data.guards import require_regular_file
from dlscale.data.idx import is_idx_dir, load_idx
from dlscale.data.imagefolder import is_image_folder, load_image_folder
from dlscale.data.npz import load_npz
from dlscale.data.shards import is_shard_dir, load_shards
from dlscale.data.splits import DataSpec, Splits
from dlscale.data.synthetic import load_synthetic
from dlscale.data.text import is_text_file, load_text
from dlscale.data.token_bin import is_nanogpt_dir, load_nanogpt_dir, load_token_bin
from dlscale.errors import UserError

__all__ = ["DATA_NAMES", "DataSpec", "Splits", "load_data"]

DATA_NAMES: tuple[str, ...] = ("digits", "synthetic")
DEFAULT_TEXT_SEQ_LEN = 128

CHOICES = (
    "digits, synthetic, synthetic:CxHxW (e.g. synthetic:3x32x32), synthetic:SEQ_LEN (e.g. synthetic:128), "
    "or a path to a directory of nanoGPT's train.bin and val.bin, MNIST IDX files, CIFAR-10 python batches or "
    "class subfolders of images, an .npz file with x and y, a .bin file of token ids (dlscale data pack), or a text file"
)


def load_data(
    name_or_path: str, want: DataSpec, *, seed: int = 0, synthetic_samples: int | None = None,
    augment: str = "auto", image_size: int | None = None, skip_bad_files: bool = False,
) -> Splits:
    """Load a built-in data set or the user's files; `want` shapes synthetic data and sets seq_len
    for text; ``augment``, ``image_size`` and ``skip_bad_files`` are for image folders
    (``imagefolder``), whose random crops are seeded by ``seed``."""
    if name_or_path == "digits":
        return load_digits()
    if name_or_path == "synthetic" or name_or_path.startswith("synthetic:"):
        return load_synthetic(name_or_path, want, seed=seed, samples=synthetic_samples)

    path = Path(name_or_path).expanduser()
    if not path.exists():
        if _looks_like_path(name_or_path):
            raise UserError(f"data path {name_or_path} does not exist; give {CHOICES}")
        raise UserError(f"unknown data {name_or_path!r}; give {CHOICES} (dlscale downloads nothing)")
    try:
        images = {"augment": augment, "image_size": image_size, "seed": seed, "skip_bad_files": skip_bad_files}
        return _load_path(path, name_or_path, want, images)
    except OSError as error:  # e.g. a folder we may not list; readers report their own file errors
        reason = error.strerror or error
        raise UserError(f"cannot read {name_or_path} ({reason}); check the path and its permissions") from None


def _load_path(path: Path, name: str, want: DataSpec, images: dict) -> Splits:
    """Pick the reader by what is at an existing path."""
    seq_len = want.input_shape[0] if want.kind == "tokens" else DEFAULT_TEXT_SEQ_LEN
    if path.is_dir():
        return _load_directory(path, name, seq_len, images)
    require_regular_file(path, f"data {name}")  # a FIFO would block and /dev/zero never end
    if path.suffix.lower() == ".npz":
        return load_npz(path, name)
    if path.suffix.lower() == ".bin":  # token ids: a .bin of bytes would also pass as text
        return load_token_bin(path, name, seq_len)

    if path.is_file() and is_text_file(path):
        return load_text(path, name, seq_len)
    raise UserError(
        f"{name} is neither text nor an .npz file; for MNIST or CIFAR-10 give the directory that holds "
        f"the files, otherwise give {CHOICES}"
    )


def _load_directory(path: Path, name: str, seq_len: int, images: dict) -> Splits:
    """The first reader whose files are in the directory, in the order image shards, nanoGPT, IDX, CIFAR-10, image folder."""
    if is_shard_dir(path):
        return load_shards(path, name, **images)
    if is_nanogpt_dir(path):
        if is_idx_dir(path) or find_cifar_dir(path) is not None:
            raise UserError(
                f"directory {name} holds both nanoGPT's train.bin and MNIST or CIFAR-10 files; "
                "put each data set in a folder of its own and give that folder"
            )
        return load_nanogpt_dir(path, name, seq_len)
    if is_idx_dir(path):
        return load_idx(path, name)
    cifar_dir = find_cifar_dir(path)
    if cifar_dir is not None:
        return load_cifar(cifar_dir, name)
    if is_image_folder(path):
        return load_image_folder(path, name, **images)
    raise UserError(
        f"no usable data in directory {name}: looked for nanoGPT's train.bin and val.bin, MNIST IDX files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, raw or .gz), CIFAR-10 batches (data_batch_1.., test_batch, or a "
        "cifar-10-batches-py/ subfolder) and class subfolders of images (png, jpg, jpeg, bmp, gif, webp); "
        "put one of these there or give another path"
    )


def _looks_like_path(text: str) -> bool:
    """A separator, a suffix or ~ means the user meant a file, not a built-in name."""
    return "/" in text or "\\" in text or "." in Path(text).name or text.startswith("~")
