"""CIFAR-10 loading, caching and augmentation."""

from cifar_lit.data.datamodule import ImageDataModule

__all__ = ["ImageDataModule"]
