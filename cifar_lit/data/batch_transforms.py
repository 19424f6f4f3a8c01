"""The tensor path's work on the device: a uint8 batch becomes the network's input (augmented in training,
normalized always), with constants and random generators built once per device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cifar_lit.data.augment import (
    augment,
    channel_tensor,
    denormalize,
    draw_codes,
    normalize,
    scale_and_shift,
)
from cifar_lit.data.constants import IMAGE_SIZE
from cifar_lit.data.loaders import derive_seed
from cifar_lit.data.options import DataOptions


class BatchTransforms:
    """Augmentation and normalization of uint8 NHWC batches, as `options` asks, with the data set's mean and std.

    A training batch's random draws are seeded by (seed, epoch, batch index, rank), so the batch is augmented the
    same way whenever it is trained, in an uninterrupted run or after a resume.
    """

    def __init__(self, options: DataOptions, mean: Sequence[float], std: Sequence[float]) -> None:
        self.options = options
        self.mean, self.std = tuple(mean), tuple(std)
        self._constants: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self.augment_fn, self.normalize_fn = augment, normalize  # compiled by `compile`

    def normalize_with(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Other statistics (measured on the data, or a checkpoint's): the constants are built again."""
        self.mean, self.std = tuple(mean), tuple(std)
        self._constants.clear()

    @property
    def compiled(self) -> bool:
        return self.augment_fn is not augment

    def compile(self, **options: Any) -> None:
        """Compile augmentation and normalization (`torch.compile(**options)`): one fused kernel each per shape."""
        self.augment_fn = torch.compile(augment, **options)
        self.normalize_fn = torch.compile(normalize, **options)

    def constants(self, device: torch.device, kind: str = "scale_shift") -> tuple[torch.Tensor, torch.Tensor]:
        """("scale_shift") the (scale, shift) that normalize uint8 NHWC batches, or ("mean_std") mean and std shaped
        (1, C, 1, 1) for NCHW batches; built once per device (a copy from a Python list waits for the GPU queue)."""
        key = (kind, device)
        if key not in self._constants:
            self._constants[key] = (scale_and_shift(self.mean, self.std, device) if kind == "scale_shift" else
                                    (channel_tensor(self.mean, device), channel_tensor(self.std, device)))
        return self._constants[key]

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]

    def train(self, images: torch.Tensor, *, epoch: int, index: int, rank: int, dtype: torch.dtype) -> torch.Tensor:
        """A training batch of padded uint8 NHWC images, augmented and normalized into the network's input."""
        options = self.options
        generator = self._generator(images.device)
        generator.manual_seed(derive_seed(options.seed, epoch, index, rank))
        codes = draw_codes(len(images), options.crop_padding, flip=options.flip, cutout=options.cutout,
                           size=(IMAGE_SIZE, IMAGE_SIZE), generator=generator, device=images.device)
        scale, shift = self.constants(images.device)
        return self.augment_fn(images, codes, scale, shift, padding=options.crop_padding, flip=options.flip,
                               cutout=options.cutout, dtype=dtype, channels_last=bool(options.channels_last))

    def eval(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """An evaluation batch of uint8 NHWC images, normalized into the network's input."""
        scale, shift = self.constants(images.device)
        return self.normalize_fn(images, scale, shift, dtype=dtype, channels_last=bool(self.options.channels_last))

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized NCHW batches back to [0, 1] for pictures."""
        mean, std = self.constants(images.device, kind="mean_std")
        return denormalize(images, mean, std)

    def example_batch(self, size: int, *, train: bool, device: torch.device, classes: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """A random uint8 batch of the shape the loaders yield (padded in training), to compile every shape ahead."""
        side = IMAGE_SIZE + (2 * self.options.crop_padding if train else 0)
        generator = torch.Generator(device=device).manual_seed(0)
        images = torch.randint(0, 256, (size, side, side, 3), dtype=torch.uint8, generator=generator, device=device)
        return images, torch.randint(0, classes, (size,), generator=generator, device=device)
