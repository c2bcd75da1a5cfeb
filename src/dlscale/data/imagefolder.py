"""A folder of images with one subfolder per class, optionally under train/, val/ and test/.

Images are decoded lazily, one per sample, so the folder may be larger than
memory. Every file is opened and verified when the data set is built, so a
broken image stops the run before training instead of in the middle of an epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dlscale.data.splits import Splits, split_indices
from dlscale.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
GREY_MODES = {"1", "L"}
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
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


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

    modes = [_check_image(f) for split_samples in samples.values() for f, _ in split_samples]
    mode = "L" if all(m in GREY_MODES for m in modes) else "RGB"
    first_file = samples["train"][0][0]
    with Image.open(first_file) as image:
        size = image.size  # every image is resized to the first one's (width, height)
    datasets = {split: ImageFiles(s, size, mode) if s else None for split, s in samples.items()}
    return Splits(
        name=name,
        kind="image",
        input_shape=(1 if mode == "L" else 3, size[1], size[0]),
        num_classes=len(class_names),
        train=datasets["train"],
        val=datasets["val"],
        test=datasets["test"],
    )


def _labelled(per_class: dict[str, list[Path]], class_names: list[str]) -> list[tuple[Path, int]]:
    """(file, label) pairs, the label being the class name's position in the sorted list of all classes."""
    return [(f, class_names.index(c)) for c, files in per_class.items() for f in files]


def _check_image(path: Path) -> str:
    """Open and verify one image file; its mode ('L', 'RGB', ...)."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            image.verify()
        return mode
    except Exception as error:  # Pillow raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        raise UserError(f"cannot read image {path} ({error}); remove or replace the file") from None


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
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
                if image.size != self.size:
                    image = image.resize(self.size, Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32)
        except Exception as error:  # verified at build time, but a file can still change or hide damage
            raise UserError(f"cannot read image {path} ({error}); remove or replace the file") from None
        # Lazy data has no cheap train statistics: scale [0, 255] to [0, 1], then standardise with mean 0.5 / std 0.5.
        pixels = pixels / 127.5 - 1.0
        x = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor(self.labels[index], dtype=torch.int64)
