"""A folder of images with one subfolder per class, optionally under train/, val/ and test/.

Images are decoded lazily, one per sample, so the folder may be larger than
memory. Every file is opened and checked when the data set is built (PNG by its
checksums, JPEG and the rest by decoding, JPEG cheaply at 1/8 scale), so a broken
or truncated image stops the run before training instead of in the middle of an epoch.
Every image is resized to the first training image's size, so that size is capped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dlscale.data import preprocess
from dlscale.data.guards import names_a_file, require_regular_file
from dlscale.data.splits import Splits, split_indices
from dlscale.errors import UserError
from dlscale.units import format_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
GREY_MODES = {"1", "L"}
MAX_PIXELS = 2048 * 2048  # per image, as every sample is decoded to this size: 48 MiB of float32 RGB
SPLIT_NAMES = ("train", "val", "test")


def class_folders(directory: Path) -> dict[str, list[Path]]:
    """{class name: its image files, sorted} for each visible subfolder that holds at least one image."""
    classes = {}
    for sub in sorted(directory.iterdir()):
        if sub.is_dir() and not sub.name.startswith("."):
            images = sorted(f for f in sub.iterdir() if _is_image_file(f))
            if images:
                classes[sub.name] = images
    return classes


def _is_image_file(path: Path) -> bool:
    # Hidden files are skipped: macOS archives carry '._name.png' metadata files that are not images.
    # A FIFO or device named like an image is kept, to be refused by name when it is checked.
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and names_a_file(path)


def has_split_folders(path: Path) -> bool:
    """True for the train/ (val/, test/) layout: train/ itself holds class subfolders."""
    return (path / "train").is_dir() and bool(class_folders(path / "train"))


def is_image_folder(path: Path) -> bool:
    return has_split_folders(path) or bool(class_folders(path))


def load_image_folder(path: Path, name: str) -> Splits:
    """Splits from train/val/test subfolders when present, else a fixed 80/10/10 split of the class folders."""
    if has_split_folders(path):
        folders = {split: class_folders(path / split) if (path / split).is_dir() else {} for split in SPLIT_NAMES}
        class_names = sorted({c for per_class in folders.values() for c in per_class})
        samples = {split: _labelled(per_class, class_names) for split, per_class in folders.items()}
    else:
        per_class = class_folders(path)
        class_names = sorted(per_class)
        everything = _labelled(per_class, class_names)
        indices = split_indices(len(everything), val_pct=10, test_pct=10)
        samples = {split: [everything[i] for i in idx] for split, idx in zip(SPLIT_NAMES, indices)}

    first_file = samples["train"][0][0]
    size = _first_size(first_file)  # every image is resized to the first one's (width, height)
    modes = [_check_image(f) for split_samples in samples.values() for f, _ in split_samples]
    mode = "L" if all(m in GREY_MODES for m in modes) else "RGB"
    datasets = {split: ImageFiles(s, size, mode) if s else None for split, s in samples.items()}
    return Splits(
        name=name,
        kind="image",
        input_shape=(1 if mode == "L" else 3, size[1], size[0]),
        num_classes=len(class_names),
        train=datasets["train"],
        val=datasets["val"],
        test=datasets["test"],
        preprocess=preprocess.image_files(mode, size),
        class_names=tuple(class_names),
    )


def _labelled(per_class: dict[str, list[Path]], class_names: list[str]) -> list[tuple[Path, int]]:
    """(file, label) pairs, the label being the class name's position in the sorted list of all classes."""
    return [(f, class_names.index(c)) for c, files in per_class.items() for f in files]


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """Image.open for reading in the with-block; any failure there is one UserError naming the file."""
    require_regular_file(path)
    try:
        with Image.open(path) as image:
            yield image
    except Exception as error:  # Pillow raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        raise UserError(f"cannot read image {path} ({error}); remove or replace the file") from None


def _first_size(path: Path) -> tuple[int, int]:
    """The first training image's (width, height), refused when so large that every sample,
    resized to it, would swamp memory. Checked before any other image is opened."""
    with _open_image(path) as image:
        width, height = image.size
        channels = 1 if image.mode in GREY_MODES else 3
    if width * height > MAX_PIXELS:
        raise UserError(
            f"the first training image {path} is {width}x{height} pixels and every image is resized to the first "
            f"one's size: {format_bytes(4 * channels * width * height)} per sample as float32, over the limit of "
            f"{MAX_PIXELS} pixels (e.g. 2048x2048); resize the images to the size the model should see "
            "(e.g. 224x224) and try again"
        )
    return width, height


def _check_image(path: Path) -> str:
    """Open and check one image file, decoding all of it unless it is a PNG; its mode ('L', 'RGB', ...)."""
    with _open_image(path) as image:
        mode = image.mode
        if image.format == "PNG":
            image.verify()  # checks every chunk's CRC without decoding
        else:  # verify() checks next to nothing in a JPEG: decode it, at 1/8 scale where the format allows
            image.draft(None, (1, 1))
            image.load()
    return mode


class ImageFiles(Dataset):
    """Image files decoded on demand: (x float32 [C, H, W] scaled to [-1, 1], y int64)."""

    def __init__(self, samples: list[tuple[Path, int]], size: tuple[int, int], mode: str):
        self.files = [f for f, _ in samples]
        self.labels = [label for _, label in samples]
        self.size = size
        self.mode = mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        with _open_image(self.files[index]) as image:  # checked at build time, but a file can still change
            # Lazy data has no cheap train statistics: [0, 255] is standardised with mean and std 127.5.
            x = preprocess.decode_image(image, self.mode, self.size)
        return torch.from_numpy(x), torch.tensor(self.labels[index], dtype=torch.int64)


def read_image(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image file decoded as training decoded it (``preprocess.decode_image``); a broken
    file is one UserError naming it."""
    with _open_image(path) as image:
        return preprocess.decode_image(image, mode, size)


def image_files_in(path: Path) -> list[Path]:
    """The image files of a folder (sorted, hidden files skipped), or the file itself."""
    if path.is_dir():
        return sorted(f for f in path.iterdir() if _is_image_file(f))
    return [path]
