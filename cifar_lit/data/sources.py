"""Where CIFAR-10 comes from: torchvision's pickled batches, or an image folder decoded once into a uint8 cache.

Both formats end up as the same pair of arrays per split: uint8 images (N, 32, 32, 3) and int64 labels (N,).
Every problem with the files is raised as a `DataError` naming the file and the fix, before any training starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import CIFAR10

from cifar_lit.data.constants import CIFAR10_CLASSES, IMAGE_SIZE, IMAGE_SUFFIXES
from cifar_lit.reliability.errors import DataError
from cifar_lit.reliability.files import atomic_file

log = logging.getLogger(__name__)

TORCHVISION_FOLDER = CIFAR10.base_folder
# (file name, MD5) of torchvision's CIFAR-10 release, as torchvision itself checks them.
TORCHVISION_FILES = {"train": tuple(map(tuple, CIFAR10.train_list)), "test": tuple(map(tuple, CIFAR10.test_list))}
SPLITS = ("train", "test")
CACHE_FORMAT_VERSION = "1"
LAYOUT_HINT = (
    "An image folder must hold train/<class>/ and test/<class>/ with one folder per CIFAR-10 class, named "
    + ", ".join(CIFAR10_CLASSES)
    + f", each with 32x32 {'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} images."
)


@dataclass(frozen=True)
class Split:
    """One split of the data set, held as uint8 NHWC images and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def detect_format(data_dir: Path) -> str | None:
    """'torchvision', 'image_folder', or None when `data_dir` holds neither."""
    if (data_dir / TORCHVISION_FOLDER).is_dir():
        return "torchvision"
    if (data_dir / "train").is_dir() or (data_dir / "test").is_dir():
        return "image_folder"
    return None


def expected_image_counts(data_dir: Path) -> tuple[int, int]:
    """(training, test) images the data folder will yield, without reading any image: torchvision's CIFAR-10 has
    50,000 and 10,000; an image folder is counted by listing it; a folder still to be downloaded is CIFAR-10."""
    if detect_format(data_dir) == "image_folder":
        counts = []
        for split in SPLITS:
            total = 0
            if (data_dir / split).is_dir():
                for folder in os.scandir(data_dir / split):
                    if folder.is_dir() and not folder.name.startswith("."):
                        with os.scandir(folder.path) as entries:
                            total += sum(os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES for e in entries)
            counts.append(total)
        return counts[0], counts[1]
    return (sum(1 for _ in TORCHVISION_FILES["train"]) * 10_000, len(TORCHVISION_FILES["test"]) * 10_000)


def missing_data_message(data_dir: Path) -> str:
    """The one-paragraph error for a data folder that holds no CIFAR-10 copy."""
    where = f"{data_dir} does not exist" if not data_dir.exists() else f"No CIFAR-10 copy was found in {data_dir}"
    return (
        f"{where}: expected {data_dir / TORCHVISION_FOLDER}/ (torchvision's format) or {data_dir}/train/<class>/ and "
        f"{data_dir}/test/<class>/ (an image folder). Pass --download to fetch CIFAR-10 with torchvision, or point "
        "--data-dir at a local copy (for example the unpacked cifar10-jpeg folder)."
    )


# ---------------------------------------------------------------------------------------------------- image folder


def list_image_folder(root: Path, split: str) -> list[tuple[Path, int]]:
    """Image files of one split with their labels, in class order then file-name order; checks the layout."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"The image folder {root} has no '{split}' folder ({split_dir} is missing). {LAYOUT_HINT}")
    present = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    missing = [c for c in CIFAR10_CLASSES if c not in present]
    extra = [name for name in present if name not in CIFAR10_CLASSES]
    if missing:
        raise DataError(f"{split_dir} lacks the class folder(s) {', '.join(missing)}. {LAYOUT_HINT}")
    if extra:
        raise DataError(
            f"{split_dir} has folder(s) that are not CIFAR-10 classes: {', '.join(extra)}. Move them out of the "
            f"data folder. {LAYOUT_HINT}"
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(CIFAR10_CLASSES):
        folder = split_dir / name
        with os.scandir(folder) as entries:  # names sorted as strings: the order of sorted Paths, 5x faster
            names = sorted(entry.name for entry in entries
                           if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file())
        if not names:
            raise DataError(f"The class folder {folder} holds no images. {LAYOUT_HINT}")
        files.extend((folder / file_name, label) for file_name in names)
    return files


def decode_image(path: Path) -> np.ndarray:
    """A 32x32 RGB uint8 array from an image file, or a DataError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(
                    f"{path} is {image.size[0]}x{image.size[1]} pixels; CIFAR-10 images are "
                    f"{IMAGE_SIZE}x{IMAGE_SIZE}. Resize the file or remove it from the data folder."
                )
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise DataError(
            f"Cannot read the image {path} ({type(error).__name__}: {error}). The file is corrupt, truncated or "
            "not an image: replace it with a good copy or delete it."
        ) from None


