"""torchvision:NAME and timm:NAME: install hints, name checks, and never any pretrained weights."""

import sys
import types

import pytest
from torch import nn

from dlscale.errors import UserError
from dlscale.models import ModelInfo, build_model, model_info


class _Recorder:
    """Stands in for a library's model builder and remembers how it was called."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return nn.Linear(1, 1)


@pytest.fixture
def fake_torchvision(monkeypatch):
    get_model = _Recorder()
    module = types.ModuleType("torchvision")
    module.models = types.SimpleNamespace(list_models=lambda: ["fakenet", "vit_b_16"], get_model=get_model)
    monkeypatch.setitem(sys.modules, "torchvision", module)
    return get_model


@pytest.fixture
def fake_timm(monkeypatch):
    create_model = _Recorder()
    module = types.ModuleType("timm")
    module.is_model = lambda name: name == "fakenet"
    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", module)
    return create_model


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_missing_library_says_how_to_install_it(library, monkeypatch):
    monkeypatch.setitem(sys.modules, library, None)  # makes `import library` fail, installed or not
    with pytest.raises(UserError, match=f"pip install {library}"):
        build_model(f"{library}:resnet18", (3, 32, 32), 10)


def test_external_model_info():
    # Metadata only: answering it must not need the library.
    for name in ["torchvision:resnet50", "timm:resnet50"]:
        assert model_info(name) == ModelInfo(name, "image", (3, 224, 224), 1000, conv=True)
    for name in ["torchvision:vit_b_16", "timm:swin_tiny_patch4_window7_224", "timm:deit_tiny_patch16_224"]:
        assert model_info(name).conv is False


def test_torchvision_is_built_without_weights(fake_torchvision):
    build_model("torchvision:fakenet", (3, 32, 32), 10)
    assert fake_torchvision.calls == [(("fakenet",), {"weights": None, "num_classes": 10})]


def test_torchvision_unknown_name(fake_torchvision):
    with pytest.raises(UserError, match="torchvision has no model named 'nosuchnet'"):
        build_model("torchvision:nosuchnet", (3, 32, 32), 10)
    assert fake_torchvision.calls == []


def test_torchvision_needs_three_channels(fake_torchvision):
    with pytest.raises(UserError, match="3-channel"):
        build_model("torchvision:fakenet", (1, 28, 28), 10)


def test_timm_is_built_without_pretrained_weights(fake_timm):
    build_model("timm:fakenet", (1, 28, 28), 10)
    assert fake_timm.calls == [(("fakenet",), {"pretrained": False, "num_classes": 10, "in_chans": 1})]


def test_timm_unknown_name(fake_timm):
    with pytest.raises(UserError, match="timm has no model named 'nosuchnet'"):
        build_model("timm:nosuchnet", (3, 32, 32), 10)


def test_external_models_need_images(fake_timm):
    with pytest.raises(UserError, match=r"\(channels, height, width\)"):
        build_model("timm:fakenet", (20,), 10)
