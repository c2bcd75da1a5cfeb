import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dlscale.data.splits import image_splits, split_arrays, split_indices


def test_split_indices_partition_all_samples_with_the_asked_sizes():
    train, val, test = split_indices(1000, val_pct=10, test_pct=15)
    assert (len(train), len(val), len(test)) == (750, 100, 150)
    together = np.concatenate([train, val, test])
    assert sorted(together.tolist()) == list(range(1000))


def test_split_indices_are_fixed_and_shuffled():
    first = split_indices(200, 10, 10)
    second = split_indices(200, 10, 10)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert first[1].tolist() != list(range(20))  # val is not simply the first samples


def test_split_arrays_gives_none_for_empty_splits():
    x = np.arange(5)
    train, val, test = split_arrays(x, x, val_pct=10, test_pct=0)
    assert val is None and test is None
    np.testing.assert_array_equal(train[0], x)


def test_image_splits_standardise_every_split_with_train_statistics():
    rng = np.random.default_rng(0)
    train_x = rng.normal([[[[1.0]], [[5.0]]]], [[[[2.0]], [[0.5]]]], size=(400, 2, 3, 3)).astype(np.float32)
    val_x = train_x[:50] + 10.0  # shifted: must NOT be standardised with its own mean
    y = np.zeros(400, np.int64)

    splits = image_splits("t", (train_x, y), (val_x, y[:50]), None, num_classes=1)

    assert isinstance(splits.train, TensorDataset) and splits.test is None
    x = splits.train.tensors[0]
    assert x.dtype == torch.float32 and splits.input_shape == (2, 3, 3)
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), [0, 0], atol=1e-5)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3), correction=0).numpy(), [1, 1], atol=1e-4)
    train_std = train_x.std(axis=(0, 2, 3))
    expected_val_shift = 10.0 / train_std  # same train mean/std applied, so the +10 survives
    got_shift = splits.val.tensors[0].mean(dim=(0, 2, 3)).numpy() - x[:50].mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(got_shift, expected_val_shift, rtol=1e-4)


def test_image_splits_scale_uint8_to_unit_range_before_standardising():
    pixels = np.array([0, 255, 0, 255], np.uint8).reshape(4, 1)  # tabular, one feature
    y = np.arange(4)
    splits = image_splits("t", (pixels, y), None, None, num_classes=4)
    # [0, 1, 0, 1] has mean 0.5 and std 0.5
    assert splits.train.tensors[0].flatten().tolist() == [-1.0, 1.0, -1.0, 1.0]
    assert splits.train.tensors[1].dtype == torch.int64


def test_constant_channel_becomes_zero_not_nan():
    x = np.full((10, 1, 2, 2), 3.0, np.float32)
    splits = image_splits("t", (x, np.zeros(10, np.int64)), None, None, num_classes=1)
    assert torch.equal(splits.train.tensors[0], torch.zeros(10, 1, 2, 2))


def test_image_splits_do_not_modify_the_callers_arrays():
    x = np.ones((4, 1, 2, 2), np.float32) * np.arange(4, dtype=np.float32)[:, None, None, None]
    before = x.copy()
    image_splits("t", (x, np.arange(4)), None, None, num_classes=4)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("n", [1, 2, 9])
def test_tiny_data_keeps_at_least_one_training_sample(n):
    train, val, test = split_indices(n, 10, 10)
    assert len(train) >= 1 and len(train) + len(val) + len(test) == n
