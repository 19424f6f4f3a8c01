"""The CIFAR ResNets, by name: kuangliu/pytorch-cifar's ResNet18 (11,173,962 parameters for 10 classes) and
ResNet34 (21,282,122), and David Page's DAWNBench ResNet-9 (6,573,130).

Unlike the ImageNet ResNets they keep the 32x32 input at full resolution in the first stage: a 3x3 stride-1 stem
and no max-pool, so the four stages work at 32, 16, 8 and 4 pixels. ResNet-9 halves the resolution with a max-pool
in each of its three stages instead.

A network is one factory here, registered by its name (as timm's @register_model): `--model NAME` builds it, and
every checkpoint, config.yaml, summary and exported demo names it, so everything downstream builds "the model named
in the checkpoint". This file imports only torch: the exported web demo runs it without cifar_lit.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

BASE_WIDTH = 64  # channels of the first stage; each later stage doubles it (128, 256, 512)
RESNET18_WIDTH = BASE_WIDTH
STAGE_WIDTH_FACTORS = (1, 2, 4, 8)
STAGE_STRIDES = (1, 2, 2, 2)
DEFAULT_MODEL = "resnet18"  # what a checkpoint or config.yaml that names no model was trained with

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Make `factory(num_classes=, width=)` a network the project can train, under the factory's name."""
    MODELS[factory.__name__] = factory
    return factory


def build_model(name: str = DEFAULT_MODEL, num_classes: int = 10, width: int = BASE_WIDTH) -> nn.Module:
    """The network `name` names (`model_factory`)."""
    return model_factory(name)(num_classes=num_classes, width=width)


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The factory registered as `name`; for `module:callable`, that callable, imported from the working directory
    or PYTHONPATH the first time and registered under the name. KeyError saying why for anything else."""
    if name not in MODELS and ":" in name:
        module_name, _, attribute = name.partition(":")
        if os.getcwd() not in sys.path:  # `python train.py` puts the script's folder first, not the working one
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise KeyError(f"the module {module_name} cannot be imported from {os.getcwd()} or PYTHONPATH "
                           f"({error})") from None
        factory = getattr(module, attribute, None)
        if not callable(factory):
            raise KeyError(f"the module {module_name} ({module.__file__}) has no callable {attribute!r}")
        MODELS[name] = factory
    if name not in MODELS:
        raise KeyError(f"no network named {name!r}; the networks are {', '.join(MODELS)}, or module:callable (a "
                       "function taking num_classes and width, in a module importable from the working directory)")
    return MODELS[name]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the batch norm after it has one)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers plus an identity shortcut, or a 1x1 conv-BN projection where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, four stages of residual blocks, global average pool and a linear classifier; returns logits.

    `blocks` is the residual blocks of each stage: (2, 2, 2, 2) for ResNet18, (3, 4, 6, 3) for ResNet34. `width` is
    the first stage's channel count; a narrower network of the same topology (the tests use 8) costs about
    (64 / width)^2 times less compute.
    """

    gradcam_layer = "layer3"  # where Grad-CAM looks by default: its 8x8 maps (layer4's 4x4 are too coarse)

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10, width: int = BASE_WIDTH) -> None:
        super().__init__()
        stage_widths = [width * factor for factor in STAGE_WIDTH_FACTORS]
        self.conv1 = conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        in_channels = width
        for count, out_channels, stride in zip(blocks, stage_widths, STAGE_STRIDES, strict=True):
            stage = [ResidualBlock(in_channels, out_channels, stride)]
            stage += [ResidualBlock(out_channels, out_channels) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(stage_widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


def conv_bn(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU, then (with `pool`) a 2x2 max-pool: ResNet-9's unit."""
    layers: list[nn.Module] = [conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Sequential):
    """x + f(x) for the units inside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class ResNet9(nn.Module):
    """David Page's DAWNBench ResNet-9 ("How to train your ResNet", 2018): prep 64; 128 with a residual of two
    units; 256; 512 with a residual of two units; global max-pool and a linear classifier whose logits are scaled
    by 0.125 (Page's choice: it keeps the initial softmax soft). Channels scale with `width` (64 here)."""

    gradcam_layer = "layer3"  # where Grad-CAM looks by default: 4x4 maps, as this network pools early

    def __init__(self, num_classes: int = 10, width: int = BASE_WIDTH) -> None:
        super().__init__()
        c1, c2, c3, c4 = (width * factor for factor in STAGE_WIDTH_FACTORS)
        self.prep = conv_bn(3, c1)
        self.layer1 = nn.Sequential(conv_bn(c1, c2, pool=True), Residual(conv_bn(c2, c2), conv_bn(c2, c2)))
        self.layer2 = conv_bn(c2, c3, pool=True)
        self.layer3 = nn.Sequential(conv_bn(c3, c4, pool=True), Residual(conv_bn(c4, c4), conv_bn(c4, c4)))
        self.linear = nn.Linear(c4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.linear(torch.flatten(F.adaptive_max_pool2d(out, 1), 1)) * 0.125


@register_model
def resnet18(num_classes: int = 10, width: int = BASE_WIDTH) -> CifarResNet:
    """kuangliu's ResNet18: two blocks per stage (11,173,962 parameters at width 64)."""
    return CifarResNet((2, 2, 2, 2), num_classes, width)


@register_model
def resnet34(num_classes: int = 10, width: int = BASE_WIDTH) -> CifarResNet:
    """kuangliu's ResNet34: 3, 4, 6 and 3 blocks (21,282,122 parameters at width 64)."""
    return CifarResNet((3, 4, 6, 3), num_classes, width)


@register_model
def resnet9(num_classes: int = 10, width: int = BASE_WIDTH) -> ResNet9:
    """Page's ResNet-9 (6,573,130 parameters at width 64)."""
    return ResNet9(num_classes, width)
