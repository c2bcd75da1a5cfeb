"""The model zoo: names, what each model expects, and one function that builds them.

    info = model_info("resnet18")          # defaults, without building anything
    model = build_model("resnet18", (3, 32, 32), 10)

Every model is built for the data's actual shape (a ResNet picks its stem and a
ViT its patch size from the image size, a GPT its context from the sequence
length), and refuses with a UserError a shape it cannot handle.

Forward contract, so the trainer can apply one loss to all of them:
image models take float (B, *input_shape) and return logits (B, num_classes);
language models take int64 token ids (B, T), T <= seq_len, and return logits
(B, T, vocab).
"""

from dataclasses import dataclass

from torch import nn

from dlscale.errors import UserError
from dlscale.models import external, gpt, resnet, small, vit

__all__ = ["MODEL_NAMES", "ModelInfo", "model_info", "build_model"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # "image": classifier on (C, H, W) or (F,) inputs; "tokens": language model
    default_input_shape: tuple[int, ...]  # (C, H, W) for image models, (seq_len,) for LMs
    default_num_classes: int  # classes, or vocabulary size for LMs
    conv: bool  # a conv net: channels_last memory format pays off on CUDA


_BUILTIN = {
    "mlp": ModelInfo("mlp", "image", (1, 8, 8), 10, conv=False),
    "cnn": ModelInfo("cnn", "image", (1, 8, 8), 10, conv=True),
    "resnet18": ModelInfo("resnet18", "image", (3, 224, 224), 1000, conv=True),
    "resnet50": ModelInfo("resnet50", "image", (3, 224, 224), 1000, conv=True),
    "vit-tiny": ModelInfo("vit-tiny", "image", (3, 224, 224), 1000, conv=False),
    "gpt-tiny": ModelInfo("gpt-tiny", "tokens", (64,), 256, conv=False),
    "gpt-small": ModelInfo("gpt-small", "tokens", (1024,), 50257, conv=False),
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILTIN)

_EXTERNAL_LIBRARIES = ("torchvision", "timm")

# Images at least this large (height and width) get the ImageNet-style ResNet
# stem and 16-pixel ViT patches; smaller ones (CIFAR's 32x32) the small-image forms.
_LARGE_IMAGE = 64


def model_info(name: str) -> ModelInfo:
    """What a model expects and its defaults; raises UserError for an unknown name."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    library, _, arch = name.partition(":")
    if library in _EXTERNAL_LIBRARIES and arch:
        # Transformers have no convolutions to benefit from channels_last.
        conv = not arch.startswith(("vit", "swin", "deit"))
        return ModelInfo(name, "image", (3, 224, 224), 1000, conv=conv)
    raise UserError(
        f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}, "
        "or torchvision:NAME / timm:NAME when torchvision / timm is installed"
    )


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build `name` for inputs of `input_shape` (one sample, no batch dimension) and
    `num_classes` outputs (the vocabulary size for language models).

    Initialisation draws from torch's global RNG, so torch.manual_seed before
    this call makes the weights reproducible.
    """
    info = model_info(name)
    input_shape = tuple(int(d) for d in input_shape)
    num_classes = int(num_classes)
    if not input_shape or min(input_shape) < 1:
        raise UserError(
            f"{name} cannot be built for the input shape {input_shape}; every dimension must be at least 1"
        )
    if num_classes < 1:
        raise UserError(f"{name} needs at least one class (or vocabulary entry), not {num_classes}")

    if info.kind == "tokens":
        return _build_language_model(name, input_shape, num_classes)
    if name == "mlp":
        return small.MLP(input_shape, num_classes)

    # Everything else convolves over or cuts up an image, so it needs (C, H, W).
    if len(input_shape) != 3:
        raise UserError(
            f"{name} needs images of shape (channels, height, width) but the data has shape {input_shape}; "
            "use the mlp model for tabular (features,) data"
        )
    c, h, w = input_shape
    large = min(h, w) >= _LARGE_IMAGE

    if name == "cnn":
        if min(h, w) < 8:
            raise UserError(f"cnn needs images of at least 8x8 pixels, not {h}x{w}; use the mlp model")
        return small.CNN(c, num_classes)
    if name == "resnet18":
        return resnet.resnet18(c, num_classes, small_input=not large)
    if name == "resnet50":
        return resnet.resnet50(c, num_classes, small_input=not large)
    if name == "vit-tiny":
        patch = 16 if large else 4
        if h % patch or w % patch:
            raise UserError(
                f"vit-tiny cuts {h}x{w} images into {patch}x{patch} patches, which needs both sides "
                f"divisible by {patch}; resize or crop the images to a multiple of {patch} pixels"
            )
        return vit.vit_tiny((h, w), patch, c, num_classes)

    library, _, arch = name.partition(":")
    if library == "torchvision":
        return external.build_torchvision(arch, input_shape, num_classes)
    return external.build_timm(arch, input_shape, num_classes)


def _build_language_model(name: str, input_shape: tuple[int, ...], vocab_size: int) -> nn.Module:
    if len(input_shape) != 1:
        raise UserError(
            f"{name} is a language model and needs token sequences of shape (seq_len,) "
            f"but the data has shape {input_shape}; use a text data set, or an image model such as cnn"
        )
    (seq_len,) = input_shape
    if name == "gpt-tiny":
        return gpt.gpt_tiny(vocab_size, block_size=seq_len)
    return gpt.gpt_small(vocab_size, block_size=seq_len)
