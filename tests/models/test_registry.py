"""The registry: names, defaults, shape checks and seeded determinism for every model."""

import pytest
import torch

from dlscale.errors import UserError
from dlscale.models import MODEL_NAMES, ModelInfo, build_model, model_info

# Small but valid inputs per model, so the whole zoo runs in seconds on a CPU.
SMALL_INPUTS = {
    "mlp": (1, 8, 8),
    "cnn": (1, 8, 8),
    "resnet18": (3, 32, 32),
    "resnet50": (3, 32, 32),
    "vit-tiny": (3, 32, 32),
    "gpt-tiny": (64,),
    "gpt-small": (16,),
}


def _forward(model, name, input_shape, batch=2):
    if model_info(name).kind == "tokens":
        x = torch.randint(0, 10, (batch, input_shape[0]))
    else:
        x = torch.randn(batch, *input_shape)
    model.eval()
    with torch.no_grad():
        return model(x)


def test_model_names_are_the_documented_zoo():
    assert MODEL_NAMES == ("mlp", "cnn", "resnet18", "resnet50", "vit-tiny", "gpt-tiny", "gpt-small")


@pytest.mark.parametrize(
    "name, kind, shape, classes, conv",
    [
        ("mlp", "image", (1, 8, 8), 10, False),
        ("cnn", "image", (1, 8, 8), 10, True),
        ("resnet18", "image", (3, 224, 224), 1000, True),
        ("resnet50", "image", (3, 224, 224), 1000, True),
        ("vit-tiny", "image", (3, 224, 224), 1000, False),
        ("gpt-tiny", "tokens", (64,), 256, False),
        ("gpt-small", "tokens", (1024,), 50257, False),
    ],
)
def test_model_info_defaults(name, kind, shape, classes, conv):
    assert model_info(name) == ModelInfo(name, kind, shape, classes, conv)


def test_model_info_is_frozen():
    with pytest.raises(AttributeError):
        model_info("cnn").kind = "tokens"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        model_info("resnet19")
    message = str(err.value)
    assert "resnet19" in message
    for name in MODEL_NAMES:
        assert name in message
    assert "torchvision:NAME" in message and "timm:NAME" in message
    with pytest.raises(UserError):
        build_model("resnet19", (3, 32, 32), 10)


@pytest.mark.parametrize("name", ["torchvision:", "keras:resnet50", ""])
def test_malformed_names_are_unknown(name):
    with pytest.raises(UserError, match="unknown model"):
        model_info(name)


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "gpt-small"])
def test_output_shape_at_default_input(name):
    info = model_info(name)
    model = build_model(name, info.default_input_shape, info.default_num_classes)
    if info.kind == "tokens":
        out = _forward(model, name, (8,))  # any T up to the context
        assert out.shape == (2, 8, info.default_num_classes)
    else:
        out = _forward(model, name, info.default_input_shape, batch=1)
        assert out.shape == (1, info.default_num_classes)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_at_small_input(name):
    shape = SMALL_INPUTS[name]
    classes = 256 if model_info(name).kind == "tokens" else 7
    out = _forward(build_model(name, shape, classes), name, shape)
    expected = (2, shape[0], classes) if model_info(name).kind == "tokens" else (2, classes)
    assert out.shape == expected


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "gpt-small"])
def test_seeded_build_is_deterministic(name):
    shape = SMALL_INPUTS[name]
    torch.manual_seed(123)
    a = build_model(name, shape, 10).state_dict()
    torch.manual_seed(123)
    b = build_model(name, shape, 10).state_dict()
    torch.manual_seed(124)
    c = build_model(name, shape, 10).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", ["cnn", "resnet18", "resnet50", "vit-tiny"])
def test_image_only_models_refuse_tabular_features(name):
    with pytest.raises(UserError, match=r"\(channels, height, width\).*mlp"):
        build_model(name, (64,), 10)


def test_mlp_accepts_tabular_features():
    out = _forward(build_model("mlp", (13,), 3), "mlp", (13,))
    assert out.shape == (2, 3)


@pytest.mark.parametrize("name", ["gpt-tiny", "gpt-small"])
def test_language_models_refuse_images(name):
    with pytest.raises(UserError, match=r"language model.*\(seq_len,\)"):
        build_model(name, (3, 32, 32), 256)


def test_cnn_refuses_images_smaller_than_8x8():
    with pytest.raises(UserError, match="at least 8x8"):
        build_model("cnn", (1, 4, 4), 10)


@pytest.mark.parametrize("shape", [(3, 0, 32), ()])
def test_empty_shapes_are_refused(shape):
    with pytest.raises(UserError, match="input shape"):
        build_model("mlp", shape, 10)


def test_zero_classes_is_refused():
    with pytest.raises(UserError, match="at least one class"):
        build_model("cnn", (1, 8, 8), 0)