def fingerprint(files: list[tuple[Path, int]], root: Path) -> str:
    """A hash of every file's relative path, size, modification time and label: changes when the source does."""
    digest = hashlib.sha256(CACHE_FORMAT_VERSION.encode())
    prefix = len(str(root).rstrip(os.sep)) + 1  # every file lies under root: its relative path is a suffix
    for path, label in files:
        name = str(path)
        stat = os.stat(name)
        digest.update(f"{name[prefix:]}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode())
    return digest.hexdigest()


def decode_image_folder(files: list[tuple[Path, int]], workers: int | None = None) -> Split:
    """Decode every file with a thread pool (PIL releases the GIL while decoding)."""
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(decode_image, (path for path, _ in files), chunksize=256))
    return Split(np.stack(images), np.array([label for _, label in files], dtype=np.int64))


def default_cache_dir(data_dir: Path) -> Path:
    """`<data_dir>/.cifar_lit_cache` when the data folder is writable, else a folder under ~/.cache."""
    if os.access(data_dir, os.W_OK):
        return data_dir / ".cifar_lit_cache"
    key = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "cifar_lit" / key


def write_cache(path: Path, split: Split, source_fingerprint: str) -> None:
    """Written whole or not at all (`atomic_file`): an interrupted decode never leaves a half-written cache."""
    with atomic_file(path) as handle:
        np.savez(handle, images=split.images, labels=split.labels, fingerprint=np.array(source_fingerprint))


def read_cache(path: Path, expected_fingerprint: str) -> Split | None:
    """The cached split, or None when it is missing, unreadable or stale (the reason is logged)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["fingerprint"]) != expected_fingerprint:
                log.warning("The cache %s no longer matches its source images; rebuilding it.", path)
                return None
            return Split(cached["images"], cached["labels"])
    except Exception as error:  # a damaged cache is rebuilt, never trusted
        log.warning("The cache %s is unreadable (%s); rebuilding it.", path, error)
        return None


def load_image_folder_split(root: Path, split: str, cache_dir: Path | None = None) -> Split:
    """One split of an image folder, from the uint8 cache when it matches the files, else decoded and cached."""
    files = list_image_folder(root, split)
    cache_path = (cache_dir or default_cache_dir(root)) / f"{split}.npz"
    source_fingerprint = fingerprint(files, root)
    cached = read_cache(cache_path, source_fingerprint)
    if cached is not None:
        return cached
    log.info("Decoding %d images of %s into the cache %s (once).", len(files), root / split, cache_path)
    decoded = decode_image_folder(files)
    try:
        write_cache(cache_path, decoded, source_fingerprint)
    except OSError as error:
        log.warning("Could not write the cache %s (%s); the images will be decoded again next time.", cache_path, error)
    return decoded


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


def read_batch_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) and labels of one pickled CIFAR-10 batch file."""
    try:
        with open(path, "rb") as handle:
            entry = _ArrayUnpickler(handle, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"], dtype=np.int64)
        images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    except Exception as error:
        raise DataError(
            f"Cannot read the CIFAR-10 batch file {path} ({type(error).__name__}: {error}). Delete "
            f"{path.parent} and download it again with --download."
        ) from None
    if len(images) != len(labels) or (len(labels) and not 0 <= labels.min() <= labels.max() < len(CIFAR10_CLASSES)):
        raise DataError(f"The CIFAR-10 batch file {path} has inconsistent images and labels. Delete {path.parent} and "
                        "download it again with --download.")
    return np.ascontiguousarray(images), labels


def load_torchvision_split(data_dir: Path, split: str, verify_checksums: bool = True) -> Split:
    """One split of torchvision's pickled CIFAR-10, each file checked against its published MD5 first."""
    folder = data_dir / TORCHVISION_FOLDER
    images, labels = [], []
    for name, expected_md5 in TORCHVISION_FILES[split]:
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"{path} is missing: torchvision's CIFAR-10 folder needs data_batch_1 to data_batch_5 and test_batch. "
                f"Delete {folder} and run again with --download, or point --data-dir at a complete copy."
            )
        if verify_checksums and md5sum(path) != expected_md5:
            raise DataError(
                f"{path} fails its MD5 checksum (expected {expected_md5}): the file is corrupt or incomplete. Delete "
                f"{folder} and run again with --download to fetch a fresh copy."
            )
        batch_images, batch_labels = read_batch_file(path)
        images.append(batch_images)
        labels.append(batch_labels)
    split_data = Split(np.concatenate(images), np.concatenate(labels))
    if len(split_data) == 0:
        raise DataError(f"The {split} files in {folder} hold no images. Delete {folder} and download it again.")
    return split_data


def load_split(data_dir: Path, split: str, cache_dir: Path | None = None, verify_checksums: bool = True) -> Split:
    """One split of whichever format `data_dir` holds."""
    data_format = detect_format(data_dir)
    if data_format == "torchvision":
        return load_torchvision_split(data_dir, split, verify_checksums)
    if data_format == "image_folder":
        return load_image_folder_split(data_dir, split, cache_dir)
    raise DataError(missing_data_message(data_dir))
