"""Batched augmentation and normalization of uint8 image tensors, on whatever device the batch is on.

The same operations as torchvision's RandomCrop(32, padding=4, fill=0), RandomHorizontalFlip() and Normalize,
but for a whole batch at once with one kernel each, instead of PIL calls per image. Random draws take an explicit
generator so a batch's augmentation depends only on its seed, which makes runs and resumed runs repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F


def draw_crop_offsets(batch: int, padding: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Per-image (dy, dx) top-left corners of the crop inside the padded image, each in [0, 2 * padding]."""
    return torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator, device=device)


def apply_crops(images: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad each (N, C, H, W) image by `padding` and cut out an H x W window at its offset: a random translation."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (N, W)
    batch_index = torch.arange(n, device=images.device)[:, None, None, None]
    channel_index = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def draw_flips(batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A boolean per image: True means mirror it left-right (probability one half)."""
    return torch.randint(0, 2, (batch,), generator=generator, device=device).bool()


def apply_flips(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    return torch.where(flips[:, None, None, None], images.flip(-1), images)


def draw_cutout_centers(
    batch: int, height: int, width: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Per-image (y, x) centres of the Cutout square, anywhere in the image (DeVries & Taylor, 2017)."""
    ys = torch.randint(0, height, (batch,), generator=generator, device=device)
    xs = torch.randint(0, width, (batch,), generator=generator, device=device)
    return torch.stack((ys, xs), dim=1)


def apply_cutout(images: torch.Tensor, centers: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a size x size square (clipped at the borders) around each centre of normalized images."""
    _, _, h, w = images.shape
    ys = torch.arange(h, device=images.device)
    xs = torch.arange(w, device=images.device)
    start = centers - size // 2
    inside_y = (ys[None, :] >= start[:, 0, None]) & (ys[None, :] < start[:, 0, None] + size)  # (N, H)
    inside_x = (xs[None, :] >= start[:, 1, None]) & (xs[None, :] < start[:, 1, None] + size)  # (N, W)
    hole = inside_y[:, None, :, None] & inside_x[:, None, None, :]
    return images.masked_fill(hole, 0.0)


def channel_tensor(values: Sequence[float], device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-channel constants shaped (1, C, 1, 1); build them once per device, not per batch (a host-to-device copy
    of a Python list waits for the GPU to finish its queue)."""
    return torch.tensor(values, dtype=torch.float32, device=device)[None, :, None, None]


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 (x / 255 - mean) / std per channel, as ToTensor() + Normalize(mean, std) do."""
    return (images.float() / 255.0 - mean) / std


def denormalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Back to [0, 1] floats for display."""
    return (images.float() * std + mean).clamp(0.0, 1.0)


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    mean: torch.Tensor,
    std: torch.Tensor,
    crop_padding: int = 4,
    flip: bool = True,
    cutout: int = 0,
) -> torch.Tensor:
    """Random crop and flip on uint8, then normalize, then Cutout: one training batch, float32 out."""
    n, _, h, w = images.shape
    if crop_padding > 0:
        images = apply_crops(images, draw_crop_offsets(n, crop_padding, generator, images.device), crop_padding)
    if flip:
        images = apply_flips(images, draw_flips(n, generator, images.device))
    out = normalize(images, mean, std)
    if cutout > 0:
        out = apply_cutout(out, draw_cutout_centers(n, h, w, generator, images.device), cutout)
    return out
