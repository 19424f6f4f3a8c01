"""The CIFAR variant of ResNet18 (as in kuangliu/pytorch-cifar): 11,173,962 parameters for 10 classes.

Unlike the ImageNet ResNet18 it keeps the 32x32 input at full resolution in the first stage: a 3x3 stride-1
stem and no max-pool, so the four stages work at 32, 16, 8 and 4 pixels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

RESNET18_WIDTH = 64  # channels of the first stage; the other three stages double it each time (128, 256, 512)
STAGE_WIDTH_FACTORS = (1, 2, 4, 8)
STAGE_STRIDES = (1, 2, 2, 2)
BLOCKS_PER_STAGE = 2


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

    `width` is the first stage's channel count. 64 is the ResNet18 this project trains; a narrower network of the
    same topology (the tests use 8) costs about (64 / width)^2 times less compute.
    """

    def __init__(self, blocks_per_stage: int = BLOCKS_PER_STAGE, num_classes: int = 10,
                 width: int = RESNET18_WIDTH) -> None:
        super().__init__()
        stage_widths = [width * factor for factor in STAGE_WIDTH_FACTORS]
        self.conv1 = conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        in_channels = width
        for out_channels, stride in zip(stage_widths, STAGE_STRIDES, strict=True):
            blocks = [ResidualBlock(in_channels, out_channels, stride)]
            blocks += [ResidualBlock(out_channels, out_channels) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(stage_widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


def resnet18(num_classes: int = 10, width: int = RESNET18_WIDTH) -> CifarResNet:
    """The CIFAR ResNet18: two blocks per stage (11,173,962 parameters at the default width)."""
    return CifarResNet(blocks_per_stage=2, num_classes=num_classes, width=width)
