"""The reference networks (and ResNet-32) as a registry of factories:
MODELS[name](num_classes, in_shape)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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


class NormedLinear(nn.Module):
    """A cosine classifier (Cao et al. 2019's NormedLinear, kaidic/LDAM-DRW): scale *
    cos(x, w_c), the features x (B, in) and each class's weight w_c scaled to unit length, so
    every logit lies in [-scale, scale]. Weights (out, in), as nn.Linear's, initialised as
    theirs: uniform(-1, 1), then each class's row at unit norm."""

    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__()
        w = torch.empty(out_features, in_features).uniform_(-1, 1)
        self.weight = nn.Parameter(w / w.norm(dim=1, keepdim=True))
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, in) @ (in, out) -> (B, out) cosines, times the scale
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T


def cosine_head(model: nn.Module, scale: float) -> nn.Module:
    """The model with its last nn.Linear (the classifier: the output layer of every network
    here) replaced by a NormedLinear of the same shape and this scale; in place."""
    name = next((n for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)),
                None)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to make a cosine head")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, NormedLinear(old.in_features, old.out_features, scale))
    return model


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


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a parameter-free shortcut (He et al. 2016, option A):
    the identity, or, where the block halves the size and doubles the channels, the input
    subsampled by 2 and its new channels zero-padded, half before and half after."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))  # (B, cout, H/stride, W/stride)
        out = self.bn2(self.conv2(out))
        short = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:  # (B, cin, ...) -> (B, cout, ...): zeros on both sides of the channels
            short = nn.functional.pad(short, (0, 0, 0, 0, self.pad, self.pad))
        return torch.relu(out + short)


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR ResNet-(6n+2): a 3x3 conv to 16 channels, three stages of n
    basic blocks (16, 32, 64 channels; the first block of stages 2 and 3 has stride 2),
    global average pooling, one linear layer. Convs have no bias (BatchNorm follows each);
    weights get PyTorch's default init (the LDAM-DRW codebase uses Kaiming normal)."""

    def __init__(self, n: int, num_classes: int = 10, in_shape=(3, 32, 32)):
        super().__init__()
        c = in_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))  # (B, 64, H/4, W/4): (B, 64, 8, 8) for CIFAR
        return self.head(out.mean(dim=(2, 3)))  # global average pool -> (B, classes)


@register_model("resnet32", conv=True)
def resnet32(num_classes: int = 10, in_shape=(3, 32, 32)) -> nn.Module:
    """ResNet-32 (n = 5), the long-tail literature's CIFAR backbone (Cao et al. 2019).

    Parameters, with the option-A shortcut (no weights) and bias-free convs, for C classes:
      stem: conv 3*16*9 = 432, BN 2*16 = 32                                     464
      stage 1: 5 blocks x (2 convs 16*16*9 = 2,304 + 2 BN 32) = 5 x 4,672  23,360
      stage 2: first 16*32*9 + 32*32*9 + 2 BN 64 = 4,608 + 9,216 + 128 = 13,952;
               4 x (2 * 9,216 + 128) = 4 x 18,560 = 74,240                  88,192
      stage 3: first 32*64*9 + 64*64*9 + 2 BN 128 = 18,432 + 36,864 + 256 = 55,552;
               4 x (2 * 36,864 + 256) = 4 x 73,984 = 295,936               351,488
      linear: 64*C + C                                                 650 for C = 10
    total 463,504 + 65*C = 464,154 for 10 classes (BatchNorm's running statistics are
    buffers, not parameters)."""
    return CifarResNet(5, num_classes, in_shape)


def weight_bytes(name: str, num_classes: int = 10) -> int:
    """The bytes of a network's fp32 weights (what its saved model roughly weighs), counted on
    the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = create_model(name, num_classes)
    return 4 * sum(p.numel() for p in model.parameters())
