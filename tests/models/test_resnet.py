"""ResNet-18/50: torchvision's parameter counts and layer names, v1.5 strides, and the stem switch."""

import pytest
import torch
from torch import nn

from dlscale.models import build_model


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, expected", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_parameter_count_matches_torchvision(name, expected):
    assert _n_params(build_model(name, (3, 224, 224), 1000)) == expected


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_stem_switches_with_image_size(name):
    small = build_model(name, (3, 32, 32), 10)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    large = build_model(name, (3, 64, 64), 10)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)


def test_resnet50_is_v1_5_stride_on_the_3x3():
    block = build_model("resnet50", (3, 32, 32), 10).layer2[0]
    assert block.conv1.stride == (1, 1)
    assert block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def test_state_dict_uses_torchvision_names():
    keys = build_model("resnet50", (3, 224, 224), 1000).state_dict().keys()
    for key in ["conv1.weight", "bn1.running_mean", "layer1.0.conv3.weight",
                "layer2.0.downsample.0.weight", "layer4.2.bn3.weight", "fc.weight", "fc.bias"]:
        assert key in keys
    assert len(keys) == 320  # torchvision's resnet50 state_dict has 320 entries


def test_grey_images_and_other_class_counts():
    model = build_model("resnet18", (1, 28, 28), 10).eval()
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet50_at_224():
    model = build_model("resnet50", (3, 224, 224), 1000).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_each_residual_branch_starts_at_zero():
    # Zero-initialised last BN: every block starts as the identity, which helps deep nets train.
    model = build_model("resnet18", (3, 32, 32), 10)
    assert all(torch.all(block.bn2.weight == 0) for layer in
               (model.layer1, model.layer2, model.layer3, model.layer4) for block in layer)


def test_resnet18_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 10)
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
