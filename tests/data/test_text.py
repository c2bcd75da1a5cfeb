import os

import numpy as np
import pytest
import torch
from dlscale.data import DataSpec, load_data
from dlscale.data.batches import BatchOrder, eval_batches, first_samples, train_batches
from dlscale.data.loader import Feed
from dlscale.data.text import TokenWindows
from dlscale.errors import UserError

TOKENS = DataSpec("tokens", (32,), 256)


def write_text(path, n_bytes):
    text = ("the quick brown fox jumps over the lazy dog. " * (n_bytes // 45 + 1))[:n_bytes]
    path.write_text(text)
    return path.read_bytes()


def test_bytes_become_next_token_windows_split_90_5_5(tmp_path):
    raw = write_text(tmp_path / "book.txt", 10_000)
    splits = load_data(str(tmp_path / "book.txt"), TOKENS)
    assert (splits.kind, splits.input_shape, splits.num_classes) == ("tokens", (32,), 256)
    # 9000 / 500 / 500 bytes, cut into windows of 33
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9000 // 33, 500 // 33, 500 // 33)
    assert isinstance(splits.train, TokenWindows) and isinstance(splits.train.tokens, np.memmap)
    x, y = splits.train[1]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (32,)
    assert x.tolist() == list(raw[33:65]) and y.tolist() == list(raw[34:66])
    assert splits.val[0][0].tolist() == list(raw[9000:9032])  # contiguous: val starts where train ends
    assert splits.test[0][0].tolist() == list(raw[9500:9532])


def test_sequence_length_is_128_when_the_model_wants_images(tmp_path):
    write_text(tmp_path / "book.txt", 5_000)
    splits = load_data(str(tmp_path / "book.txt"), DataSpec("image", (1, 8, 8), 10))
    assert splits.kind == "tokens" and splits.input_shape == (128,) and splits.num_classes == 256
    assert first_samples(splits.train, 1000)[0].shape == (4500 // 129, 128)


def test_any_utf8_file_is_text(tmp_path):
    (tmp_path / "notes.md").write_text("héllo wörld, ünïcode → bytes\n" * 40)
    splits = load_data(str(tmp_path / "notes.md"), TOKENS)
    assert first_samples(splits.train, 1000)[0].max() > 127  # UTF-8 multi-byte characters are several byte tokens


def test_val_and_test_too_short_for_a_window_are_none(tmp_path):
    write_text(tmp_path / "short.txt", 400)
    splits = load_data(str(tmp_path / "short.txt"), TOKENS)
    assert len(splits.train) == 360 // 33 and splits.val is None and splits.test is None


def test_exactly_enough_bytes_for_one_window_loads(tmp_path):
    write_text(tmp_path / "tiny.txt", 37)  # 37 * 9 // 10 = 33 = seq_len + 1
    assert len(load_data(str(tmp_path / "tiny.txt"), TOKENS).train) == 1


def test_text_too_short_is_a_user_error_saying_how_much_is_needed(tmp_path):
    write_text(tmp_path / "tiny.txt", 36)
    with pytest.raises(UserError, match="36 bytes.*at least 37 bytes"):
        load_data(str(tmp_path / "tiny.txt"), TOKENS)


def test_empty_text_is_a_user_error(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(UserError, match="0 bytes"):
        load_data(str(tmp_path / "empty.txt"), TOKENS)


def test_binary_file_that_is_not_text_is_a_user_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match="neither text nor an .npz.*give the directory"):
        load_data(str(path), TOKENS)


def test_a_batch_is_cut_from_the_file_as_its_windows_are(tmp_path):
    """Training and evaluation gather whole batches from the memory map: the same windows,
    in the same order, as indexing one sample at a time."""
    write_text(tmp_path / "book.txt", 10_000)
    train = load_data(str(tmp_path / "book.txt"), TOKENS).train
    order = BatchOrder(num_samples=len(train), global_batch=8, seed=3)
    permutation = order.permutation(0)
    for step, (x, y) in enumerate(train_batches(Feed(train), order, epoch=0)):
        index = order.local_indices(permutation, step)
        assert torch.equal(x, torch.stack([train[int(i)][0] for i in index]))
        assert torch.equal(y, torch.stack([train[int(i)][1] for i in index]))
    assert step == len(train) // 8 - 1
    seen = torch.cat([x for x, _ in eval_batches(Feed(train), 10)])
    assert torch.equal(seen, torch.stack([train[i][0] for i in range(len(train))]))


def test_text_larger_than_memory_is_memory_mapped_not_read(tmp_path):
    """A sparse file twice this machine's memory loads at once and yields batches: the bytes
    are never read whole, so resident memory stays far below the file's size."""
    import resource

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    path = tmp_path / "huge.txt"
    with open(path, "wb") as file:
        file.truncate(2 * physical)  # sparse: no disk taken, reads as zero bytes
    splits = load_data(str(path), TOKENS)
    assert len(splits.train) == (2 * physical * 9 // 10) // 33
    x, y = first_samples(splits.train, 64)
    assert x.shape == (64, 32) and int(x.max()) == 0
    last = splits.train[len(splits.train) - 1][0]  # the far end of the file
    assert last.shape == (32,)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_kib * 1024 < physical / 4, f"peak resident memory {peak_kib} KiB for a {2 * physical} byte file"


def test_the_head_of_a_split_keeps_its_kind_and_its_first_samples(tmp_path):
    """--val-samples N validates on the first N samples without losing the fast batch path."""
    from torch.utils.data import Subset, TensorDataset

    from dlscale.data.batches import head

    write_text(tmp_path / "book.txt", 10_000)
    val = load_data(str(tmp_path / "book.txt"), TOKENS).train
    cut = head(val, 5)
    assert isinstance(cut, TokenWindows) and len(cut) == 5
    assert torch.equal(first_samples(cut, 5)[0], first_samples(val, 5)[0])
    tensors = TensorDataset(torch.arange(10), torch.arange(10))
    assert isinstance(head(tensors, 3), TensorDataset) and head(tensors, 3).tensors[0].tolist() == [0, 1, 2]
    assert head(tensors, None) is tensors and head(tensors, 99) is tensors and head(None, 3) is None
    assert isinstance(head(Subset(tensors, range(10)), 4), Subset) and len(head(Subset(tensors, range(10)), 4)) == 4
