"""The data set as a LightningDataModule: download in `prepare_data`, datasets in `setup`, augmentation on the
device. Each part of the work lives in its own module: sources and checksums (`sources.py`, `download.py`), the
decode cache (`image_folder.py`), splits and their fingerprint (`split.py`), normalization (`stats.py`), the batch
transforms on the device (`batch_transforms.py`) and the classic PIL path (`pil_path.py`)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from cifar_lit.data.augment import input_dtype
from cifar_lit.data.batch_transforms import BatchTransforms
from cifar_lit.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE
from cifar_lit.data.download import fetch_if_missing
from cifar_lit.data.loaders import TensorBatchLoader
from cifar_lit.data.options import DataOptions
from cifar_lit.data.pil_path import pil_loader, pil_transform
from cifar_lit.data.sources import SPLITS, DataSet, Split, open_dataset
from cifar_lit.data.split import data_identity, device_tensors, training_splits
from cifar_lit.data.stats import normalization_for
from cifar_lit.lightning_compat import epochs_trained
from cifar_lit.phases import phase
from cifar_lit.training.compile_warmup import compile_options

log = logging.getLogger(__name__)


class ImageDataModule(pl.LightningDataModule):
    """A data set of small images (CIFAR-10, CIFAR-100 or any image folder) held as uint8 and augmented batch-wise
    on the device, as `options` (`DataOptions`) asks.

    The class names come from the data (`class_names`, after `prepare_data` or `setup`) and are kept in checkpoints
    with the normalization. Its hyperparameters are the options' fields, flat, as every earlier checkpoint holds them.
    """

    def __init__(self, options: DataOptions | None = None) -> None:
        super().__init__()
        self.options = options = options if options is not None else DataOptions()
        self.save_hyperparameters(asdict(options))
        self.dataset: DataSet | None = None
        self.class_names: tuple[str, ...] = CIFAR10_CLASSES  # until the data says otherwise
        self.splits: dict[str, Split] = {}
        self.transforms = BatchTransforms(options, CIFAR10_MEAN, CIFAR10_STD)
        self._prepared: dict[str, Split] = {}  # image-folder splits read by prepare_data, until setup takes them
        self._prepared_here = False
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._train_loader: TensorBatchLoader | None = None
        self._without_trainer: tuple[torch.device, str] | None = None  # (device, precision): `use_without_trainer`

    @property
    def mean(self) -> tuple[float, ...]:
        return self.transforms.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.transforms.std

    def use_without_trainer(self, device: torch.device | str, precision: str) -> None:
        """Serve a loop of its own (the bare PyTorch loop): the data on `device`, batches in `precision`'s dtype, one
        process. A Trainer tells the DataModule these itself."""
        self._without_trainer = (torch.device(device), precision)

    @property
    def data_dir(self) -> Path:
        return Path(self.options.data_dir).expanduser()

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
            fetch_if_missing(self.data_dir, self.options.dataset, allowed=self.options.download)
            dataset = self.open()
            if dataset.source == "folder":
                self._prepared = {split: dataset.load(split) for split in SPLITS}

    def open(self) -> DataSet:
        """The data set on disk, with its class names (read from the data, nothing decoded yet)."""
        if self.dataset is None:
            options = self.options
            cache = Path(options.cache_dir).expanduser() if options.cache_dir else None
            self.dataset = open_dataset(self.data_dir, options.dataset, cifar100_labels=options.cifar100_labels,
                                        cache_dir=cache, verify_checksums=options.verify_checksums,
                                        resize=options.resize)
            self.class_names = self.dataset.class_names
            log.info("Data: %s.", self.dataset.describe())
        return self.dataset

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            with phase("data"):
                dataset = self.open()
                train, test = (self._prepared.get(split) or dataset.load(split) for split in SPLITS)
                self._prepared = {}
                self.transforms.normalize_with(*normalization_for(self.options.normalization, dataset.is_cifar10,
                                                                  train.images))
                self.splits = training_splits(train, test, self.options.val_split, self.options.seed)
        if self.options.compile and not self.transforms.compiled:
            self.transforms.compile(**compile_options())

    # --------------------------------------------------------------------------------------------------- loaders

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _device(self) -> torch.device:
        if self.trainer is not None and self.options.data_on_device:
            return self.trainer.strategy.root_device
        if self.trainer is None and self._without_trainer is not None:
            return self._without_trainer[0]
        return torch.device("cpu")

    def _as_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A split as (uint8 NHWC images, int64 labels) on the training device, made once; the training images are
        stored zero-padded for the random crop (and only this rank's share with `shard_train_data`). Validation and
        test share one copy when they are the same set."""
        if name not in self._tensors:
            twin = next((other for other in ("val", "test") if other != name and other in self._tensors
                         and self.splits.get(other) is self.splits[name]), None)
            split = self.splits[name]
            if name == "train" and self.options.shard_train_data:
                split = split.shard(*self._rank_and_world())
            with phase("data"):
                self._tensors[name] = self._tensors[twin] if twin else device_tensors(
                    split, self._device(), self.options.crop_padding if name == "train" else 0)
        return self._tensors[name]

    def _loader(self, name: str, train: bool) -> Any:
        rank, world = self._rank_and_world()
        if self.options.data_path == "pil":
            return pil_loader(self.splits[name], pil_transform(self.options, self.mean, self.std, train),
                              options=self.options, train=train, rank=rank, world=world)
        images, labels = self._as_tensors(name)
        if train and self.options.shard_train_data:
            rank, world = 0, 1  # each rank already holds only its own share
        # The epoch a training iterator serves: after an epoch-end resume `trainer.current_epoch` would still name the
        # finished epoch (lightning_compat.epochs_trained).
        return TensorBatchLoader(images, labels, self.options.batch_size if train else self.options.eval_batch_size,
                                 shuffle=train, drop_last=train, seed=self.options.seed, rank=rank, world_size=world,
                                 epoch_fn=lambda: epochs_trained(self.trainer) if self.trainer is not None else 0)

    def steps_per_epoch_for(self, world_size: int) -> int:
        """Training steps per epoch when `world_size` processes share the training set (full batches only)."""
        return len(self.splits["train"]) // world_size // self.options.batch_size

    def train_batches_per_epoch(self) -> int:
        """Training batches this rank takes per epoch: the length of the loader it will train on, whichever path."""
        return len(self._loader("train", train=True))

    def eval_batch_sizes(self) -> list[int]:
        """Distinct batch sizes this rank's validation and test loaders produce (full batches and remainders)."""
        rank, world = self._rank_and_world()
        size, sizes = self.options.eval_batch_size, set()
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

    def _input_dtype(self) -> torch.dtype:
        if self.trainer is not None:
            return input_dtype(str(self.trainer.precision))
        return input_dtype(self._without_trainer[1]) if self._without_trainer is not None else torch.float32

    def train_transform(self, images: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        """A training batch of padded uint8 NHWC images as the network's input (`BatchTransforms.train`)."""
        return self.transforms.train(images, epoch=epoch, index=index, rank=self._rank_and_world()[0],
                                     dtype=self._input_dtype())

    def eval_transform(self, images: torch.Tensor) -> torch.Tensor:
        """An evaluation batch of uint8 NHWC images, normalized into the network's input."""
        return self.transforms.eval(images, self._input_dtype())

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized NCHW batches back to [0, 1] for pictures."""
        return self.transforms.denormalize(images)

    def preview_batch(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first `count` training images as stored (uint8 NHWC, unpadded) and as the network receives them in
        the first training batch (augmented, normalized NCHW), with their labels. Tensor path only. A whole batch is
        augmented on the device training batches are augmented on, so a compiled augmentation sees the shape and
        device it was compiled for (with --no-data-on-device the data set itself stays in host memory)."""
        padded, labels = self._as_tensors("train")
        device = self.trainer.strategy.root_device if self.trainer is not None else padded.device
        batch = self.options.batch_size
        padded, labels = padded[:batch].to(device), labels[:batch].to(device)
        augmented = self.train_transform(padded, 0, 0)[:count]
        padded, labels, by = padded[:count], labels[:count], self.options.crop_padding
        return (padded[:, by : by + IMAGE_SIZE, by : by + IMAGE_SIZE] if by else padded), augmented, labels

    def example_batch(self, size: int, train: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A random uint8 batch of the shape the loaders yield (for compiling every shape ahead of training)."""
        return self.transforms.example_batch(size, train=train, device=device, classes=len(self.class_names))

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
            layout = torch.channels_last if self.options.channels_last else torch.contiguous_format
            images = images.to(dtype=self._input_dtype(), memory_format=layout)
        return images, labels

    # ------------------------------------------------------------------------------------------------- checkpoints

    def data_identity(self) -> tuple[dict[str, int], dict[str, str]]:
        """(images per split, a fingerprint per split): what a resume checks the data against."""
        return data_identity(self.splits)

    def state_dict(self) -> dict[str, Any]:
        """The normalization, the class list and the data's identity, so a checkpoint alone is enough to evaluate or
        classify images later, and a resume can tell whether the data changed."""
        kind = self.dataset.kind if self.dataset is not None else None
        sizes, prints = self.data_identity() if self.splits else ({}, {})
        return {"mean": list(self.mean), "std": list(self.std), "class_names": list(self.class_names), "dataset": kind,
                "sizes": sizes, "fingerprints": prints}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.transforms.normalize_with(state_dict["mean"], state_dict["std"])
