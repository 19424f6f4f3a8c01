"""CIFAR-10 loading, caching and augmentation."""

from cifar_lit.data.datamodule import CIFAR10DataModule

__all__ = ["CIFAR10DataModule"]
