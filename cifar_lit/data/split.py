"""The shape every data source ends up in: one split as uint8 NHWC images and int64 labels; the held-out
validation split; and the fingerprint a resume checks the data by."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from cifar_lit.data.augment import pad
from cifar_lit.reliability.errors import DataError

SPLITS = ("train", "test")
FINGERPRINT_STRIDE = 97  # every 97th image is hashed (with every label): enough to tell data sets apart cheaply


@dataclass(frozen=True)
class Split:
    """One split of the data set, held as uint8 NHWC images and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def shard(self, rank: int, world: int) -> Split:
        """Every `world`-th image from the `rank`-th: one process's share."""
        return Split(self.images[rank::world], self.labels[rank::world]) if world > 1 else self


def training_splits(train: Split, test: Split, val_split: int, seed: int) -> dict[str, Split]:
    """train, val and test. Without `val_split` every epoch is validated on the test images (the protocol of most
    CIFAR-10 speed records); with it, that many training images are held out (seeded) and validate instead."""
    if not val_split:
        return {"train": train, "val": test, "test": test}
    if not 0 < val_split < len(train):
        raise DataError(f"val_split={val_split} must be between 1 and {len(train) - 1} (the training set has "
                        f"{len(train)} images); use 0 to validate on the test set.")
    order = np.random.default_rng(seed).permutation(len(train))
    keep, held = order[:-val_split], order[-val_split:]
    return {"train": Split(train.images[keep], train.labels[keep]),
            "val": Split(train.images[held], train.labels[held]), "test": test}


def data_identity(splits: dict[str, Split]) -> tuple[dict[str, int], dict[str, str]]:
    """(images per split, a fingerprint per split): what a resume checks the data against."""
    sizes = {name: len(split) for name, split in splits.items()}
    prints = {}
    for name, split in splits.items():
        digest = hashlib.sha256(np.ascontiguousarray(split.labels).tobytes())
        digest.update(np.ascontiguousarray(split.images[::FINGERPRINT_STRIDE]).tobytes())
        prints[name] = digest.hexdigest()[:16]
    return sizes, prints


def device_tensors(split: Split, device: torch.device, padding: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 NHWC images, int64 labels) on `device`; the images zero-padded by `padding` pixels (the training set
    is stored padded, so a random crop is a gather)."""
    images = pad(torch.from_numpy(np.ascontiguousarray(split.images)).to(device), padding)
    return images, torch.from_numpy(np.asarray(split.labels)).to(device)
