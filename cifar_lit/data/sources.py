"""Where the data set comes from, and which one it is: torchvision's pickled CIFAR-10 or CIFAR-100, or any image
folder (cifar_lit.data.image_folder).

`open_dataset` recognises what a data folder holds (or takes `--dataset`), reads the class list from the data
(CIFAR-100's meta file, the class-folder names) and returns a `DataSet` whose splits all end up as the same pair of
arrays: uint8 images (N, 32, 32, 3) and int64 labels (N,). Every problem with the files is a `DataError` naming
the file and the fix, raised before any training starts.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from cifar_lit.data.constants import CIFAR10_CLASSES, IMAGE_SIZE
from cifar_lit.data.image_folder import count_images, image_folder_classes, load_image_folder_split
from cifar_lit.data.split import SPLITS, Split
from cifar_lit.reliability.errors import DataError

__all__ = ["SPLITS", "DataSet", "Split", "detect_format", "expected_image_counts", "load_split", "open_dataset"]

# What torchvision downloads, with the (file name, MD5) pairs it checks them by.
CIFAR10_FOLDER, CIFAR100_FOLDER = CIFAR10.base_folder, CIFAR100.base_folder
TORCHVISION_FILES = {
    "cifar10": {"train": tuple(map(tuple, CIFAR10.train_list)), "test": tuple(map(tuple, CIFAR10.test_list))},
    "cifar100": {"train": tuple(map(tuple, CIFAR100.train_list)), "test": tuple(map(tuple, CIFAR100.test_list))},
}
CIFAR100_META = (CIFAR100.meta["filename"], CIFAR100.meta["md5"])
CIFAR100_LABEL_KEYS = {"fine": ("fine_labels", "fine_label_names"), "coarse": ("coarse_labels", "coarse_label_names")}
DATASETS = ("auto", "cifar10", "cifar100", "folder")
NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "folder": "image folder"}


def detect_format(data_dir: Path) -> str | None:
    """'cifar10' or 'cifar100' (torchvision's batches), 'folder' (an image folder), or None: what `data_dir` holds."""
    if (data_dir / CIFAR10_FOLDER).is_dir():
        return "cifar10"
    if (data_dir / CIFAR100_FOLDER).is_dir():
        return "cifar100"
    if (data_dir / "train").is_dir() or (data_dir / "test").is_dir():
        return "folder"
    return None


def format_to_open(data_dir: Path, dataset: str) -> str | None:
    """The format `--dataset` means in `data_dir` (None: not there yet, so it must be downloaded)."""
    present = detect_format(data_dir)
    if dataset == "auto":
        return present
    if dataset == "cifar100":
        return "cifar100" if (data_dir / CIFAR100_FOLDER).is_dir() else None
    if dataset == "cifar10":
        if (data_dir / CIFAR10_FOLDER).is_dir():
            return "cifar10"
        return "folder" if present == "folder" else None  # CIFAR-10 as an image folder (the JPEG copy)
    if present != "folder":
        raise DataError(f"--dataset folder needs {data_dir}/train/<class>/ and {data_dir}/test/<class>/, and "
                        f"{data_dir} holds {'no image folder' if present is None else NAMES[present]}. Point "
                        "--data-dir at the folder that has train/ and test/.")
    return "folder"


def expected_image_counts(data_dir: Path) -> tuple[int, int]:
    """(training, test) images the data folder will yield, without reading any image: torchvision's CIFAR-10 and
    CIFAR-100 have 50,000 and 10,000; an image folder is counted by listing it; one still to be downloaded is
    CIFAR's size too."""
    if detect_format(data_dir) == "folder":
        return count_images(data_dir)
    return 50_000, 10_000


def expected_device_bytes(data_dir: str | Path, crop_padding: int) -> int:
    """What the data set will take on the device as uint8 tensors (the training set padded for the crop), from the
    folder's listing alone: the hardware plan needs it before any image is read."""
    train, test = expected_image_counts(Path(data_dir).expanduser())
    padded = IMAGE_SIZE + 2 * crop_padding
    return train * padded * padded * 3 + test * IMAGE_SIZE * IMAGE_SIZE * 3 + (train + test) * 8


def expected_class_count(data_dir: Path, dataset: str = "auto", cifar100_labels: str = "fine") -> int:
    """The classes the data set will have, without reading it: CIFAR-100's 100 (20 coarse), an image folder's class
    folders, else CIFAR-10's 10 (also for a copy still to be downloaded). The memory estimate needs it first."""
    found = detect_format(data_dir)
    if dataset == "cifar100" or found == "cifar100":
        return 20 if cifar100_labels == "coarse" else 100
    if found == "folder" and (data_dir / "train").is_dir():
        return max(2, sum(1 for entry in (data_dir / "train").iterdir() if entry.is_dir()
                          and not entry.name.startswith(".")))
    return 10


def missing_data_message(data_dir: Path, dataset: str = "auto", downloadable: bool = True) -> str:
    """The one-paragraph error for a data folder that holds no copy of the data set (`downloadable`: the command
    can fetch it, train.py's --download)."""
    wanted, others = ("CIFAR-100", "") if dataset == "cifar100" else ("CIFAR-10", " (nor CIFAR-100, nor an image "
                                                                                  "folder)")
    where = (f"{data_dir} does not exist" if not data_dir.exists()
             else f"No {wanted} copy was found in {data_dir}{others}")
    folder = CIFAR100_FOLDER if dataset == "cifar100" else CIFAR10_FOLDER
    return (
        f"{where}: expected {data_dir / folder}/ (torchvision's format) or {data_dir}/train/<class>/ and "
        f"{data_dir}/test/<class>/ (an image folder). "
        + ("Pass --download to fetch it with torchvision, or point" if downloadable else
           "evaluate.py does not download (train.py --download does): point")
        + " --data-dir at a local copy (for example the unpacked cifar10-jpeg folder)."
    )


# ------------------------------------------------------------------------------------------------ torchvision batches


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a crafted batch file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpickle(path: Path, what: str) -> dict:
    """A torchvision batch or meta file through the allow-list unpickler; DataError naming it otherwise."""
    try:
        with open(path, "rb") as handle:
            return _ArrayUnpickler(handle, encoding="latin1").load()
    except Exception as error:
        raise DataError(
            f"Cannot read the {what} file {path} ({type(error).__name__}: {error}). Delete {path.parent} and "
            "download it again with --download."
        ) from None


def checked_file(folder: Path, name: str, *, expected_md5: str, verify: bool, what: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise DataError(f"{path} is missing from torchvision's {what} folder. Delete {folder} and run again with "
                        "--download, or point --data-dir at a complete copy.")
    if verify and md5sum(path) != expected_md5:
        raise DataError(f"{path} fails its MD5 checksum (expected {expected_md5}): the file is corrupt or incomplete. "
                        f"Delete {folder} and run again with --download to fetch a fresh copy.")
    return path


def read_batch_file(path: Path, label_key: str = "labels", classes: int = 10, what: str = "CIFAR-10 batch"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) and labels of one pickled CIFAR batch file."""
    entry = unpickle(path, what)
    try:
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
        images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    except Exception as error:
        raise DataError(f"Cannot read the {what} file {path} ({type(error).__name__}: {error}). Delete "
                        f"{path.parent} and download it again with --download.") from None
    if len(images) != len(labels) or (len(labels) and not 0 <= labels.min() <= labels.max() < classes):
        raise DataError(f"The {what} file {path} has inconsistent images and labels. Delete {path.parent} and "
                        "download it again with --download.")
    return np.ascontiguousarray(images), labels


def load_torchvision_split(data_dir: Path, split: str, *, verify_checksums: bool = True, dataset: str = "cifar10",
                           labels: str = "fine", classes: int = 10) -> Split:
    """One split of torchvision's pickled CIFAR-10 or CIFAR-100, each file checked against its MD5 first."""
    folder = data_dir / (CIFAR10_FOLDER if dataset == "cifar10" else CIFAR100_FOLDER)
    label_key = "labels" if dataset == "cifar10" else CIFAR100_LABEL_KEYS[labels][0]
    what = f"{NAMES[dataset]} batch"
    parts = [read_batch_file(checked_file(folder, name, expected_md5=md5, verify=verify_checksums,
                                          what=NAMES[dataset]), label_key, classes,
                             what) for name, md5 in TORCHVISION_FILES[dataset][split]]
    split_data = Split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    if len(split_data) == 0:
        raise DataError(f"The {split} files in {folder} hold no images. Delete {folder} and download it again.")
    return split_data


def cifar100_classes(data_dir: Path, labels: str, verify_checksums: bool) -> tuple[str, ...]:
    """CIFAR-100's class names from its meta file: the 100 fine classes, or the 20 coarse superclasses."""
    folder = data_dir / CIFAR100_FOLDER
    name, md5 = CIFAR100_META
    meta = unpickle(checked_file(folder, name, expected_md5=md5, verify=verify_checksums, what="CIFAR-100"),
                    "CIFAR-100 meta")
    names = meta.get(CIFAR100_LABEL_KEYS[labels][1]) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names) or len(names) < 2:
        raise DataError(f"The CIFAR-100 meta file {folder / CIFAR100_META[0]} has no list of "
                        f"{CIFAR100_LABEL_KEYS[labels][1]}. Delete {folder} and download it again with --download.")
    return tuple(names)


# ------------------------------------------------------------------------------------------------------ data set


@dataclass(frozen=True, kw_only=True)
class DataSet:
    """A data set as it lies on disk: which one (`kind`), its class names in label order, and how to read a split."""

    kind: str  # "cifar10", "cifar100" or "folder"
    data_dir: Path
    class_names: tuple[str, ...]
    source: str  # the format on disk: "cifar10", "cifar100" or "folder"
    verify_checksums: bool = True  # torchvision's files: checked against their published MD5 sums
    labels: str = "fine"  # CIFAR-100's fine or coarse labels
    cache_dir: Path | None = None  # an image folder's decoded cache (None: beside the data)
    resize: bool = False  # an image folder's pictures that are not 32x32 are resized

    @property
    def is_cifar10(self) -> bool:
        return self.kind == "cifar10"

    def describe(self) -> str:
        labels = f" ({self.labels} labels)" if self.kind == "cifar100" else ""
        return f"{NAMES[self.kind]}{labels}, {len(self.class_names)} classes, from {self.data_dir}"

    def load(self, split: str) -> Split:
        if self.source == "folder":
            return load_image_folder_split(self.data_dir, split, self.cache_dir, resize=self.resize,
                                           classes=self.class_names)
        return load_torchvision_split(self.data_dir, split, verify_checksums=self.verify_checksums,
                                      dataset=self.source, labels=self.labels,
                                      classes=len(self.class_names))


def open_dataset(data_dir: Path, dataset: str = "auto", *, cifar100_labels: str = "fine", cache_dir: Path | None = None,
                 verify_checksums: bool = True, resize: bool = False, downloadable: bool = True) -> DataSet:
    """The data set `dataset` means in `data_dir` ("auto": whatever it holds), with its class list."""
    data_dir = Path(data_dir)
    source = format_to_open(data_dir, dataset)
    if source is None:
        raise DataError(missing_data_message(data_dir, dataset, downloadable))
    if source == "cifar10":
        return DataSet(kind="cifar10", data_dir=data_dir, class_names=CIFAR10_CLASSES, source=source,
                       verify_checksums=verify_checksums)
    if source == "cifar100":
        classes = cifar100_classes(data_dir, cifar100_labels, verify_checksums)
        return DataSet(kind="cifar100", data_dir=data_dir, class_names=classes, source=source,
                       verify_checksums=verify_checksums, labels=cifar100_labels)
    classes = image_folder_classes(data_dir)
    if dataset == "cifar10" and classes != CIFAR10_CLASSES:
        raise DataError(f"--dataset cifar10 needs one class folder per CIFAR-10 class ({', '.join(CIFAR10_CLASSES)}), "
                        f"and {data_dir / 'train'} has: {', '.join(classes)}. For a folder of other classes use "
                        "--dataset folder (or leave --dataset at auto).")
    kind = "cifar10" if classes == CIFAR10_CLASSES else "folder"  # the JPEG copy of CIFAR-10 is CIFAR-10
    return DataSet(kind=kind, data_dir=data_dir, class_names=classes, source=source, cache_dir=cache_dir,
                   resize=resize)


def load_split(data_dir: Path, split: str, *, cache_dir: Path | None = None, verify_checksums: bool = True,
               dataset: str = "auto", cifar100_labels: str = "fine", resize: bool = False) -> Split:
    """One split of whichever data set `data_dir` holds."""
    return open_dataset(data_dir, dataset, cifar100_labels=cifar100_labels, cache_dir=cache_dir,
                        verify_checksums=verify_checksums, resize=resize).load(split)
