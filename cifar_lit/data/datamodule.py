"""The data set as a LightningDataModule: download in `prepare_data`, datasets in `setup`, augmentation on the
device."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms

from cifar_lit.data.augment import (
    augment,
    channel_tensor,
    cutout_mask,
    denormalize,
    draw_codes,
    input_dtype,
    normalize,
    pad,
    scale_and_shift,
)
from cifar_lit.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE
from cifar_lit.data.loaders import PILImageDataset, TensorBatchLoader, derive_seed
from cifar_lit.data.sources import (
    NAMES,
    SPLITS,
    DataSet,
    Split,
    expected_image_counts,
    format_to_open,
    missing_data_message,
    open_dataset,
)
from cifar_lit.data.stats import channel_stats
from cifar_lit.lightning_compat import epochs_trained
from cifar_lit.phases import phase
from cifar_lit.reliability.errors import DataError
from cifar_lit.reliability.option_types import NonNegativeInt, PositiveInt
from cifar_lit.training.compile_warmup import compile_options

log = logging.getLogger(__name__)


def download(data_dir: Path, dataset: str) -> None:
    """Fetch torchvision's CIFAR-10 or CIFAR-100 into `data_dir`, turning any failure into a DataError that says
    what to do.

    A failed or interrupted download leaves nothing behind: what it added to `data_dir` (the folder itself, when it
    created it) is removed, so the next run does not mistake a partial archive or folder for the data set.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    existed = data_dir.is_dir()
    before = set(data_dir.iterdir()) if existed else set()
    name = NAMES[dataset]
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        (CIFAR100 if dataset == "cifar100" else CIFAR10)(str(data_dir), train=True, download=True)
    except BaseException as error:
        if not existed:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            for added in set(data_dir.iterdir()) - before:
                shutil.rmtree(added, ignore_errors=True) if added.is_dir() else added.unlink(missing_ok=True)
        if not isinstance(error, Exception):
            raise
        raise DataError(
            f"Downloading {name} into {data_dir} failed ({type(error).__name__}: {error}). Check the network "
            "connection and that the folder is writable, or pass --no-download and point --data-dir at a local copy "
            "(torchvision's batches or an image folder with train/ and test/)."
        ) from None


