import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from dlscale.data import DataSpec, load_data
from dlscale.data.idx import IMAGES_MAGIC
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


# --------------------------------------------------------------------------- inputs that would exhaust memory


def gzip_of_zeros(head: bytes, zero_bytes: int) -> bytes:
    """A .gz holding head, then zero_bytes zeros: repeated gzip members, cheap to build, costly to inflate."""
    block = 16 * 2**20
    return gzip.compress(head) + gzip.compress(bytes(block)) * (zero_bytes // block)


def test_gzip_whose_header_declares_terabytes_is_refused_before_inflating(tmp_path):
    make_mnist(tmp_path, compress=True)
    head = struct.pack(">4I", IMAGES_MAGIC, 2**32 - 1, 28, 28)  # 3.4 TB of pixels, from a file of 70 KB
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip_of_zeros(head, 64 * 2**20))
    expected = r"train-images-idx3-ubyte\.gz is damaged or a gzip bomb: its header declares 3\.1 TiB of images"
    with pytest.raises(UserError, match=expected):
        load_data(str(tmp_path), WANT)


PEAK_MEMORY_OF_A_LOAD = """
import resource, sys
from dlscale.data import DataSpec, load_data
from dlscale.errors import UserError
try:
    load_data(sys.argv[1], DataSpec("image", (1, 28, 28), 10))
except UserError as error:
    print(error)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in kB on Linux only")
def test_gzip_stream_longer_than_its_header_is_refused_without_inflating_the_rest(tmp_path):
    make_mnist(tmp_path, compress=True)
    head = struct.pack(">4I", IMAGES_MAGIC, 50, 6, 5)  # what make_mnist wrote: 1500 bytes of pixels
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip_of_zeros(head, 2 * 2**30))  # 2 GiB follow
    child = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_OF_A_LOAD, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    message, peak_bytes = child.stdout.splitlines()
    assert "train-images-idx3-ubyte.gz holds more than the 1500 bytes of images its header declares" in message
    assert int(peak_bytes) < 2**30, "the stream was inflated beyond what the header declares"


def test_raw_file_larger_than_memory_is_refused_before_reading(tmp_path):
    make_mnist(tmp_path)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    count = 2 * physical // 2**20  # megapixel images: twice the machine's memory in all
    path = tmp_path / "train-images-idx3-ubyte"
    with open(path, "wb") as file:
        file.write(struct.pack(">4I", IMAGES_MAGIC, count, 1024, 1024))
        file.truncate(16 + count * 2**20)  # sparse: takes no disk
    expected = r"train-images-idx3-ubyte \(.* of images by its header\) needs about .* of memory but only .* available"
    with pytest.raises(UserError, match=expected):
        load_data(str(tmp_path), WANT)


@pytest.mark.timeout(30)  # reading a FIFO would block for ever
@pytest.mark.parametrize("make", [os.mkfifo, lambda path: path.symlink_to("/dev/zero")], ids=["fifo", "dev-zero"])
def test_fifo_or_device_under_an_idx_name_is_refused_by_name(tmp_path, make):
    make_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    make(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.* is a (FIFO|character device).* not a regular file"):
        load_data(str(tmp_path), WANT)


def test_stream_longer_than_its_header_is_refused_raw_too(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(UserError, match="holds more than the 20 bytes of labels its header declares"):
        load_data(str(tmp_path), WANT)
