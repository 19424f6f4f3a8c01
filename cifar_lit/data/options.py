"""The data's options, as one declared type: where the images come from and how batches are made (`options.data`
of a run). Each field is a flag and a config key; its type is its allowed range, its `Args:` line its help."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cifar_lit.reliability.option_types import NonNegativeInt, PositiveInt, Seed

DatasetKind = Literal["auto", "cifar10", "cifar100", "folder"]
DataPath = Literal["tensor", "pil"]
Normalization = Literal["auto", "cifar10", "computed"]


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """The data set, its augmentation and its batches.

    By default every epoch is validated on the test images, the protocol of the seed project and of most CIFAR-10
    speed records; `val_split > 0` holds that many training images out instead (seeded), and the test set is then
    only used by the final test.

    Args:
        data_dir: folder with torchvision's `cifar-10-batches-py/` or `cifar-100-python/`, or an image folder
            (`train/<class>/`, `test/<class>/`).
        dataset: "auto" (whatever `data_dir` holds; CIFAR-10 is downloaded when it holds nothing), "cifar10",
            "cifar100" (downloaded when missing) or "folder".
        cifar100_labels: CIFAR-100's "fine" labels (100 classes) or "coarse" ones (20 superclasses).
        resize: resize images that are not 32x32 (centre crop, then 32x32) once, when they are first decoded;
            without it they are refused.
        download: fetch CIFAR-10 or CIFAR-100 with torchvision when `data_dir` holds no copy.
        batch_size: training images per step on each device (the global batch is this times the devices).
        eval_batch_size: images per validation/test step.
        data_path: "tensor" (uint8 NHWC tensors, augmentation batched on the device) or "pil" (torchvision
            transforms per image in DataLoader workers, the classic path, kept for comparison).
        crop_padding: random-crop padding in pixels (0 disables the crop).
        flip: random horizontal flips.
        cutout: side of the Cutout square in pixels (0 disables it).
        val_split: training images held out for validation (0: validate on the test set).
        seed: seed for the data order, augmentation and the validation split.
        num_workers: DataLoader workers on the "pil" path (at most one per available core).
        verify_checksums: check torchvision batch files against their published MD5 sums.
        cache_dir: where decoded image folders are cached (default: inside the data folder, else ~/.cache).
        data_on_device: keep the whole data set on the training device (tensor path); null: the hardware plan
            decides (on the device when it fits).
        shard_train_data: with several devices, keep only this rank's share of the training set on its device.
        channels_last: hand the model NHWC-strided batches (faster convolutions on tensor cores); null: the
            hardware plan decides.
        normalization: "auto" (CIFAR-10's published constants for CIFAR-10, measured on the training images for
            any other data set), "cifar10" (the constants) or "computed" (measured).
        compile: compile the batch transforms with torch.compile (one fused kernel per training batch).
    """

    data_dir: str = "data"
    dataset: DatasetKind = "auto"
    cifar100_labels: Literal["fine", "coarse"] = "fine"
    resize: bool = False
    download: bool = True
    batch_size: PositiveInt = 256
    eval_batch_size: PositiveInt = 1000
    data_path: DataPath = "tensor"
    crop_padding: NonNegativeInt = 4
    flip: bool = True
    cutout: NonNegativeInt = 0
    val_split: NonNegativeInt = 0
    seed: Seed = 0
    num_workers: NonNegativeInt = 4
    verify_checksums: bool = True
    cache_dir: str | None = None
    data_on_device: bool | None = None
    shard_train_data: bool = False
    channels_last: bool | None = None
    normalization: Normalization = "auto"
    compile: bool = False
