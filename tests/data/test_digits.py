import torch
from torch.utils.data import TensorDataset

from dlscale.data import DataSpec, load_data

WANT = DataSpec(kind="image", input_shape=(3, 32, 32), num_classes=100)  # real data ignores it


def test_digits_shapes_sizes_and_labels():
    splits = load_data("digits", WANT)
    assert (splits.name, splits.kind, splits.input_shape, splits.num_classes) == ("digits", "image", (1, 8, 8), 10)
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797
    assert sizes[1] == sizes[2] == 1797 * 15 // 100
    for split in (splits.train, splits.val, splits.test):
        assert isinstance(split, TensorDataset)
        x, y = split[0]
        assert x.shape == (1, 8, 8) and x.dtype == torch.float32
        assert y.shape == () and y.dtype == torch.int64
    labels = torch.cat([s.tensors[1] for s in (splits.train, splits.val, splits.test)])
    assert labels.min() == 0 and labels.max() == 9
    assert torch.bincount(labels).min() > 150  # every digit is present


def test_digits_are_standardised_with_train_statistics():
    splits = load_data("digits", WANT)
    x = splits.train.tensors[0]
    assert abs(x.mean().item()) < 1e-4
    assert abs(x.std(correction=0).item() - 1) < 1e-4
    assert abs(splits.test.tensors[0].mean().item()) < 0.1  # near, not forced to, zero


def test_digits_split_is_the_same_for_every_seed():
    a = load_data("digits", WANT, seed=0)
    b = load_data("digits", WANT, seed=123)
    for split_a, split_b in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(split_a.tensors[0], split_b.tensors[0])
        assert torch.equal(split_a.tensors[1], split_b.tensors[1])


def _images(dataset):
    return {tuple(row.tolist()) for row in dataset.tensors[0].flatten(1)}


def test_digits_splits_do_not_share_images():
    splits = load_data("digits", WANT)
    # digits has a few duplicate images, so allow a handful, but a leaked split would share hundreds
    assert len(_images(splits.train) & _images(splits.test)) < 5
    assert len(_images(splits.val) & _images(splits.test)) < 5


def test_digits_read_from_the_shipped_csv_equal_sklearns_loader():
    import numpy as np
    from sklearn.datasets import load_digits as sklearn_digits

    from dlscale.data.digits import read_digits

    pixels, labels = read_digits()
    reference = sklearn_digits()
    assert np.array_equal(pixels, reference.data) and np.array_equal(labels, reference.target)
