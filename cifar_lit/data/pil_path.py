"""The classic data path: torchvision transforms per image in DataLoader workers (`--data-path pil`). The tensor
path (uint8 batches augmented on the device) is the default and faster; this one is kept to compare against."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms

from cifar_lit.data.augment import cutout_mask
from cifar_lit.data.constants import IMAGE_SIZE
from cifar_lit.data.loaders import PILImageDataset
from cifar_lit.data.options import DataOptions
from cifar_lit.data.split import Split


class CutoutTransform:
    """Cutout for one normalized CHW tensor, with the tensor path's mask."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, height, width = image.shape
        centre_y, centre_x = torch.randint(0, height, (1,)), torch.randint(0, width, (1,))
        return image.masked_fill(cutout_mask(centre_y, centre_x, self.size, (height, width)), 0.0)


def pil_transform(options: DataOptions, mean: Sequence[float], std: Sequence[float], train: bool
                  ) -> transforms.Compose:
    """The per-image transforms: crop, flip and Cutout in training (as `options` asks), then normalization."""
    steps: list[Any] = []
    if train and options.crop_padding:
        steps.append(transforms.RandomCrop(IMAGE_SIZE, padding=options.crop_padding))
    if train and options.flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if train and options.cutout:
        steps.append(CutoutTransform(options.cutout))
    return transforms.Compose(steps)


def worker_count(asked: int) -> int:
    """`asked` workers, at most one per core this process may run on: more only queue for the same cores (and
    PyTorch warns about them)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(asked, cores)


def pil_loader(split: Split, transform: transforms.Compose, *, options: DataOptions, train: bool, rank: int,
               world: int) -> DataLoader:
    """A DataLoader of one split. With several processes, training draws a seeded share per rank (full batches);
    evaluation gives every image to exactly one rank, without padding."""
    dataset, workers = PILImageDataset(split, transform), worker_count(options.num_workers)
    sampler: Any = None
    if world > 1 and train:
        sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=options.seed, drop_last=True)
    elif world > 1:
        sampler = range(rank, len(dataset), world)
    return DataLoader(
        dataset,
        batch_size=options.batch_size if train else options.eval_batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(options.seed) if train else None,
    )
