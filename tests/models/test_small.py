"""The MLP and the small CNN: shapes, and that they actually learn."""

import pytest
import torch
import torch.nn.functional as F

from dlscale.models import build_model


def test_mlp_flattens_images_and_tabular_rows():
    assert build_model("mlp", (1, 8, 8), 10)(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert build_model("mlp", (30,), 2)(torch.randn(4, 30)).shape == (4, 2)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 9, 13)])
def test_cnn_takes_any_image_size_of_at_least_8x8(shape):
    model = build_model("cnn", shape, 10).eval()
    assert model(torch.randn(3, *shape)).shape == (3, 10)


def test_cnn_is_small():
    # A few ms per batch of 64 on a 2-core CPU needs a small net; keep it under 100k parameters.
    n = sum(p.numel() for p in build_model("cnn", (1, 8, 8), 10).parameters())
    assert 50_000 < n < 100_000


def _learnable_images(n, classes=4, seed=0):
    """Each class is a fixed random 8x8 pattern; samples are that pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 1, 8, 8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = templates[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=g)
    return x, y


def test_cnn_training_reduces_loss():
    torch.manual_seed(0)
    x, y = _learnable_images(256)
    model = build_model("cnn", (1, 8, 8), 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(40):
        idx = torch.arange(step * 64, step * 64 + 64) % len(x)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_cnn_reaches_97_percent_on_digits_in_a_few_epochs():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    train, test = perm[:1437], perm[1437:]

    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):
        model.train()
        for batch in train[torch.randperm(len(train))].split(64):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy >= 0.97
