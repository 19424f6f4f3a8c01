"""CIFAR-10 as a LightningDataModule: download in `prepare_data`, datasets in `setup`, augmentation on the device."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms

from cifar_lit.data.augment import (
    apply_cutout,
    augment_batch,
    channel_tensor,
    denormalize,
    draw_cutout_centers,
    normalize,
)
from cifar_lit.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from cifar_lit.data.loaders import PILImageDataset, TensorBatchLoader, derive_seed
from cifar_lit.data.sources import (
    SPLITS,
    Split,
    detect_format,
    load_image_folder_split,
    load_split,
    missing_data_message,
)
from cifar_lit.data.stats import channel_stats
from cifar_lit.errors import DataError
from cifar_lit.lightning_compat import epochs_trained
from cifar_lit.option_types import NonNegativeInt, PositiveInt
from cifar_lit.phases import phase

log = logging.getLogger(__name__)


def download_cifar10(data_dir: Path) -> None:
    """Fetch torchvision's CIFAR-10 into `data_dir`, turning any failure into a DataError that says what to do."""
    from torchvision.datasets import CIFAR10

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(data_dir), train=True, download=True)
    except Exception as error:
        raise DataError(
            f"Downloading CIFAR-10 into {data_dir} failed ({type(error).__name__}: {error}). Check the network "
            "connection and that the folder is writable, or pass --no-download and point --data-dir at a local copy "
            "(torchvision's cifar-10-batches-py or an image folder with train/ and test/)."
        ) from None


class CutoutTransform:
    """Cutout for one normalized CHW tensor on the PIL path, sharing the batched implementation."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, h, w = image.shape
        centers = draw_cutout_centers(1, h, w, torch.default_generator, image.device)
        return apply_cutout(image[None], centers, self.size)[0]


class CIFAR10DataModule(pl.LightningDataModule):
    """CIFAR-10 from torchvision's batches or an image folder, held as uint8 and augmented batch-wise on the device.

    By default every epoch is validated on the 10,000 test images, the protocol of the seed project and of most
    CIFAR-10 speed records; `val_split > 0` holds that many training images out instead (seeded), and the test set
    is then only used by `trainer.test`.

    Args:
        data_dir: folder with `cifar-10-batches-py/` or an image folder (`train/<class>/`, `test/<class>/`).
        download: fetch CIFAR-10 with torchvision when `data_dir` holds no copy.
        batch_size: training images per step on each device (the global batch is this times the devices).
        eval_batch_size: images per validation/test step.
        data_path: "tensor" (uint8 tensors, augmentation batched on the device) or "pil" (torchvision transforms
            per image in DataLoader workers, the classic path, kept for comparison).
        crop_padding: random-crop padding in pixels (0 disables the crop).
        flip: random horizontal flips.
        cutout: side of the Cutout square in pixels (0 disables it).
        val_split: training images held out for validation (0: validate on the test set).
        seed: seed for the data order, augmentation and the validation split.
        num_workers: DataLoader workers on the "pil" path.
        verify_checksums: check torchvision batch files against their published MD5 sums.
        cache_dir: where decoded image folders are cached (default: inside the data folder, else ~/.cache).
        data_on_device: keep the whole data set on the training device (tensor path).
        shard_train_data: with several devices, keep only this rank's share of the training set on its device.
        channels_last: hand the model NHWC-strided batches (faster convolutions on tensor cores).
        normalization: "cifar10" uses the published constants; "computed" measures them on the training images.
    """

    def __init__(
        self,
        data_dir: str = "data",
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
        normalization: Literal["cifar10", "computed"] = "cifar10",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = CIFAR10_CLASSES
        self.mean: tuple[float, ...] = CIFAR10_MEAN
        self.std: tuple[float, ...] = CIFAR10_STD
        self.splits: dict[str, Split] = {}
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._train_loader: TensorBatchLoader | None = None
        self._channel_constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._generators: dict[torch.device, torch.Generator] = {}

    # ------------------------------------------------------------------------------------------------ data on disk

    @property
    def data_dir(self) -> Path:
        return Path(self.hparams.data_dir).expanduser()

    @property
    def cache_dir(self) -> Path | None:
        return Path(self.hparams.cache_dir).expanduser() if self.hparams.cache_dir else None

    def prepare_data(self) -> None:
        """Download when missing and allowed; decode an image folder into its cache once (rank zero only)."""
        with phase("data"):
            data_format = detect_format(self.data_dir)
            if data_format is None:
                if not self.hparams.download:
                    raise DataError(missing_data_message(self.data_dir))
                download_cifar10(self.data_dir)
            elif data_format == "image_folder":
                for split in SPLITS:
                    load_image_folder_split(self.data_dir, split, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            with phase("data"):
                self._load_splits()

    def _load_splits(self) -> None:
        train = load_split(self.data_dir, "train", self.cache_dir, self.hparams.verify_checksums)
        test = load_split(self.data_dir, "test", self.cache_dir, self.hparams.verify_checksums)
        if self.hparams.normalization == "computed":
            self.mean, self.std = channel_stats(train.images)
            log.info("Normalization computed on the training images: mean %s, std %s", self.mean, self.std)
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
        return torch.device("cpu")

    def _as_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A split as (uint8 NCHW images, int64 labels) on the training device, made once."""
        if name not in self._tensors:
            with phase("data"):
                self._tensors[name] = self._to_device(name)
        return self._tensors[name]

    def _to_device(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        split = self.splits[name]
        images, labels = split.images, split.labels
        rank, world = self._rank_and_world()
        if name == "train" and self.hparams.shard_train_data and world > 1:
            images, labels = images[rank::world], labels[rank::world]
        device = self._device()
        images_t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
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

    def _loader(self, name: str, train: bool) -> Any:
        batch_size = self.hparams.batch_size if train else self.hparams.eval_batch_size
        if self.hparams.data_path == "pil":
            dataset = PILImageDataset(self.splits[name], self._pil_transform(train))
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
                num_workers=self.hparams.num_workers,
                persistent_workers=self.hparams.num_workers > 0,
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

    def channel_constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as (1, 3, 1, 1) tensors on `device`, built once per device."""
        if device not in self._channel_constants:
            self._channel_constants[device] = (channel_tensor(self.mean, device), channel_tensor(self.std, device))
        return self._channel_constants[device]

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 batches become normalized float batches here; training batches are augmented first.

        A training batch's augmentation is seeded by (seed, epoch, batch index, rank), so it is the same whenever
        that batch is trained, in an uninterrupted run or after a resume.
        """
        images, labels = batch
        if images.dtype == torch.uint8:
            mean, std = self.channel_constants(images.device)
            if self.trainer is not None and self.trainer.training and self._train_loader is not None:
                epoch, index = self._train_loader.next_batch_key()
                generator = self._generator(images.device)
                generator.manual_seed(derive_seed(self.hparams.seed, epoch, index, self._rank_and_world()[0]))
                images = augment_batch(
                    images,
                    generator,
                    mean,
                    std,
                    crop_padding=self.hparams.crop_padding,
                    flip=self.hparams.flip,
                    cutout=self.hparams.cutout,
                )
            else:
                images = normalize(images, mean, std)
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized batches back to [0, 1] for pictures."""
        mean, std = self.channel_constants(images.device)
        return denormalize(images, mean, std)

    def state_dict(self) -> dict[str, Any]:
        """The normalization in use, so a checkpoint alone is enough to evaluate or classify images later."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.mean = tuple(state_dict["mean"])
        self.std = tuple(state_dict["std"])
        self._channel_constants.clear()
