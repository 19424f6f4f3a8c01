"""Iterables that feed the Trainer: batches sliced from tensors on the device, or the classic PIL Dataset."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cifar_lit.data.sources import Split


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (run seed, epoch, batch, rank...): nearby inputs give unrelated seeds."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


class TensorBatchLoader:
    """Batches of (uint8 images, labels) indexed straight out of tensors held on the training device.

    It replaces a DataLoader on the tensor data path: no workers, no collation, no host-to-device copy per batch.
    An epoch's order depends only on (seed, epoch), identical on every rank, each rank taking its own share. It is
    stateful (`state_dict`/`load_state_dict`), so Lightning can resume it mid-epoch at the next unseen batch.

    Args:
        images: uint8 (N, H, W, C) tensor, on the device where batches should appear.
        labels: int64 (N,) tensor on the same device.
        batch_size: images per batch on this rank.
        shuffle: draw a new order every epoch (training); otherwise keep the stored order (evaluation).
        drop_last: drop the last incomplete batch; with several ranks also gives every rank the same count.
        seed: run seed, mixed with the epoch for the order.
        rank, world_size: this process's share of each epoch.
        epoch_fn: returns the current epoch (the Trainer's), read when an epoch's iteration starts.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Callable[[], int] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.epoch = 0
        self.consumed = 0
        self._resume_state: dict[str, int] | None = None

    def _rank_sample_count(self) -> int:
        n = len(self.labels)
        if self.drop_last:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        count = self._rank_sample_count()
        if self.drop_last:
            return count // self.batch_size
        return -(-count // self.batch_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`: a strided share of one order shared by all ranks, drawn on the
        data's device (no host-to-device copy)."""
        n, device = len(self.labels), self.labels.device
        if self.shuffle:
            generator = torch.Generator(device=device).manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator, device=device)
        else:
            order = torch.arange(n, device=device)
        return order[self.rank :: self.world_size][: self._rank_sample_count()]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch_fn()
        start = 0
        if self._resume_state is not None and self._resume_state["epoch"] == epoch:
            start = self._resume_state["consumed"]
        self._resume_state = None
        self.epoch, self.consumed = epoch, start
        return self._batches(self.epoch_indices(epoch), start)

    def _batches(self, order: torch.Tensor, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in range(start, len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self.images[index], self.labels[index]

    def next_batch_key(self) -> tuple[int, int]:
        """(epoch, batch index) of the batch about to be trained on; call once per consumed training batch.

        Lightning fetches a batch ahead, so the loader cannot count consumption by what it yielded: the caller
        marks each batch as it reaches the model, and that count is what a checkpoint records.
        """
        key = (self.epoch, self.consumed)
        self.consumed += 1
        return key

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = {"epoch": int(state_dict["epoch"]), "consumed": int(state_dict["consumed"])}


class PILImageDataset(Dataset):
    """The classic path: one PIL image at a time through torchvision transforms (kept to compare against)."""

    def __init__(self, split: Split, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.split.images[index])), int(self.split.labels[index])