class CutoutTransform:
    """Cutout for one normalized CHW tensor on the PIL path, with the batched path's mask."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, height, width = image.shape
        centre_y, centre_x = torch.randint(0, height, (1,)), torch.randint(0, width, (1,))
        return image.masked_fill(cutout_mask(centre_y, centre_x, self.size, (height, width)), 0.0)


class ImageDataModule(pl.LightningDataModule):
    """A data set of small images (CIFAR-10, CIFAR-100 or any image folder) held as uint8 and augmented batch-wise
    on the device.

    By default every epoch is validated on the test images, the protocol of the seed project and of most CIFAR-10
    speed records; `val_split > 0` holds that many training images out instead (seeded), and the test set is then
    only used by `trainer.test`. The class names come from the data (`class_names`, after `prepare_data` or
    `setup`) and are kept in checkpoints with the normalization.

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
        data_on_device: keep the whole data set on the training device (tensor path).
        shard_train_data: with several devices, keep only this rank's share of the training set on its device.
        channels_last: hand the model NHWC-strided batches (faster convolutions on tensor cores).
        normalization: "auto" (CIFAR-10's published constants for CIFAR-10, measured on the training images for
            any other data set), "cifar10" (the constants) or "computed" (measured).
        compile: compile the batch transforms with torch.compile (one fused kernel per training batch).
    """

    def __init__(
        self,
        data_dir: str = "data",
        dataset: Literal["auto", "cifar10", "cifar100", "folder"] = "auto",
        cifar100_labels: Literal["fine", "coarse"] = "fine",
        resize: bool = False,
        download: bool = True,
        batch_size: PositiveInt = 256,
        eval_batch_size: PositiveInt = 1000,
        data_path: Literal["tensor", "pil"] = "tensor",
        crop_padding: NonNegativeInt = 4,
        flip: bool = True,
        cutout: NonNegativeInt = 0,
        val_split: NonNegativeInt = 0,
        seed: int = 0,
        num_workers: NonNegativeInt = 4,
        verify_checksums: bool = True,
        cache_dir: str | None = None,
        data_on_device: bool = True,
        shard_train_data: bool = False,
        channels_last: bool = True,
        normalization: Literal["auto", "cifar10", "computed"] = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dataset: DataSet | None = None
        self.class_names: tuple[str, ...] = CIFAR10_CLASSES  # until the data says otherwise
        self.mean: tuple[float, ...] = CIFAR10_MEAN
        self.std: tuple[float, ...] = CIFAR10_STD
        self.splits: dict[str, Split] = {}
        self._prepared: dict[str, Split] = {}  # image-folder splits read by prepare_data, until setup takes them
        self._prepared_here = False
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._train_loader: TensorBatchLoader | None = None
        self._channel_constants: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._augment, self._normalize = augment, normalize
        self._without_trainer: tuple[torch.device, str] | None = None  # (device, precision): `use_without_trainer`

    def use_without_trainer(self, device: torch.device | str, precision: str) -> None:
        """Serve a loop of its own (the bare PyTorch loop): the data on `device`, batches in `precision`'s dtype, one
        process. A Trainer tells the DataModule these itself."""
        self._without_trainer = (torch.device(device), precision)

    # ------------------------------------------------------------------------------------------------ data on disk

    @staticmethod
    def expected_device_bytes(data_dir: str, crop_padding: int) -> int:
        """What the data set will take on the device as uint8 tensors (the training set padded for the crop), from
        the folder's listing alone: the hardware plan needs it before any image is read."""
        train, test = expected_image_counts(Path(data_dir).expanduser())
        padded = IMAGE_SIZE + 2 * crop_padding
        return train * padded * padded * 3 + test * IMAGE_SIZE * IMAGE_SIZE * 3 + (train + test) * 8

    @property
    def data_dir(self) -> Path:
        return Path(self.hparams.data_dir).expanduser()

    @property
    def cache_dir(self) -> Path | None:
        return Path(self.hparams.cache_dir).expanduser() if self.hparams.cache_dir else None

    def prepare_data(self) -> None:
        """Download when missing and allowed; decode an image folder into its cache once.

        The splits an image folder yields here are kept for `setup` in this process, so the folder's files are
        listed and checked once per run, not once per call (train.py and Lightning both call this). A process that
        did not run it (another DDP rank) loads them in `setup`.
        """
        if self._prepared_here:
            return
        self._prepared_here = True
        with phase("data"):
            wanted = self.hparams.dataset
            if format_to_open(self.data_dir, wanted) is None:
                if not self.hparams.download:
                    raise DataError(missing_data_message(self.data_dir, wanted))
                download(self.data_dir, "cifar100" if wanted == "cifar100" else "cifar10")
            dataset = self.open()
            if dataset.source == "folder":
                self._prepared = {split: dataset.load(split) for split in SPLITS}

    def open(self) -> DataSet:
        """The data set on disk, with its class names (read from the data, nothing decoded yet)."""
        if self.dataset is None:
            hp = self.hparams
            self.dataset = open_dataset(self.data_dir, hp.dataset, hp.cifar100_labels, self.cache_dir,
                                        hp.verify_checksums, hp.resize)
            self.class_names = self.dataset.class_names
            log.info("Data: %s.", self.dataset.describe())
        return self.dataset

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            with phase("data"):
                self._load_splits()
        if self.hparams.compile and self._augment is augment:
            self.compile_transforms(**compile_options())

    def _load_splits(self) -> None:
        dataset = self.open()
        train, test = (self._prepared.get(split) or dataset.load(split) for split in SPLITS)
        self._prepared = {}
        normalization = self.hparams.normalization
        if normalization == "computed" or (normalization == "auto" and not dataset.is_cifar10):
            self.mean, self.std = channel_stats(train.images)
            log.info("Normalization measured on the %d training images: mean %s, std %s", len(train),
                     tuple(round(v, 4) for v in self.mean), tuple(round(v, 4) for v in self.std))
        val_split = self.hparams.val_split
        if val_split:
            if not 0 < val_split < len(train):
                raise DataError(f"val_split={val_split} must be between 1 and {len(train) - 1} (the training set has "
                                f"{len(train)} images); use 0 to validate on the test set.")
            order = np.random.default_rng(self.hparams.seed).permutation(len(train))
            keep, held = order[:-val_split], order[-val_split:]
            self.splits = {
                "train": Split(train.images[keep], train.labels[keep]),
                "val": Split(train.images[held], train.labels[held]),
                "test": test,
            }
        else:
            self.splits = {"train": train, "val": test, "test": test}

    # --------------------------------------------------------------------------------------------------- loaders

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _device(self) -> torch.device:
        if self.trainer is not None and self.hparams.data_on_device:
            return self.trainer.strategy.root_device
        if self.trainer is None and self._without_trainer is not None:
            return self._without_trainer[0]
        return torch.device("cpu")

    def _as_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A split as (uint8 NHWC images, int64 labels) on the training device, made once; the training images are
        stored zero-padded for the random crop. Validation and test share one copy when they are the same set."""
        if name not in self._tensors:
            twin = next((other for other in ("val", "test") if other != name and other in self._tensors
                         and self.splits.get(other) is self.splits[name]), None)
            with phase("data"):
                self._tensors[name] = self._tensors[twin] if twin else self._to_device(name)
        return self._tensors[name]

    def _to_device(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        split = self.splits[name]
        images, labels = split.images, split.labels
        rank, world = self._rank_and_world()
        if name == "train" and self.hparams.shard_train_data and world > 1:
            images, labels = images[rank::world], labels[rank::world]
        device = self._device()
        images_t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        if name == "train":
            images_t = pad(images_t, self.hparams.crop_padding)
        return images_t, torch.from_numpy(np.asarray(labels)).to(device)

    def _current_epoch(self) -> int:
        """The epoch a training iterator started now will serve (`lightning_compat.epochs_trained`: after resuming
        from an epoch-end checkpoint, `trainer.current_epoch` would still name the finished epoch)."""
        return epochs_trained(self.trainer) if self.trainer is not None else 0

    def _pil_transform(self, train: bool) -> transforms.Compose:
        steps: list[Any] = []
        if train and self.hparams.crop_padding:
            steps.append(transforms.RandomCrop(32, padding=self.hparams.crop_padding))
        if train and self.hparams.flip:
            steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        if train and self.hparams.cutout:
            steps.append(CutoutTransform(self.hparams.cutout))
        return transforms.Compose(steps)

    def num_workers(self) -> int:
        """`num_workers`, at most one per core this process may run on: more only queue for the same cores (and
        PyTorch warns about them)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(self.hparams.num_workers, cores)

    def _loader(self, name: str, train: bool) -> Any:
        batch_size = self.hparams.batch_size if train else self.hparams.eval_batch_size
        if self.hparams.data_path == "pil":
            dataset = PILImageDataset(self.splits[name], self._pil_transform(train))
            workers = self.num_workers()
            rank, world = self._rank_and_world()
            sampler: Any = None
            if world > 1 and train:
                sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=self.hparams.seed, drop_last=True)
            elif world > 1:
                sampler = range(rank, len(dataset), world)  # every image exactly once over the ranks, no padding
            return DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=train and sampler is None,
                sampler=sampler,
                drop_last=train,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=torch.cuda.is_available(),
                generator=torch.Generator().manual_seed(self.hparams.seed) if train else None,
            )
        images, labels = self._as_tensors(name)
        rank, world = self._rank_and_world()
        if train and self.hparams.shard_train_data:
            rank, world = 0, 1  # each rank already holds only its own share
        return TensorBatchLoader(
            images,
            labels,
            batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.hparams.seed,
            rank=rank,
            world_size=world,
            epoch_fn=self._current_epoch,
        )

    def steps_per_epoch_for(self, world_size: int) -> int:
        """Training steps per epoch when `world_size` processes share the training set (full batches only)."""
        return len(self.splits["train"]) // world_size // self.hparams.batch_size

    def train_batches_per_epoch(self) -> int:
        """Training batches this rank takes per epoch: the length of the loader it will train on, whichever path."""
        return len(self._loader("train", train=True))

    def eval_batch_sizes(self) -> list[int]:
        """Distinct batch sizes this rank's validation and test loaders produce (full batches and remainders)."""
        rank, world = self._rank_and_world()
        size = self.hparams.eval_batch_size
        sizes = set()
        for name in ("val", "test"):
            count = len(range(rank, len(self.splits[name]), world))
            sizes.update(s for s in (min(size, count), count % size) if s)
        return sorted(sizes)

    def train_dataloader(self) -> Any:
        loader = self._loader("train", train=True)
        self._train_loader = loader if isinstance(loader, TensorBatchLoader) else None
        return loader

    def val_dataloader(self) -> Any:
        return self._loader("val", train=False)

    def test_dataloader(self) -> Any:
        return self._loader("test", train=False)

    # ----------------------------------------------------------------------------------------- on-device transforms

    def channel_constants(self, device: torch.device, kind: str = "scale_shift") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel constants on `device`, built once: ("scale_shift") the (scale, shift) that normalize uint8
        NHWC batches, or ("mean_std") mean and std shaped (1, C, 1, 1) for NCHW batches."""
        key = (kind, device)
        if key not in self._channel_constants:
            if kind == "scale_shift":
                self._channel_constants[key] = scale_and_shift(self.mean, self.std, device)
            else:
                self._channel_constants[key] = (channel_tensor(self.mean, device), channel_tensor(self.std, device))
        return self._channel_constants[key]

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]

    def _input_dtype(self) -> torch.dtype:
        if self.trainer is not None:
            return input_dtype(str(self.trainer.precision))
        return input_dtype(self._without_trainer[1]) if self._without_trainer is not None else torch.float32

    def compile_transforms(self, **options: Any) -> None:
        """Compile the batch transforms (`torch.compile(**options)`): augmentation and normalization each become
        one fused kernel per batch shape."""
        self._augment = torch.compile(augment, **options)
        self._normalize = torch.compile(normalize, **options)

    def train_transform(self, images: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        """A training batch of padded uint8 NHWC images, augmented and normalized into the network's input.

        Its random draws are seeded by (seed, epoch, batch index, rank), so the batch is augmented the same way
        whenever it is trained, in an uninterrupted run or after a resume.
        """
        generator = self._generator(images.device)
        generator.manual_seed(derive_seed(self.hparams.seed, epoch, index, self._rank_and_world()[0]))
        hp = self.hparams
        codes = draw_codes(len(images), hp.crop_padding, hp.flip, hp.cutout, (IMAGE_SIZE, IMAGE_SIZE), generator,
                           images.device)
        scale, shift = self.channel_constants(images.device)
        return self._augment(images, codes, scale, shift, hp.crop_padding, hp.flip, hp.cutout, self._input_dtype(),
                             hp.channels_last)

    def eval_transform(self, images: torch.Tensor) -> torch.Tensor:
        """An evaluation batch of uint8 NHWC images, normalized into the network's input."""
        scale, shift = self.channel_constants(images.device)
        return self._normalize(images, scale, shift, self._input_dtype(), self.hparams.channels_last)

    def preview_batch(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first `count` training images three ways, for looking at the augmentation: as stored (uint8 NHWC,
        unpadded), and as the network receives them in the first training batch (augmented, normalized NCHW), with
        their labels. Tensor path only. A whole training batch is augmented, on the device training batches are
        augmented on (with --no-data-on-device the data set stays in host memory): a compiled augmentation then sees
        the shape and device it was compiled for."""
        padded, labels = self._as_tensors("train")
        device = self.trainer.strategy.root_device if self.trainer is not None else padded.device
        padded, labels = padded[: self.hparams.batch_size].to(device), labels[: self.hparams.batch_size].to(device)
        augmented = self.train_transform(padded, 0, 0)[:count]
        padded, labels = padded[:count], labels[:count]
        pad_by = self.hparams.crop_padding
        stored = padded[:, pad_by : pad_by + IMAGE_SIZE, pad_by : pad_by + IMAGE_SIZE] if pad_by else padded
        return stored, augmented, labels

    def example_batch(self, size: int, train: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A random uint8 batch of the shape the loaders yield (for compiling every shape ahead of training)."""
        side = IMAGE_SIZE + (2 * self.hparams.crop_padding if train else 0)
        generator = torch.Generator(device=device).manual_seed(0)
        images = torch.randint(0, 256, (size, side, side, 3), dtype=torch.uint8, generator=generator, device=device)
        return images, torch.randint(0, len(self.class_names), (size,), generator=generator, device=device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 batches (the tensor path) become the network's input here; training batches are augmented first.
        Batches of the PIL path arrive normalized in float32 and get the tensor path's dtype and memory format, so
        the network (compiled for one input type) sees the same input from either path."""
        images, labels = batch
        if images.dtype == torch.uint8:
            if self.trainer is not None and self.trainer.training and self._train_loader is not None:
                images = self.train_transform(images, *self._train_loader.next_batch_key())
            else:
                images = self.eval_transform(images)
        else:
            layout = torch.channels_last if self.hparams.channels_last else torch.contiguous_format
            images = images.to(dtype=self._input_dtype(), memory_format=layout)
        return images, labels

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized NCHW batches back to [0, 1] for pictures."""
        mean, std = self.channel_constants(images.device, kind="mean_std")
        return denormalize(images, mean, std)

    def data_identity(self) -> tuple[dict[str, int], dict[str, str]]:
        """(images per split, a fingerprint per split): what a resume checks the data against. The fingerprint
        hashes every label and every 97th image, enough to tell another or a changed data set apart cheaply."""
        sizes = {name: len(split) for name, split in self.splits.items()}
        prints = {}
        for name, split in self.splits.items():
            digest = hashlib.sha256(np.ascontiguousarray(split.labels).tobytes())
            digest.update(np.ascontiguousarray(split.images[::97]).tobytes())
            prints[name] = digest.hexdigest()[:16]
        return sizes, prints

    def state_dict(self) -> dict[str, Any]:
        """The normalization, the class list and the data's identity, so a checkpoint alone is enough to evaluate or
        classify images later, and a resume can tell whether the data changed."""
        kind = self.dataset.kind if self.dataset is not None else None
        sizes, prints = self.data_identity() if self.splits else ({}, {})
        return {"mean": list(self.mean), "std": list(self.std), "class_names": list(self.class_names), "dataset": kind,
                "sizes": sizes, "fingerprints": prints}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.mean = tuple(state_dict["mean"])
        self.std = tuple(state_dict["std"])
        self._channel_constants.clear()
