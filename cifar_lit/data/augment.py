"""Batched augmentation and normalization of uint8 image tensors held NHWC, on whatever device the batch is on.

The same operations as torchvision's RandomCrop(32, padding=4, fill=0), RandomHorizontalFlip() and Normalize (and
Cutout), for a whole batch at once. Images are stored NHWC, so the NCHW view the network takes is channels_last
without a copy; the training set is stored already zero-padded, so a crop is a gather. One random draw per image
(`draw_codes`) decides its crop offset, its flip and its Cutout centre, and one expression (`augment`) gathers,
mirrors, normalizes, cuts out and casts to the compute dtype: compiled, that is a single kernel per batch. Random
draws take an explicit generator, so a batch's augmentation depends only on its seed, which makes runs and
resumed runs repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.nn import functional as F


class Draws(NamedTuple):
    """Per-image random choices: top-left crop corner (dy, dx) in the padded image, mirror or not, Cutout centre."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    cy: torch.Tensor
    cx: torch.Tensor


def draw_codes(batch: int, padding: int, *, flip: bool, cutout: int, size: tuple[int, int], generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """One integer per image that encodes all of its random choices (uniform and independent): one kernel."""
    height, width = size
    choices = (2 * padding + 1) ** 2 * (2 if flip else 1) * (height * width if cutout else 1)
    return torch.randint(0, choices, (batch,), generator=generator, device=device)


def decode(codes: torch.Tensor, padding: int, *, flip: bool, cutout: int, size: tuple[int, int]) -> Draws:
    """The choices `draw_codes` packed into each code, in the order crop rows, crop columns, flip, Cutout."""
    height, width = size
    offsets = 2 * padding + 1
    dy, rest = codes % offsets, codes // offsets
    dx, rest = rest % offsets, rest // offsets
    mirror = torch.zeros_like(codes, dtype=torch.bool)
    if flip:
        mirror, rest = (rest % 2).bool(), rest // 2
    cy = cx = torch.zeros_like(codes)
    if cutout:
        cy, cx = rest // width % height, rest % width
    return Draws(dy, dx, mirror, cy, cx)


def cutout_mask(cy: torch.Tensor, cx: torch.Tensor, square: int, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) True inside each image's square x square hole (clipped at the borders) centred at (cy, cx)
    (DeVries & Taylor, 2017)."""
    height, width = size
    rows = torch.arange(height, device=cy.device)
    cols = torch.arange(width, device=cx.device)
    top, left = cy - square // 2, cx - square // 2
    inside_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + square)
    inside_cols = (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + square)
    return inside_rows[:, :, None] & inside_cols[:, None, :]


def scale_and_shift(mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with x_normalized = x_uint8 * scale + shift, i.e. (x / 255 - mean) / std.

    Build them once per device, not per batch: a host-to-device copy of a Python list waits for the GPU queue.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    return 1.0 / (255.0 * std_t), -mean_t / std_t


def to_network(images: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """NHWC -> the NCHW batch the network takes: a free view with channels_last strides, or a contiguous copy."""
    out = images.permute(0, 3, 1, 2).to(dtype)
    return out if channels_last else out.contiguous()


def normalize(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, dtype: torch.dtype = torch.float32,
              channels_last: bool = True) -> torch.Tensor:
    """uint8 NHWC [0, 255] -> normalized NCHW in `dtype`, as ToTensor() + Normalize(mean, std) do."""
    return to_network(images.float() * scale + shift, dtype, channels_last)


def augment(padded: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, padding: int,
            flip: bool, cutout: int, dtype: torch.dtype = torch.float32, channels_last: bool = True) -> torch.Tensor:
    """Crop, mirror, normalize and cut out one training batch of zero-padded uint8 NHWC images.

    The crop of image n is rows dy..dy+H and columns dx..dx+W of its padded image; mirrored, column j of the crop is
    column W-1-j. Cutout zeroes a square of the normalized image. Out: NCHW in `dtype`.
    """
    height, width = padded.shape[1] - 2 * padding, padded.shape[2] - 2 * padding
    draws = decode(codes, padding, flip=flip, cutout=cutout, size=(height, width))
    rows = draws.dy[:, None] + torch.arange(height, device=padded.device)
    cols = torch.arange(width, device=padded.device)
    cols = draws.dx[:, None] + torch.where(draws.flip[:, None], width - 1 - cols, cols)
    batch = torch.arange(padded.shape[0], device=padded.device)[:, None, None]
    crops = padded[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C) uint8
    out = crops.float() * scale + shift
    if cutout:
        out = out.masked_fill(cutout_mask(draws.cy, draws.cx, cutout, (height, width))[..., None], 0.0)
    return to_network(out, dtype, channels_last)


def pad(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad uint8 NHWC images by `padding` pixels on every side (once, for the whole training set)."""
    return F.pad(images, (0, 0, padding, padding, padding, padding)) if padding else images


def denormalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalized NCHW batches back to [0, 1] floats for display; `mean` and `std` shaped (1, C, 1, 1)."""
    return (images.float() * std + mean).clamp(0.0, 1.0)


def channel_tensor(values: Sequence[float], device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-channel constants shaped (1, C, 1, 1), for NCHW batches."""
    return torch.tensor(values, dtype=torch.float32, device=device)[None, :, None, None]


def input_dtype(precision: str) -> torch.dtype:
    """The dtype batches should have for a Lightning precision ("bf16-mixed", "32-true", ...): what the first
    convolution computes in, so the cast happens inside the augmentation kernel rather than in a copy after it."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    if precision.startswith("64"):
        return torch.float64
    return torch.float32
