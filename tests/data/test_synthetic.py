import pytest
import torch
from torch.utils.data import TensorDataset

from dlscale.data import DataSpec, load_data, synthetic
from dlscale.errors import UserError

IMAGES = DataSpec(kind="image", input_shape=(3, 16, 16), num_classes=10)
TOKENS = DataSpec(kind="tokens", input_shape=(64,), num_classes=50)


def test_images_are_shaped_by_want_with_default_sizes():
    splits = load_data("synthetic", IMAGES)
    assert (splits.name, splits.kind, splits.input_shape, splits.num_classes) == ("synthetic", "image", (3, 16, 16), 10)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2048, 256, 256)
    assert isinstance(splits.train, TensorDataset)
    x, y = splits.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert y.shape == () and y.dtype == torch.int64
    labels = splits.train.tensors[1]
    assert labels.min() >= 0 and labels.max() < 10
    assert torch.bincount(labels, minlength=10).min() > 100  # spread over all classes


def test_sample_count_sets_train_and_an_eighth_for_val_and_test():
    splits = load_data("synthetic", IMAGES, synthetic_samples=80)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 10, 10)


@pytest.mark.parametrize("name, shape", [("synthetic:1x28x28", (1, 28, 28)), ("synthetic:3x32x32", (3, 32, 32))])
def test_image_shape_override(name, shape):
    splits = load_data(name, TOKENS, synthetic_samples=16)
    assert splits.kind == "image" and splits.input_shape == shape
    assert splits.train.tensors[0].shape == (16, *shape)
    assert splits.num_classes == TOKENS.num_classes


def test_tabular_want_gives_feature_vectors():
    splits = load_data("synthetic", DataSpec("image", (20,), 3), synthetic_samples=32)
    assert splits.kind == "image" and splits.input_shape == (20,)
    assert splits.train.tensors[0].shape == (32, 20)


def test_tokens_are_next_token_pairs_over_the_vocabulary():
    splits = load_data("synthetic", TOKENS, synthetic_samples=40)
    assert (splits.kind, splits.input_shape, splits.num_classes) == ("tokens", (64,), 50)
    x, y = splits.train.tensors
    assert x.shape == y.shape == (40, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert x.min() >= 0 and x.max() < 50 and len(torch.unique(x)) > 40


def test_sequence_length_override_gives_tokens_even_when_images_are_wanted():
    splits = load_data("synthetic:128", IMAGES, synthetic_samples=8)
    assert splits.kind == "tokens" and splits.input_shape == (128,)
    assert splits.train.tensors[0].shape == (8, 128)


@pytest.mark.parametrize("want", [IMAGES, TOKENS])
def test_same_seed_same_data_other_seed_other_data(want):
    a = load_data("synthetic", want, seed=1, synthetic_samples=32)
    b = load_data("synthetic", want, seed=1, synthetic_samples=32)
    c = load_data("synthetic", want, seed=2, synthetic_samples=32)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(a.test.tensors[1], b.test.tensors[1])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert not torch.equal(a.train.tensors[0][:4], a.val.tensors[0][:4])  # splits are different samples


def test_image_classes_are_separable_by_class_means():
    splits = load_data("synthetic", IMAGES, synthetic_samples=1000)
    x, y = splits.train.tensors[0].flatten(1), splits.train.tensors[1]
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    test_x, test_y = splits.test.tensors[0].flatten(1), splits.test.tensors[1]
    predicted = torch.cdist(test_x, means).argmin(1)
    assert (predicted == test_y).float().mean() > 0.8  # chance is 0.1


def test_image_classes_differ_in_channel_means_so_pooling_models_can_learn():
    splits = load_data("synthetic", IMAGES, synthetic_samples=1000)
    pooled = splits.train.tensors[0].mean(dim=(2, 3))  # what a global-average-pool model sees
    y = splits.train.tensors[1]
    means = torch.stack([pooled[y == c].mean(0) for c in range(10)])
    predicted = torch.cdist(splits.test.tensors[0].mean(dim=(2, 3)), means).argmin(1)
    assert (predicted == splits.test.tensors[1]).float().mean() > 0.5


def test_next_token_is_mostly_predictable_from_the_current_one():
    splits = load_data("synthetic", TOKENS, synthetic_samples=200)
    x, y = splits.train.tensors
    counts = torch.zeros(50, 50)
    counts.index_put_((x.flatten(), y.flatten()), torch.ones(x.numel()), accumulate=True)
    bigram = counts.argmax(1)
    test_x, test_y = splits.test.tensors
    accuracy = (bigram[test_x] == test_y).float().mean()
    assert accuracy > 0.85  # chance is 0.02


def test_large_data_is_generated_lazily_and_matches_in_memory(monkeypatch):
    in_memory = load_data("synthetic", IMAGES, seed=3, synthetic_samples=16)
    monkeypatch.setattr(synthetic, "IN_MEMORY_LIMIT_BYTES", 0)
    lazy = load_data("synthetic", IMAGES, seed=3, synthetic_samples=16)
    assert not isinstance(lazy.train, TensorDataset) and len(lazy.train) == 16 and len(lazy.val) == 2
    for i in (0, 15):
        x, y = lazy.train[i]
        assert torch.equal(x, in_memory.train.tensors[0][i]) and torch.equal(y, in_memory.train.tensors[1][i])
        assert y.dtype == torch.int64 and y.shape == ()
    with pytest.raises(IndexError):
        lazy.train[16]


def test_lazy_tokens_match_in_memory(monkeypatch):
    in_memory = load_data("synthetic", TOKENS, synthetic_samples=4)
    monkeypatch.setattr(synthetic, "IN_MEMORY_LIMIT_BYTES", 0)
    x, y = load_data("synthetic", TOKENS, synthetic_samples=4).test[0]
    assert torch.equal(x, in_memory.test.tensors[0][0]) and torch.equal(y, in_memory.test.tensors[1][0])


def test_imagenet_sized_request_is_lazy_and_cheap():
    splits = load_data("synthetic:3x224x224", DataSpec("image", (3, 224, 224), 1000))  # 2048 x 600 KB = 1.2 GB
    assert not isinstance(splits.train, TensorDataset)
    x, y = splits.train[2047]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and 0 <= y < 1000


@pytest.mark.parametrize(
    "name", ["synthetic:3x32", "synthetic:abc", "synthetic:", "synthetic:0x4x4", "synthetic:3x32x32x2"]
)
def test_bad_shape_override_is_a_user_error(name):
    with pytest.raises(UserError, match="synthetic:CxHxW"):
        load_data(name, IMAGES)


def test_non_positive_sample_count_is_a_user_error():
    with pytest.raises(UserError, match="at least 1 sample"):
        load_data("synthetic", IMAGES, synthetic_samples=0)


def test_sample_count_beyond_memory_is_refused_naming_bytes_and_memory():
    with pytest.raises(
        UserError,
        match=r"^--synthetic-samples 100000000000 \(8 bytes per sample .*\) needs about 745\.1 GiB of memory "
        r"but only .* is available \(.+\); give fewer samples",
    ):
        load_data("synthetic", IMAGES, synthetic_samples=100_000_000_000)


def test_sample_shape_beyond_memory_is_refused():
    with pytest.raises(UserError, match=r"^one synthetic sample of shape 3x1000000x1000000 needs about 10\.9 TiB"):
        load_data("synthetic:3x1000000x1000000", IMAGES)
