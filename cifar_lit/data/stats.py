"""Normalization statistics computed from the training images, as the seed project did."""

from __future__ import annotations

import logging

import numpy as np

from cifar_lit.data.constants import CIFAR10_MEAN, CIFAR10_STD

log = logging.getLogger(__name__)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC images, scaled to [0, 1], pooled over all pixels of all images.

    Accumulates in float64 over chunks so 50,000 images need no float copy of the whole set.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.shape}")
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].reshape(-1, 3).astype(np.float64) / 255.0
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def normalization_for(kind: str, is_cifar10: bool, train_images: np.ndarray
                      ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for `--normalization kind`: "auto" takes CIFAR-10's published constants for CIFAR-10 and measures
    any other data set's training images; "cifar10" and "computed" force one or the other."""
    if kind == "computed" or (kind == "auto" and not is_cifar10):
        mean, std = channel_stats(train_images)
        log.info("Normalization measured on the %d training images: mean %s, std %s", len(train_images),
                 tuple(round(v, 4) for v in mean), tuple(round(v, 4) for v in std))
        return mean, std
    return CIFAR10_MEAN, CIFAR10_STD
