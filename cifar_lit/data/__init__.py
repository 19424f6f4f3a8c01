"""CIFAR-10 loading, caching and augmentation."""

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.options import DataOptions

__all__ = ["DataOptions", "ImageDataModule"]
