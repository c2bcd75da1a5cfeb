"""A folder of images with one subfolder per class, optionally under train/, val/ and test/.

Start-up does not grow with the number of files: the folder is listed in parallel and
the listing cached (``file_index``), and images are checked when they are read, not
before. A broken file met in training stops the run with one ``error:`` line naming it,
or, with ``--skip-bad-files``, is replaced by the next readable sample and counted.

Samples are uint8 pixels (C, H, W), decoded in the loader's worker processes
(``data.images``); the training device scales them to [-1, 1] (``preprocess.pixels``),
so a quarter of the bytes cross from the workers and to the GPU. The augmentation:

- ``standard``: RandomResizedCrop + flip for training, resize + center crop for
  evaluation, at ``image_size`` (default: 224, or the first image's shorter side when
  smaller). Each sample's crop is seeded by (seed, epoch, index), so a resumed run and any
  number of loader workers see the same pixels.
- ``none``: every image resized whole to the first training image's size (for folders of
  equally sized images, such as MNIST or CIFAR-10 exported as PNG).
- ``auto``: standard when the first training image's shorter side is at least
  ``AUTO_AUGMENT_MIN_SIDE`` (photos), none for small images, which a crop would cut up.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from dlscale.data import file_index, images, preprocess
from dlscale.data.file_index import IMAGE_SUFFIXES, image_suffix  # noqa: F401 (IMAGE_SUFFIXES: for inference)
from dlscale.data.guards import require_regular_file
from dlscale.data.splits import Splits, split_indices
from dlscale.errors import UserError
from dlscale.units import format_bytes

GREY_MODES = {"1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F"}
MAX_PIXELS = 2048 * 2048  # augment none: every sample is decoded at the first image's size
SPLIT_NAMES = ("train", "val", "test")
AUGMENTS = ("auto", "none", "standard")
AUTO_AUGMENT_MIN_SIDE = 128  # auto: standard augmentation for images at least this large on their shorter side
DEFAULT_IMAGE_SIZE = 224
MODE_PROBES = 64  # training images whose headers decide between L and RGB
MAX_SKIPPED_IN_A_ROW = 16  # --skip-bad-files: unreadable files passed over for one sample before giving up


def _classes(listing: file_index.Folder, directory: Path) -> dict[str, list[str]]:
    """{class: its image files} of a listing; paths as strings, made by concatenation: a
    Path object per file would cost more than listing the folder (100,000 files: 2 s)."""
    classes = {}
    for name, sub in sorted(listing.children.items()):
        if sub.images:
            prefix = os.path.join(directory, name, "")
            classes[name] = [prefix + f for f in sub.images]
    return classes


def _has_split_folders(listing: file_index.Folder) -> bool:
    train = listing.children.get("train")
    return train is not None and any(sub.images for sub in train.children.values())


def is_image_folder(path: Path) -> bool:
    """Whether ``path`` holds class subfolders of images (itself or under train/); stops at
    the first image found, so that deciding does not list the whole folder."""
    for top in (path / "train", path):
        for folder in _visible_folders(top):
            with os.scandir(folder) as entries:
                if any(image_suffix(e.name) and not e.is_dir() for e in entries):
                    return True
    return False


def _visible_folders(path: Path) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return sorted(e.path for e in entries if e.is_dir() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def load_image_folder(
    path: Path, name: str, *, augment: str = "auto", image_size: int | None = None, seed: int = 0,
    skip_bad_files: bool = False,
) -> Splits:
    """Splits from train/val/test subfolders when present, else a fixed 80/10/10 split of the class folders."""
    samples, class_names = labelled_samples(path)
    return image_splits(name, samples, class_names, augment=augment, image_size=image_size, seed=seed,
                        skip_bad_files=skip_bad_files)


def labelled_samples(path: Path) -> tuple[dict[str, list[tuple[Path, int]]], list[str]]:
    """({split: [(file, label)]}, class names) as training reads the folder: train/val/test
    subfolders when present, else a fixed 80/10/10 split of the class folders."""
    listing = file_index.scan(path)  # cached: a second start reads it back
    if _has_split_folders(listing):
        folders = {
            split: _classes(listing.children[split], path / split) if split in listing.children else {}
            for split in SPLIT_NAMES
        }
        class_names = sorted({c for per_class in folders.values() for c in per_class})
        samples = {split: _labelled(per_class, class_names) for split, per_class in folders.items()}
    else:
        per_class = _classes(listing, path)
        class_names = sorted(per_class)
        everything = _labelled(per_class, class_names)
        indices = split_indices(len(everything), val_pct=10, test_pct=10)
        samples = {split: [everything[i] for i in idx] for split, idx in zip(SPLIT_NAMES, indices)}
    return samples, class_names


def image_splits(
    name: str, samples: dict[str, list[tuple[Any, int]]], class_names: list[str], *, augment: str = "auto",
    image_size: int | None = None, seed: int = 0, skip_bad_files: bool = False,
    dataset: type[ImageFiles] | None = None, open_image: Callable | None = None,
) -> Splits:
    """The Splits of labelled samples: mode, size and augmentation from the first training
    images' headers (opened with ``open_image``, default: as files), each split a ``dataset``
    (default ImageFiles; image shards pass their own reader of the same samples)."""
    dataset, open_image = dataset or ImageFiles, open_image or _open_image
    train_files = [f for f, _ in samples["train"]]
    first_size = _first_size(train_files[0], open_image)
    augment = _resolve_augment(augment, first_size)
    if augment == "standard":
        side = image_size or min(DEFAULT_IMAGE_SIZE, *first_size)
        size, crop = (side, side), images.CENTER_CROP
    else:
        size, crop = (image_size, image_size) if image_size else _checked_size(train_files[0], first_size), None
    mode = _mode_of(train_files, open_image)
    datasets = {
        split: dataset(s, mode, size, crop=crop, random_crop=augment == "standard" and split == "train",
                       seed=seed, skip_bad_files=skip_bad_files) if s else None
        for split, s in samples.items()
    }
    return Splits(
        name=name,
        kind="image",
        input_shape=(1 if mode == "L" else 3, size[1], size[0]),
        num_classes=len(class_names),
        train=datasets["train"],
        val=datasets["val"],
        test=datasets["test"],
        preprocess=preprocess.image_files(mode, size, crop),
        class_names=tuple(class_names),
    )


def _labelled(per_class: dict[str, list[Path]], class_names: list[str]) -> list[tuple[Path, int]]:
    """(file, label) pairs, the label being the class name's position in the sorted list of all classes."""
    label = {c: i for i, c in enumerate(class_names)}
    return [(f, label[c]) for c, files in per_class.items() for f in files]


