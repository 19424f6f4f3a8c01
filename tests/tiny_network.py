"""A network of one's own for the tests, as a user brings one: `--model tiny_network:tiny` (this folder is on the
tests' path). A one-block network: a test that must compile for real (Inductor's C++ code on the CPU) compiles its
few small graphs instead of the ResNet's, in seconds."""

from __future__ import annotations

from torch import nn


def tiny(num_classes: int = 10, width: int = 8) -> nn.Module:
    """A 3x3 convolution, batch norm and ReLU (block `0`, for Grad-CAM), pooled into a linear classifier."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
