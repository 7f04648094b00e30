"""The reference networks as a registry of factories: MODELS[name](num_classes, in_shape)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from benchmark.registry import Registry

ModelFactory = Callable[..., nn.Module]  # (num_classes, in_shape) -> an untrained network
MODELS: Registry[ModelFactory] = Registry("model")  # metadata: conv=True for the conv nets
CHANNELS_LAST = MODELS.where(conv=True)  # conv nets, which run faster with NHWC memory on CUDA


def register_model(name: str, conv: bool = False) -> Callable[[ModelFactory], ModelFactory]:
    """A decorator registering a factory (num_classes, in_shape) -> nn.Module as `name`."""
    return MODELS.register(name, conv=conv)


def create_model(name: str, num_classes: int = 10, in_shape=(3, 32, 32)) -> nn.Module:
    """A fresh network; an unknown name raises a ValueError that lists the choices."""
    return MODELS[name](num_classes=num_classes, in_shape=tuple(in_shape))


@register_model("cnn", conv=True)
def cnn(num_classes: int = 10, in_shape=(3, 32, 32)) -> nn.Module:
    """Four convs, two max-pools, one linear layer; no ReLU after the fourth conv (as designed)."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(),  # (B, 32, 32, 32)
        nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(),  # (B, 16, 32, 32)
        nn.MaxPool2d(2),  # (B, 16, 16, 16)
        nn.Conv2d(16, 64, 5, padding=2), nn.ReLU(),  # (B, 64, 16, 16)
        nn.Conv2d(64, 16, 3, padding=1),  # (B, 16, 16, 16)
        nn.MaxPool2d(2),  # (B, 16, 8, 8)
        nn.Flatten(),  # (B, 1024)
        nn.Linear(16 * (h // 4) * (w // 4), num_classes),
    )


class RowRNN(nn.Module):
    """Reads an image row by row: each of the H rows is one step of W*C values."""

    def __init__(self, num_classes: int = 10, in_shape=(3, 32, 32), hidden: int = 512,
                 layers: int = 2):
        super().__init__()
        c, h, w = in_shape
        self.rnn = nn.RNN(w * c, hidden, num_layers=layers, batch_first=True)  # tanh
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b, h, w * c)  # (B, 32, 96): one row per time step
        out, _ = self.rnn(rows)  # (B, 32, 512)
        return self.head(out[:, -1])  # (B, classes) from the last step's output


@register_model("rnn")
def rnn(num_classes: int = 10, in_shape=(3, 32, 32)) -> nn.Module:
    return RowRNN(num_classes, in_shape)


@register_model("resnet50", conv=True)
def resnet50(num_classes: int = 10, in_shape=(3, 32, 32)) -> nn.Module:
    """torchvision's ResNet-50, randomly initialised, its 1000-way output then Linear(1000, 10)."""
    from torchvision.models import resnet50 as tv_resnet50

    if in_shape[0] != 3:
        raise ValueError(f"resnet50 takes 3-channel images, got in_shape {in_shape}")
    return nn.Sequential(tv_resnet50(weights=None), nn.Linear(1000, num_classes))


def weight_bytes(name: str, num_classes: int = 10) -> int:
    """The bytes of a network's fp32 weights (what its saved model roughly weighs), counted on
    the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = create_model(name, num_classes)
    return 4 * sum(p.numel() for p in model.parameters())
