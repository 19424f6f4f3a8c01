"""Fetching CIFAR-10 or CIFAR-100 with torchvision, leaving nothing behind when it fails."""

from __future__ import annotations

import shutil
from pathlib import Path

from cifar_lit.data.sources import NAMES, format_to_open, missing_data_message
from cifar_lit.reliability.errors import DataError


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


def fetch_if_missing(data_dir: Path, wanted: str, *, allowed: bool) -> None:
    """Download the data set `wanted` names when `data_dir` holds none and downloading is `allowed`; without it, a
    DataError saying where the data should be."""
    if format_to_open(data_dir, wanted) is not None:
        return
    if not allowed:
        raise DataError(missing_data_message(data_dir, wanted))
    download(data_dir, "cifar100" if wanted == "cifar100" else "cifar10")
