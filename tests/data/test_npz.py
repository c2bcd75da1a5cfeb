import zipfile

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dlscale.data import DataSpec, load_data
from dlscale.errors import UserError

WANT = DataSpec("image", (1, 28, 28), 10)


def save(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_grey_images_get_a_channel_and_a_fixed_80_10_10_split(tmp_path):
    y = np.arange(50) % 7
    path = save(tmp_path / "d.npz", x=images((50, 9, 7)), y=y)
    splits = load_data(path, WANT)
    assert (splits.name, splits.kind, splits.input_shape, splits.num_classes) == (path, "image", (1, 9, 7), 7)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 5, 5)
    assert isinstance(splits.train, TensorDataset)
    x, label = splits.train[0]
    assert x.dtype == torch.float32 and label.dtype == torch.int64 and label.shape == ()
    labels = torch.cat([splits.train.tensors[1], splits.val.tensors[1], splits.test.tensors[1]])
    assert sorted(labels.tolist()) == sorted(y)
    train_x = splits.train.tensors[0]
    assert abs(train_x.mean().item()) < 1e-5 and abs(train_x.std(correction=0).item() - 1) < 1e-4


def test_channels_last_is_transposed_to_channels_first(tmp_path):
    nchw = images((20, 3, 5, 6))
    y = np.arange(20) % 2
    first = load_data(save(tmp_path / "nchw.npz", x=nchw, y=y), WANT)
    last = load_data(save(tmp_path / "nhwc.npz", x=nchw.transpose(0, 2, 3, 1), y=y), WANT)
    assert first.input_shape == last.input_shape == (3, 5, 6)
    assert torch.equal(first.train.tensors[0], last.train.tensors[0])


def test_uint8_is_scaled_but_float_is_taken_as_is(tmp_path):
    pixels = images((30, 4, 4))
    y = np.zeros(30, np.int64)
    as_uint8 = load_data(save(tmp_path / "u.npz", x=pixels, y=y), WANT)
    as_float = load_data(save(tmp_path / "f.npz", x=pixels.astype(np.float32) / 255, y=y), WANT)
    # standardising removes the scale, so equal results mean uint8 was divided by 255 ...
    assert torch.allclose(as_uint8.train.tensors[0], as_float.train.tensors[0], atol=1e-5)
    # ... and the same float data at another scale standardises to the same values too
    as_big = load_data(save(tmp_path / "b.npz", x=pixels.astype(np.float64) * 3, y=y), WANT)
    assert torch.allclose(as_big.train.tensors[0], as_float.train.tensors[0], atol=1e-4)


def test_two_dimensional_x_is_tabular_with_each_feature_standardised(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal([0, 100, -5], [1, 10, 0.1], size=(200, 3))
    splits = load_data(save(tmp_path / "t.npz", x=x, y=rng.integers(0, 4, 200)), WANT)
    assert splits.kind == "image" and splits.input_shape == (3,) and splits.train[0][0].shape == (3,)
    train_x = splits.train.tensors[0]
    np.testing.assert_allclose(train_x.mean(0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(train_x.std(0, correction=0).numpy(), 1, atol=1e-4)


def test_same_split_on_every_load(tmp_path):
    path = save(tmp_path / "d.npz", x=images((40, 3, 3)), y=np.arange(40) % 4)
    a, b = load_data(path, WANT, seed=0), load_data(path, WANT, seed=9)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0]) and torch.equal(a.test.tensors[1], b.test.tensors[1])


def test_broken_npz_is_a_user_error(tmp_path):
    path = tmp_path / "d.npz"
    save(path, x=images((40, 8, 8)), y=np.arange(40))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(UserError, match="not a readable .npz file.*np.savez"):
        load_data(str(path), WANT)


def test_damaged_member_inside_a_valid_zip_is_a_user_error(tmp_path):
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=images((40, 8, 8)), y=np.arange(40))
    content = bytearray(path.read_bytes())
    content[200:400] = bytes(200)  # inside x's compressed data; the zip directory at the end stays intact
    path.write_bytes(bytes(content))
    with pytest.raises(UserError, match="not a readable .npz file"):
        load_data(str(path), WANT)


def test_file_that_is_not_a_zip_is_a_user_error(tmp_path):
    (tmp_path / "d.npz").write_text("hello")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_data(str(tmp_path / "d.npz"), WANT)


def test_single_npy_array_is_a_user_error(tmp_path):
    np.save(tmp_path / "d.npy", images((4, 2, 2)))
    (tmp_path / "d.npy").rename(tmp_path / "d.npz")
    with pytest.raises(UserError, match="not a zip archive.*np.savez"):
        load_data(str(tmp_path / "d.npz"), WANT)


