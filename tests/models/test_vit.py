"""ViT-Tiny: patch size follows the image size, timm's parameter count, and size checks."""

import pytest
import torch

from dlscale.errors import UserError
from dlscale.models import build_model


def test_parameter_count_matches_vit_tiny_patch16_224():
    model = build_model("vit-tiny", (3, 224, 224), 1000)
    assert sum(p.numel() for p in model.parameters()) == 5_717_416


@pytest.mark.parametrize(
    "shape, patch, tokens", [((3, 32, 32), 4, 65), ((3, 224, 224), 16, 197), ((1, 64, 96), 16, 25)]
)
def test_patch_size_follows_image_size(shape, patch, tokens):
    model = build_model("vit-tiny", shape, 10).eval()
    assert model.patch_size == patch
    assert model.pos_embed.shape == (1, tokens, 192)  # patches + the class token
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_vit_tiny_shape():
    model = build_model("vit-tiny", (3, 32, 32), 10)
    assert len(model.blocks) == 12
    assert model.blocks[0].attn.n_heads == 3
    assert model.blocks[0].mlp[0].out_features == 768


@pytest.mark.parametrize("shape", [(3, 30, 30), (3, 100, 100), (3, 2, 2)])
def test_image_not_divisible_by_patch_is_refused(shape):
    with pytest.raises(UserError, match="divisible by"):
        build_model("vit-tiny", shape, 10)


def test_vit_backward():
    model = build_model("vit-tiny", (3, 32, 32), 10)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.cls_token.grad is not None and model.patch_embed.weight.grad is not None
