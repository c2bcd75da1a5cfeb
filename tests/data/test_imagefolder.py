import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from dlscale.data import DataSpec, load_data
from dlscale.errors import UserError

WANT = DataSpec("image", (3, 32, 32), 10)
COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}


def make_folder(root, per_class=10, size=(8, 6), mode="RGB", suffix=".png"):
    """root/<class>/<i><suffix>, each image filled with its class colour (grey level for mode L)."""
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        fill = colour if mode == "RGB" else max(colour) // 2
        for i in range(per_class):
            Image.new(mode, size, fill).save(root / name / f"{i}{suffix}")


def test_class_folders_are_labels_in_alphabetical_order(tmp_path):
    make_folder(tmp_path)
    splits = load_data(str(tmp_path), WANT)
    assert (splits.kind, splits.input_shape, splits.num_classes) == ("image", (3, 6, 8), 3)  # (C, H, W)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 3, 3)
    assert not isinstance(splits.train, TensorDataset)  # decoded lazily
    for x, y in (splits.train[i] for i in range(len(splits.train))):
        # uint8 pixels: the training device scales them to [-1, 1] (a quarter of the bytes to copy)
        assert x.shape == (3, 6, 8) and x.dtype == torch.uint8 and y.dtype == torch.int64 and y.shape == ()
        assert x[:, 0, 0].tolist() == list(list(COLOURS.values())[int(y)])
    assert splits.preprocess == {"kind": "image_files", "mode": "RGB", "size": [8, 6], "crop": None}


def test_split_is_fixed_and_covers_every_image_once(tmp_path):
    make_folder(tmp_path)
    a = load_data(str(tmp_path), WANT, seed=0)
    b = load_data(str(tmp_path), WANT, seed=5)
    assert a.train.files == b.train.files and a.test.files == b.test.files
    every = a.train.files + a.val.files + a.test.files
    assert len(set(every)) == 30


def test_greyscale_images_give_one_channel(tmp_path):
    make_folder(tmp_path, mode="L")
    splits = load_data(str(tmp_path), WANT)
    assert splits.input_shape == (1, 6, 8)
    x, y = splits.train[0]
    assert x.shape == (1, 6, 8)
    assert torch.equal(x, torch.full_like(x, max(list(COLOURS.values())[int(y)]) // 2))


def test_one_colour_image_among_grey_ones_makes_all_rgb(tmp_path):
    make_folder(tmp_path, mode="L")
    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "cat" / "colour.png")
    splits = load_data(str(tmp_path), WANT)
    assert splits.input_shape == (3, 6, 8) and splits.train[0][0].shape == (3, 6, 8)


def test_images_are_resized_to_the_first_ones_size(tmp_path):
    make_folder(tmp_path, per_class=2, suffix=".jpg")
    Image.new("RGB", (20, 30), (0, 255, 0)).save(tmp_path / "dog" / "big.bmp")
    splits = load_data(str(tmp_path), WANT)
    every = [ds[i][0] for ds in (splits.train, splits.val, splits.test) if ds for i in range(len(ds))]
    assert len(every) == 7 and {tuple(x.shape) for x in every} == {(3, 6, 8)}


def test_train_val_test_folders_are_used_as_the_splits(tmp_path):
    make_folder(tmp_path / "train", per_class=4)
    make_folder(tmp_path / "val", per_class=2)
    make_folder(tmp_path / "test", per_class=1)
    splits = load_data(str(tmp_path), WANT)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 6, 3)
    assert splits.num_classes == 3
    assert all("/test/" in str(f) for f in splits.test.files)


def test_labels_agree_across_split_folders_with_different_classes(tmp_path):
    make_folder(tmp_path / "train", per_class=1)
    (tmp_path / "val" / "dog").mkdir(parents=True)
    Image.new("RGB", (8, 6), COLOURS["dog"]).save(tmp_path / "val" / "dog" / "0.png")
    splits = load_data(str(tmp_path), WANT)
    assert splits.train.labels == [0, 1, 2] and splits.val.labels == [1]  # cat, dog, emu