def test_missing_y_is_a_user_error(tmp_path):
    path = save(tmp_path / "d.npz", x=images((10, 4, 4)), labels=np.arange(10))
    with pytest.raises(UserError, match=r"no array y \(it has \['labels', 'x'\]\)"):
        load_data(path, WANT)


def test_length_mismatch_is_a_user_error(tmp_path):
    path = save(tmp_path / "d.npz", x=images((10, 4, 4)), y=np.arange(9))
    with pytest.raises(UserError, match="10 samples but y has 9 labels"):
        load_data(path, WANT)


def test_object_arrays_are_a_user_error(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros(3), np.zeros(4)]
    path = save(tmp_path / "d.npz", x=ragged, y=np.arange(2))
    with pytest.raises(UserError, match="Python objects"):
        load_data(path, WANT)


def test_float_y_are_regression_targets_used_as_given(tmp_path):
    path = save(tmp_path / "d.npz", x=images((10, 4, 4)), y=np.arange(20).reshape(10, 2) * 0.5)
    splits = load_data(path, WANT)
    assert (splits.targets, splits.num_classes) == ("values", 2)
    target = splits.train[0][1]
    assert target.dtype == torch.float32 and target.shape == (2,) and float(target.sum() * 2) % 1 == 0


def test_y_neither_integer_nor_float_is_a_user_error(tmp_path):
    path = save(tmp_path / "d.npz", x=images((10, 4, 4)), y=np.ones(10, bool))
    with pytest.raises(UserError, match="neither integer class labels nor float targets.*astype"):
        load_data(path, WANT)


@pytest.mark.parametrize(
    "x, y, fragment",
    [
        (np.arange(10.0), np.arange(10), "has shape"),
        (np.array(["a", "b"]), np.arange(2), "not numbers"),
        (np.zeros((0, 3)), np.zeros(0, np.int64), "no samples"),
        (np.zeros((2, 3)), np.array([0, -1]), "negative"),
        (np.zeros((2, 3)), np.zeros((2, 1), np.int64), "one integer label per sample"),
        (np.zeros((2, 3)), np.zeros((2, 1, 1)), "float regression targets of shape"),
    ],
)
def test_other_bad_arrays_are_user_errors(tmp_path, x, y, fragment):
    path = save(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(UserError, match=fragment):
        load_data(path, WANT)


# --------------------------------------------------------------------------- values and sizes that would break training


@pytest.mark.parametrize(
    "y, shown",
    [
        (np.array([0, 1, 2, 3, 4, 2**31, 6, 0, 1, 2]), "label 2147483648 at index 5"),
        (np.array([0, 1, 2, 3, 4, 5, 6, 0, 1, -3]), "label -3 at index 9"),
        (np.array([0, 1, 2, 3, 4, 5, 6, 0, 2**64 - 1, 2], np.uint64), "label 18446744073709551615 at index 8"),
    ],
    ids=["2**31", "negative", "uint64-max"],
)
def test_labels_out_of_range_are_refused_naming_file_value_and_index(tmp_path, y, shown):
    path = save(tmp_path / "d.npz", x=images((10, 4, 4)), y=y)
    with pytest.raises(UserError, match=f"^y in {path} holds {shown}; .*renumber"):
        load_data(path, WANT)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300], ids=["nan", "inf", "-inf", "beyond-float32"])
def test_non_finite_sample_is_refused_naming_file_and_sample(tmp_path, bad):
    x = np.random.default_rng(0).normal(size=(40, 3, 5)).astype(np.float64)
    x[17, 2, 4] = bad
    path = save(tmp_path / "d.npz", x=x, y=np.arange(40) % 4)
    with pytest.raises(UserError, match=rf"^x in {path} holds non-finite values \(NaN or inf.* at sample 17; "):
        load_data(path, WANT)


def test_header_declaring_more_than_memory_is_refused_before_numpy_allocates(tmp_path):
    """A .npy header is a promise: one declaring 4 TiB in a 200-byte archive must not be allocated."""
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x.npy", "w") as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**20)}
            np.lib.format.write_array_header_1_0(member, header)
        with archive.open("y.npy", "w") as member:
            np.save(member, np.zeros(2**20, np.int64))
    with pytest.raises(UserError, match=rf"^{path} needs about 12\.0 TiB of memory but only .* is available"):
        load_data(str(path), WANT)
