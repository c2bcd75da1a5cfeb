import gzip
import struct

import numpy as np
import pytest
import torch

from dlscale.data import DataSpec, load_data
from dlscale.data.splits import split_indices
from dlscale.errors import UserError

WANT = DataSpec("image", (1, 28, 28), 10)


def write_idx(path, array, magic=None, compress=False):
    """An IDX file as MNIST ships it: magic, big-endian dimensions, then uint8 values."""
    array = np.asarray(array, np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    content = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def make_mnist(directory, n_train=50, n_test=20, compress=False, with_test=True):
    """Tiny MNIST-like set: 6x5 images whose pixels are label * 20 plus noise."""
    rng = np.random.default_rng(0)
    directory.mkdir(exist_ok=True)
    sets = [("train", n_train)] + ([("t10k", n_test)] if with_test else [])
    arrays = {}
    for prefix, n in sets:
        labels = np.arange(n) % 10
        images = (labels[:, None, None] * 20 + rng.integers(0, 20, size=(n, 6, 5))).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, compress=compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress=compress)
        arrays[prefix] = (images, labels)
    return arrays


def test_train_gives_train_and_val_and_t10k_gives_test(tmp_path):
    arrays = make_mnist(tmp_path / "mnist")
    splits = load_data(str(tmp_path / "mnist"), WANT)
    assert splits.name == str(tmp_path / "mnist")
    assert (splits.kind, splits.input_shape, splits.num_classes) == ("image", (1, 6, 5), 10)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45, 5, 20)
    x, y = splits.train[0]
    assert x.shape == (1, 6, 5) and x.dtype == torch.float32 and y.dtype == torch.int64
    # test is t10k in file order, standardised with the train split's mean and std
    images, labels = arrays["t10k"]
    assert splits.test.tensors[1].tolist() == labels.tolist()
    train_rows = split_indices(50, val_pct=10, test_pct=0)[0]  # the fixed 90/10 split of the train file
    train_pixels = arrays["train"][0][train_rows] / 255.0
    expected = (images / 255.0 - train_pixels.mean()) / train_pixels.std()
    np.testing.assert_allclose(splits.test.tensors[0][:, 0].numpy(), expected, atol=1e-4)


def test_train_split_is_standardised(tmp_path):
    make_mnist(tmp_path)
    x = load_data(str(tmp_path), WANT).train.tensors[0]
    assert abs(x.mean().item()) < 1e-5 and abs(x.std(correction=0).item() - 1) < 1e-4


def test_gzipped_files_read_the_same_as_raw(tmp_path):
    make_mnist(tmp_path / "raw")
    make_mnist(tmp_path / "gz", compress=True)
    raw = load_data(str(tmp_path / "raw"), WANT)
    gz = load_data(str(tmp_path / "gz"), WANT)
    assert torch.equal(raw.train.tensors[0], gz.train.tensors[0])
    assert torch.equal(raw.test.tensors[1], gz.test.tensors[1])


def test_without_t10k_the_train_files_are_split_80_10_10(tmp_path):
    make_mnist(tmp_path, n_train=50, with_test=False)
    splits = load_data(str(tmp_path), WANT)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 5, 5)


def test_split_is_the_same_on_every_load_and_seed(tmp_path):
    make_mnist(tmp_path)
    a = load_data(str(tmp_path), WANT, seed=0)
    b = load_data(str(tmp_path), WANT, seed=99)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0]) and torch.equal(a.val.tensors[1], b.val.tensors[1])


def test_mirror_spelling_with_a_dot_is_found(tmp_path):
    arrays = make_mnist(tmp_path)
    for path in tmp_path.iterdir():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    splits = load_data(str(tmp_path), WANT)
    assert splits.test.tensors[1].tolist() == arrays["t10k"][1].tolist()


def test_wrong_magic_is_a_user_error(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(50) % 10, magic=0x00000803)
    with pytest.raises(UserError, match="not an IDX labels file.*0x00000803"):
        load_data(str(tmp_path), WANT)


def test_truncated_file_is_a_user_error(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(UserError, match="truncated.*download it again"):
        load_data(str(tmp_path), WANT)


def test_file_shorter_than_its_header_is_a_user_error(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:9])
    with pytest.raises(UserError, match="truncated"):
        load_data(str(tmp_path), WANT)


def test_broken_gzip_is_a_user_error(tmp_path):
    make_mnist(tmp_path, compress=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(UserError, match="cannot read .*train-images-idx3-ubyte.gz"):
        load_data(str(tmp_path), WANT)


def test_image_and_label_count_mismatch_is_a_user_error(tmp_path):
    make_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(49) % 10)
    with pytest.raises(UserError, match="50 images but .* 49 labels"):
        load_data(str(tmp_path), WANT)


def test_labels_without_images_is_a_user_error(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with pytest.raises(UserError, match="not train-images-idx3-ubyte"):
        load_data(str(tmp_path), WANT)


def test_images_without_labels_is_a_user_error(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte but not t10k-labels-idx1-ubyte"):
        load_data(str(tmp_path), WANT)


def test_test_files_alone_are_a_user_error(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="no train-images-idx3-ubyte"):
        load_data(str(tmp_path), WANT)
