"""A network of one's own, as a user adds one: Zagoruyko and Komodakis's WideResNet-16-8 (2016) in one module,
trained with `--model wide_resnet:wide_resnet16_8` (this folder is on the tests' path). `width` is the stem's
channels (16 in the paper); the three groups have 8, 16 and 32 times as many."""

from __future__ import annotations

import torch
from torch import nn

DEPTH, WIDEN = 16, 8
BLOCKS = (DEPTH - 4) // 6  # basic blocks per group: 2


class WideBlock(nn.Module):
    """Pre-activation: BN-ReLU-conv3x3 twice, with a 1x1 projection where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(in_channels), nn.BatchNorm2d(out_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
                         if stride != 1 or in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + skip


class WideResNet(nn.Module):
    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        channels = [width, width * WIDEN, 2 * width * WIDEN, 4 * width * WIDEN]
        self.stem = nn.Conv2d(3, channels[0], 3, padding=1, bias=False)
        self.group1 = self._group(channels[0], channels[1], stride=1)
        self.group2 = self._group(channels[1], channels[2], stride=2)
        self.group3 = self._group(channels[2], channels[3], stride=2)
        self.head = nn.Sequential(nn.BatchNorm2d(channels[3]), nn.ReLU())
        self.linear = nn.Linear(channels[3], num_classes)

    @staticmethod
    def _group(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(WideBlock(in_channels, out_channels, stride),
                             *(WideBlock(out_channels, out_channels, 1) for _ in range(BLOCKS - 1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.head(self.group3(self.group2(self.group1(self.stem(images)))))
        return self.linear(features.mean(dim=(2, 3)))


def wide_resnet16_8(num_classes: int = 10, width: int = 16) -> nn.Module:
    return WideResNet(num_classes, width)
