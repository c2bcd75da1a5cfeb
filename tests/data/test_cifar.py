import collections
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from dlscale.data import DataSpec, load_data
from dlscale.data.cifar import read_batch
from dlscale.errors import UserError

WANT = DataSpec("image", (3, 32, 32), 10)


def make_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }


def make_cifar(directory, n_batches=2, per_batch=20, test=10, protocol=pickle.DEFAULT_PROTOCOL):
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, n_batches + 1)] + (["test_batch"] if test else [])
    sizes = [per_batch] * n_batches + ([test] if test else [])
    for seed, (name, n) in enumerate(zip(names, sizes)):
        with open(directory / name, "wb") as f:
            pickle.dump(make_batch(n, seed), f, protocol=protocol)
    (directory / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}))


def test_batches_give_train_val_and_test(tmp_path):
    make_cifar(tmp_path)
    splits = load_data(str(tmp_path), WANT)
    assert (splits.kind, splits.input_shape, splits.num_classes) == ("image", (3, 32, 32), 10)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (36, 4, 10)
    x, y = splits.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert splits.test.tensors[1].tolist() == make_batch(10, 2)[b"labels"]
    x = splits.train.tensors[0]
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3), correction=0).numpy(), 1, atol=1e-4)


def test_rows_are_red_then_green_then_blue_planes(tmp_path):
    batch = make_batch(3, 0)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump(batch, f)
    images, labels = read_batch(tmp_path / "data_batch_1")
    assert images.shape == (3, 3, 32, 32) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert images[1, 1, 0, 0] == batch[b"data"][1, 1024]  # first green pixel
    assert images[2, 2, 31, 31] == batch[b"data"][2, 3071]  # last blue pixel


def test_unpacked_tarball_directory_is_found_inside_the_path(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-py", n_batches=5, per_batch=4)
    splits = load_data(str(tmp_path), WANT)
    assert len(splits.train) + len(splits.val) == 20 and len(splits.test) == 10


def test_without_test_batch_the_data_is_split_80_10_10(tmp_path):
    make_cifar(tmp_path, n_batches=1, per_batch=30, test=0)
    splits = load_data(str(tmp_path), WANT)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 3, 3)


@pytest.mark.parametrize("protocol", [2, 5])
def test_old_and_new_pickle_protocols_load(tmp_path, protocol):
    make_cifar(tmp_path / "default")
    make_cifar(tmp_path / "other", protocol=protocol)
    default = load_data(str(tmp_path / "default"), WANT)
    other = load_data(str(tmp_path / "other"), WANT)
    assert torch.equal(default.train.tensors[0], other.train.tensors[0])


class Python2Pickler(pickle._Pickler):
    """Writes pickles the way the original CIFAR-10 files were written: Python 2 byte strings, numpy.core names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{obj.__qualname__}\n".encode())
        self.memoize(obj)


def test_python2_pickles_like_the_original_files_load(tmp_path):
    batch = make_batch(12, 0)
    with open(tmp_path / "data_batch_1", "wb") as f:
        Python2Pickler(f, protocol=2).dump(batch)
    assert b"numpy.core.multiarray\n_reconstruct" in (tmp_path / "data_batch_1").read_bytes()
    images, labels = read_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(images.reshape(12, 3072), batch[b"data"])
    assert labels.tolist() == batch[b"labels"]


def test_pickle_naming_another_class_is_refused(tmp_path):
    make_cifar(tmp_path)
    batch = collections.OrderedDict(make_batch(20, 0))
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(UserError, match="not a CIFAR-10 batch.*collections.OrderedDict"):
        load_data(str(tmp_path), WANT)


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    make_cifar(tmp_path / "cifar")
    marker = tmp_path / "pwned"
    (tmp_path / "cifar" / "test_batch").write_bytes(pickle.dumps({b"data": RunsACommand(marker), b"labels": [1]}))
    with pytest.raises(UserError, match="not a CIFAR-10 batch.*system.*nothing was run"):
        load_data(str(tmp_path / "cifar"), WANT)
    assert not marker.exists()


def test_garbage_file_is_a_user_error(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"\x00garbage, not a pickle at all")
    with pytest.raises(UserError, match="data_batch_2 is not a CIFAR-10 batch"):
        load_data(str(tmp_path), WANT)


def test_truncated_pickle_is_a_user_error(tmp_path):
    make_cifar(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="test_batch is not a CIFAR-10 batch"):
        load_data(str(tmp_path), WANT)


@pytest.mark.parametrize(
    "batch, fragment",
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'data' and 'labels'"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "N x 3072 uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "list of 2 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"cat", b"dog"]}, "list of 2 integers"),
        ([1, 2, 3], "holds a list"),
    ],
)
def test_wrong_contents_are_a_user_error(tmp_path, batch, fragment):
    make_cifar(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(UserError, match=fragment):
        load_data(str(tmp_path), WANT)


def test_test_batch_alone_is_a_user_error(tmp_path):
    make_cifar(tmp_path, n_batches=0)
    with pytest.raises(UserError, match="no data_batch_1..5"):
        load_data(str(tmp_path), WANT)


@pytest.mark.timeout(30)  # reading a FIFO would block for ever
@pytest.mark.parametrize("name", ["data_batch_2", "test_batch"])
def test_fifo_under_a_batch_name_is_refused_by_name(tmp_path, name):
    make_cifar(tmp_path)
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)
    with pytest.raises(UserError, match=rf"{name} is a FIFO \(named pipe\), not a regular file"):
        load_data(str(tmp_path), WANT)


def test_label_beyond_any_class_count_is_refused_naming_it(tmp_path):
    make_cifar(tmp_path)
    batch = make_batch(20, seed=0)
    batch[b"labels"][4] = 2**31
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(UserError, match=r"'labels' in .*data_batch_1 holds label 2147483648 at index 4"):
        load_data(str(tmp_path), WANT)