def _resolve_augment(augment: str, first_size: tuple[int, int]) -> str:
    if augment not in AUGMENTS:
        raise UserError(f"--augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if augment == "auto":
        return "standard" if min(first_size) >= AUTO_AUGMENT_MIN_SIDE else "none"
    return augment


def _mode_of(files: list, open_image: Callable | None = None) -> str:
    """'L' when the headers of up to MODE_PROBES training images, spread over the list, are
    all grey; else 'RGB' (a colour image among grey ones makes every sample RGB)."""
    step = max(1, len(files) // MODE_PROBES)
    for path in files[::step][:MODE_PROBES]:
        try:
            with (open_image or _open_image)(path) as image:
                if image.mode not in GREY_MODES:
                    return "RGB"
        except UserError:
            continue  # a broken file is reported when training reads it
    return "L"


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """Image.open for reading in the with-block; any failure there is one UserError naming the file."""
    require_regular_file(path)
    try:
        with Image.open(path) as image:
            yield image
    except Exception as error:  # Pillow raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        raise UserError(f"cannot read image {path} ({error}); remove or replace the file") from None


def _first_size(path: Path, open_image: Callable | None = None) -> tuple[int, int]:
    """The first training image's (width, height), from its header."""
    with (open_image or _open_image)(path) as image:
        return image.size


def _checked_size(path: Path, size: tuple[int, int]) -> tuple[int, int]:
    """augment none resizes every image to the first one's size: refused when so large that
    every sample would swamp memory."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise UserError(
            f"the first training image {path} is {width}x{height} pixels and without augmentation every image is "
            f"resized to the first one's size: {format_bytes(3 * width * height)} per sample, over the limit of "
            f"{MAX_PIXELS} pixels (e.g. 2048x2048); give --image-size (e.g. 224) or --augment standard"
        )
    return size


def decode_file(path: Path | str, mode: str, size: tuple[int, int], crop: float | None,
                rng: np.random.Generator | None = None, decoder: str = "auto") -> np.ndarray:
    """One file as uint8 (C, H, W) (``decode_data``); any failure is one UserError naming the file."""
    require_regular_file(path)  # a FIFO would block the read
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise UserError(f"cannot read image {path} ({error.strerror or error}); remove or replace the file") from None
    return decode_data(data, path, mode, size, crop, rng, decoder)


def decode_data(data: bytes, name: object, mode: str, size: tuple[int, int], crop: float | None,
                rng: np.random.Generator | None = None, decoder: str = "auto") -> np.ndarray:
    """An image's bytes as uint8 (C, H, W): a random crop and flip with ``rng``, else the
    center ``crop`` share (None: the whole image); JPEGs through simplejpeg where it imports
    (``decoder`` auto), else Pillow (``pillow-full``: without draft mode). A failure is one
    UserError naming ``name``."""
    try:
        fast = images.fast_jpeg(data, decoder)
        image = None if fast else Image.open(io.BytesIO(data))
        width, height = images.jpeg_size(data) if fast else image.size
        if rng is not None:
            box, flip = images.random_crop_box(rng, width, height), bool(rng.integers(2))
        else:
            box, flip = (images.center_crop_box(width, height, crop) if crop else None), False
        if fast:
            return images.decode_jpeg(data, mode, size, box, flip)
        with image:
            return images.decode(image, mode, size, box, flip, draft=decoder != "pillow-full")
    except UnidentifiedImageError:
        raise UserError(f"cannot read image {name} (not an image format Pillow can read); remove or replace the file") from None
    except Exception as error:  # Pillow and simplejpeg raise many types for broken data
        raise UserError(f"cannot read image {name} ({error}); remove or replace the file") from None


class ImageFiles(Dataset):
    """Image files decoded on demand: (x uint8 [C, H, W], y int64).

    Indexed by an int, a sample is decoded for evaluation (or epoch 0), and a broken file
    raises UserError. The training loader indexes by (index, epoch) and gets a third item,
    the index of the file that could not be read (-1 when none): worker processes report a
    broken file instead of raising, and the loader names it (``data.loader``)."""

    pixels = True  # uint8 pixels: the consumer scales them to [-1, 1] (preprocess.pixels)
    keyed_by_epoch = True

    def __init__(self, samples: list[tuple[Path, int]], mode: str, size: tuple[int, int], *,
                 crop: float | None = None, random_crop: bool = False, seed: int = 0, skip_bad_files: bool = False):
        self.files = [f for f, _ in samples]
        self.labels = [label for _, label in samples]
        self.mode, self.size, self.crop = mode, size, crop
        self.random_crop, self.seed, self.skip_bad_files = random_crop, seed, skip_bad_files

    def __len__(self) -> int:
        return len(self.files)

    def head(self, n: int) -> ImageFiles:
        """The first ``n`` samples, decoded the same way."""
        return ImageFiles(list(zip(self.files[:n], self.labels[:n])), self.mode, self.size, crop=self.crop,
                          random_crop=self.random_crop, seed=self.seed, skip_bad_files=self.skip_bad_files)

    def __getitem__(self, key: int | tuple[int, int | None]):
        if isinstance(key, tuple):  # from the loader: never raises for a broken file
            index, epoch = key
            x, label, bad = self._read(int(index), epoch or 0)
            return torch.from_numpy(x), torch.tensor(label, dtype=torch.int64), torch.tensor(bad, dtype=torch.int64)
        index = int(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        x, label, bad = self._read(index % len(self), 0)
        if label < 0:  # unreadable, and not skipped
            raise self.unreadable(bad)
        return torch.from_numpy(x), torch.tensor(label, dtype=torch.int64)

    def _read(self, index: int, epoch: int) -> tuple[np.ndarray, int, int]:
        """(pixels, label, -1), or, for an unreadable file: with skip_bad_files the next
        readable sample and the broken file's index, else zeros and that index."""
        first_bad = -1
        for offset in range(MAX_SKIPPED_IN_A_ROW + 1 if self.skip_bad_files else 1):
            i = (index + offset) % len(self)
            # seeded by the sample and the epoch alone: the same crop in any worker, after any resume
            rng = np.random.default_rng((self.seed, epoch, i)) if self.random_crop else None
            try:
                return self.decode(i, rng), self.labels[i], first_bad
            except UserError:
                first_bad = i if first_bad < 0 else first_bad
        channels = 1 if self.mode == "L" else 3
        return np.zeros((channels, self.size[1], self.size[0]), np.uint8), -1, first_bad

    def decode(self, index: int, rng: np.random.Generator | None = None, decoder: str = "auto") -> np.ndarray:
        """Sample ``index``'s pixels (a subclass may read them from elsewhere than a file)."""
        return decode_file(self.files[index], self.mode, self.size, self.crop, rng, decoder)

    def unreadable(self, index: int) -> UserError:
        """The error for file ``index``, with Pillow's reason when reading it again still fails."""
        path = self.files[index]
        try:
            self.decode(index)
        except UserError as error:
            reason = str(error)
        else:
            reason = f"cannot read image {path} (it failed while training read it); remove or replace the file"
        if self.skip_bad_files:
            return UserError(f"{reason}; and the {MAX_SKIPPED_IN_A_ROW} files after it could not be read either")
        return UserError(f"{reason}, or pass --skip-bad-files to skip unreadable images and count them")


def read_image(path: Path, mode: str, size: tuple[int, int], crop: float | None = None) -> np.ndarray:
    """One image file as evaluation decodes it, scaled to [-1, 1]: float32 (C, H, W); a
    broken file is one UserError naming it."""
    return preprocess.pixels_to_input(decode_file(path, mode, size, crop))


def image_files_in(path: Path) -> list[Path]:
    """The image files of a folder (sorted, hidden files skipped), or the file itself."""
    if path.is_dir():
        return sorted(f for f in path.iterdir() if image_suffix(f.name) and not f.is_dir())
    return [path]
