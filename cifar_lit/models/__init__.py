"""Networks trained by cifar_lit."""

from cifar_lit.models.resnet import CifarResNet, ResidualBlock, resnet18

__all__ = ["CifarResNet", "ResidualBlock", "resnet18"]