def test_missing_val_and_test_folders_give_none(tmp_path):
    make_folder(tmp_path / "train", per_class=2)
    splits = load_data(str(tmp_path), WANT)
    assert len(splits.train) == 6 and splits.val is None and splits.test is None


def test_hidden_folders_empty_folders_and_other_files_are_ignored(tmp_path):
    make_folder(tmp_path, per_class=2)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / ".ipynb_checkpoints" / "x.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / "._0.png").write_bytes(b"macOS metadata, not an image")
    (tmp_path / "README.md").write_text("about the data")
    splits = load_data(str(tmp_path), WANT)
    assert splits.num_classes == 3
    assert len(splits.train) + len(splits.val or []) + len(splits.test or []) == 6


def _read(splits, path):
    """Read the sample of ``path``, in whichever split it landed."""
    for part in (splits.train, splits.val, splits.test):
        if part is not None and str(path) in part.files:
            return part[part.files.index(str(path))]
    raise AssertionError(f"{path} is in no split")


def test_corrupt_image_is_a_user_error_naming_the_file_when_it_is_read(tmp_path):
    make_folder(tmp_path, per_class=3)
    (tmp_path / "dog" / "broken.png").write_bytes(b"this is not a png")
    splits = load_data(str(tmp_path), WANT)  # checked lazily: start-up does not open every file
    with pytest.raises(UserError, match=r"cannot read image .*dog/broken\.png.*remove or replace.*--skip-bad-files"):
        _read(splits, tmp_path / "dog" / "broken.png")


def test_truncated_image_is_caught_when_it_is_read(tmp_path):
    make_folder(tmp_path, per_class=3)
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    path = tmp_path / "emu" / "cut.png"
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(UserError, match="emu/cut.png"):
        _read(load_data(str(tmp_path), WANT), path)


def test_image_gone_after_building_is_a_user_error_naming_it(tmp_path):
    make_folder(tmp_path, per_class=2)
    splits = load_data(str(tmp_path), WANT)
    os.unlink(splits.train.files[0])
    with pytest.raises(UserError, match=str(splits.train.files[0])):
        splits.train[0]


# --------------------------------------------------------------------------- files that would exhaust memory or hang


def test_huge_first_image_without_augmentation_is_refused_naming_file_size_and_fix(tmp_path):
    make_folder(tmp_path / "train", per_class=2)
    first = tmp_path / "train" / "cat" / "0.png"  # classes and files are sorted: this one sets every size
    Image.new("L", (6000, 4000)).save(first, compress_level=1)
    with pytest.raises(UserError, match=rf"first training image {first} is 6000x4000 pixels .*--image-size"):
        load_data(str(tmp_path), WANT, augment="none")
    # with the standard augmentation (auto, for a large first image) every sample is 224x224
    assert load_data(str(tmp_path), WANT).input_shape == (3, 224, 224)


def test_large_images_after_the_first_are_resized_down(tmp_path):
    make_folder(tmp_path / "train", per_class=1)
    Image.new("RGB", (3000, 2000)).save(tmp_path / "train" / "dog" / "big.jpg")
    splits = load_data(str(tmp_path), WANT)
    big = splits.train.files.index(str(tmp_path / "train" / "dog" / "big.jpg"))
    assert splits.input_shape == (3, 6, 8) and splits.train[big][0].shape == (3, 6, 8)


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".bmp", ".gif"])
def test_truncated_photo_is_caught_when_it_is_read(tmp_path, suffix):
    make_folder(tmp_path, per_class=3, suffix=suffix)
    noise = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    path = tmp_path / "emu" / f"cut{suffix}"
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=rf"^cannot read image {path} \(.*\); remove or replace the file, or pass --skip-bad-files"):
        _read(load_data(str(tmp_path), WANT), path)


@pytest.mark.timeout(30)  # reading a FIFO would block for ever
def test_fifo_named_like_an_image_is_refused_not_skipped(tmp_path):
    make_folder(tmp_path, per_class=2)
    os.mkfifo(tmp_path / "dog" / "2.png")
    with pytest.raises(UserError, match=r"dog/2\.png is a FIFO \(named pipe\), not a regular file"):
        _read(load_data(str(tmp_path), WANT), tmp_path / "dog" / "2.png")
