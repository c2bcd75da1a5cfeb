"""The two small networks for digits/MNIST-size data: an MLP and a compact CNN.

They exist so that a laptop CPU can train a real model to a real accuracy in
seconds (sklearn's 8x8 digits: the CNN reaches ~98% in a few epochs).
"""

import math

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten whatever comes in, then two hidden ReLU layers.

    Flattening makes it the one model that takes any input shape: images
    (C, H, W) as well as tabular features (F,).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    # No conv bias: the BatchNorm that follows has its own shift.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CNN(nn.Module):
    """conv32 -> conv64 -> 2x2 max-pool -> conv128 -> global average pool -> linear.

    Global average pooling makes the head independent of the image size, so the
    same network serves 8x8 digits, 28x28 MNIST and 32x32 CIFAR, grey or RGB.
    About 94k parameters: a forward+backward of 64 digits takes a few ms on CPU.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, 32),
            _conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            _conv_bn_relu(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
