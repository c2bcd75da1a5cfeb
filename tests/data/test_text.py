import os

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dlscale.data import DataSpec, load_data
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
    assert isinstance(splits.train, TensorDataset)
    x, y = splits.train[1]
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (32,)
    assert x.tolist() == list(raw[33:65]) and y.tolist() == list(raw[34:66])
    assert splits.val[0][0].tolist() == list(raw[9000:9032])  # contiguous: val starts where train ends
    assert splits.test[0][0].tolist() == list(raw[9500:9532])


def test_sequence_length_is_128_when_the_model_wants_images(tmp_path):
    write_text(tmp_path / "book.txt", 5_000)
    splits = load_data(str(tmp_path / "book.txt"), DataSpec("image", (1, 8, 8), 10))
    assert splits.kind == "tokens" and splits.input_shape == (128,) and splits.num_classes == 256
    assert splits.train.tensors[0].shape == (4500 // 129, 128)


def test_any_utf8_file_is_text(tmp_path):
    (tmp_path / "notes.md").write_text("héllo wörld, ünïcode → bytes\n" * 40)
    splits = load_data(str(tmp_path / "notes.md"), TOKENS)
    assert splits.train.tensors[0].max() > 127  # UTF-8 multi-byte characters are several byte tokens


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


def test_text_larger_than_memory_is_refused_before_reading(tmp_path):
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    path = tmp_path / "huge.txt"
    with open(path, "wb") as file:
        file.truncate(2 * physical)  # sparse: takes no disk, but its tokens would fill memory 50 times over
    with pytest.raises(UserError, match=r"huge\.txt as byte tokens needs about .* of memory but only .* is available"):
        load_data(str(path), TOKENS)
