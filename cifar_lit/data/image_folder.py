"""Any folder of small images with its own classes: `train/<class>/*` and `test/<class>/*`, decoded once into a uint8
cache.

The class list is the sorted class-folder names, as torchvision's ImageFolder orders them (for CIFAR-10's ten names
that is also CIFAR-10's label order). Every file Pillow can open is an image, whatever the case of its suffix, also
in subfolders of a class folder (as ImageFolder takes them); other files are skipped and named in the log, with their
count. Images must be 32x32 unless `resize` is set, in which case each is centre-cropped to a square and resized to
32x32 once, when it is decoded (the cache key includes it). Grayscale, palette, transparent and 16-bit images become
8-bit RGB through `pixels.to_rgb`, the conversion every other way in uses too, and the log says how many. Every
problem names the file or folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cifar_lit.data.constants import IMAGE_SIZE
from cifar_lit.data.pixels import is_picture_name, picture_array
from cifar_lit.data.split import SPLITS, Split
from cifar_lit.reliability.errors import DataError
from cifar_lit.reliability.files import atomic_file

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = "3"  # 2: the class list and the resize setting are part of the key; 3: alpha on white
LAYOUT_HINT = (
    "An image folder holds train/<class>/ and test/<class>/: one folder per class (at least two, the same names in "
    f"both), each with images (PNG, JPEG, WebP, BMP, TIFF, GIF... any file Pillow opens) of {IMAGE_SIZE}x{IMAGE_SIZE} "
    "pixels (other sizes with --resize)."
)
MIN_CLASSES = 2
SHOWN = 3  # file names quoted in a log line about skipped files


def walk_class_folder(folder: Path) -> tuple[list[os.DirEntry], list[str], int]:
    """(image entries, names of other files, subfolders that held images) under a class folder, its subfolders
    included. Hidden files and folders (macOS's `._name` forks, `.cache`) are not looked at."""
    images: list[os.DirEntry] = []
    others: list[str] = []
    nested = 0
    pending = [Path(folder)]
    while pending:
        current = pending.pop()
        found = 0
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    pending.append(Path(entry.path))
                elif is_picture_name(entry.name):
                    images.append(entry)
                    found += 1
                else:
                    others.append(os.path.relpath(entry.path, folder))
        nested += found > 0 and current != Path(folder)
    return images, others, nested


def class_folders(root: Path, split: str) -> list[str]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"The image folder {root} has no '{split}' folder ({split_dir} is missing). {LAYOUT_HINT}")
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))


def image_folder_classes(root: Path) -> tuple[str, ...]:
    """The class names of an image folder: its train/ class folders, sorted; test/ must have the same ones."""
    train, test = class_folders(root, "train"), class_folders(root, "test")
    if set(train) != set(test):
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        parts = [f"{root / 'train'} has {', '.join(only_train)} and {root / 'test'} does not" if only_train else "",
                 f"{root / 'test'} has {', '.join(only_test)} and {root / 'train'} does not" if only_test else ""]
        raise DataError(f"train/ and test/ of {root} have different class folders: "
                        f"{'; '.join(part for part in parts if part)}. Give both the same classes. {LAYOUT_HINT}")
    if len(train) < MIN_CLASSES:
        raise DataError(f"{root / 'train'} has {len(train)} class folder(s) ({', '.join(train) or 'none'}); a "
                        f"classifier needs at least {MIN_CLASSES}. {LAYOUT_HINT}")
    return tuple(train)


def list_image_folder(root: Path, split: str, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    """Image files of one split with their labels, in class order then file-name order."""
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        folder = root / split / name
        if not folder.is_dir():
            raise DataError(f"{root / split} lacks the class folder {name}. {LAYOUT_HINT}")
        images, others, nested = walk_class_folder(folder)
        broken = [entry.path for entry in images if entry.is_symlink() and not entry.is_file()]
        if broken:
            raise DataError(f"{broken[0]} is a link to a file that does not exist"
                            f"{f' ({len(broken)} such links in {folder})' if len(broken) > 1 else ''}. Fix the "
                            "link's target or remove the link.")
        if others:
            log.warning("Skipped %d file(s) of %s that are not images Pillow can open: %s%s.", len(others), folder,
                        ", ".join(sorted(others)[:SHOWN]), ", ..." if len(others) > SHOWN else "")
        if nested:
            log.info("Using the images in %d subfolder(s) of %s as class %s too.", nested, folder, name)
        # Paths sorted as strings: the order of sorted Paths, 5x faster.
        paths = sorted(entry.path for entry in images if entry.is_file())
        if not paths:
            raise DataError(f"The class folder {folder} holds no images. {LAYOUT_HINT}")
        files.extend((Path(path), label) for path in paths)
    return files


def count_images(root: Path) -> tuple[int, int]:
    """(training, test) image files, by listing alone."""
    counts = []
    for split in SPLITS:
        total = 0
        if (root / split).is_dir():
            for folder in os.scandir(root / split):
                if folder.is_dir() and not folder.name.startswith("."):
                    total += len(walk_class_folder(Path(folder.path))[0])
        counts.append(total)
    return counts[0], counts[1]


def decode_image(path: Path, resize: bool = False) -> tuple[np.ndarray, str | None]:
    """A 32x32 RGB uint8 array from an image file, with the mode it was converted from; DataError naming the file."""
    try:
        with Image.open(path) as image:
            if image.size != (IMAGE_SIZE, IMAGE_SIZE) and not resize:
                raise DataError(
                    f"{path} is {image.size[0]}x{image.size[1]} pixels; images must be {IMAGE_SIZE}x{IMAGE_SIZE}. "
                    "Pass --resize to resize every image to 32x32 once (when it is first decoded), or resize the "
                    "file or remove it from the data folder."
                )
            return picture_array(image, IMAGE_SIZE)
    except DataError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise DataError(
            f"Cannot read the image {path} ({type(error).__name__}: {error}). The file is corrupt, truncated or "
            "not an image: replace it with a good copy or delete it."
        ) from None


def fingerprint(files: list[tuple[Path, int]], root: Path, classes: tuple[str, ...], resize: bool) -> str:
    """A hash of every file's relative path, size, modification time and label, the classes and the resize
    setting: changes when the source or the decoding does."""
    digest = hashlib.sha256(f"{CACHE_FORMAT_VERSION}\t{resize}\t{'/'.join(classes)}\n".encode())
    prefix = len(str(root).rstrip(os.sep)) + 1  # every file lies under root: its relative path is a suffix
    for path, label in files:
        name = str(path)
        stat = os.stat(name)
        # surrogateescape: a file name that is not valid UTF-8 (bytes as the file system has them) hashes as is
        digest.update(f"{name[prefix:]}\t{stat.st_size}\t{stat.st_mtime_ns}\t{label}\n".encode("utf-8",
                                                                                            "surrogateescape"))
    return digest.hexdigest()


def decode_image_folder(files: list[tuple[Path, int]], resize: bool = False,
                        workers: int | None = None) -> tuple[Split, Counter[str]]:
    """Decode every file with a thread pool (PIL releases the GIL while decoding); also the count of images
    converted from each other mode."""
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(pool.map(lambda path: decode_image(path, resize), (path for path, _ in files), chunksize=256))
    converted = Counter(mode for _, mode in decoded if mode is not None)
    split = Split(np.stack([image for image, _ in decoded]), np.array([label for _, label in files], dtype=np.int64))
    return split, converted


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


def load_image_folder_split(root: Path, split: str, cache_dir: Path | None = None, *, resize: bool = False,
                            classes: tuple[str, ...] | None = None) -> Split:
    """One split of an image folder, from the uint8 cache when it matches the files, else decoded and cached."""
    classes = classes or image_folder_classes(root)
    files = list_image_folder(root, split, classes)
    cache_path = (cache_dir or default_cache_dir(root)) / f"{split}.npz"
    source_fingerprint = fingerprint(files, root, classes, resize)
    cached = read_cache(cache_path, source_fingerprint)
    if cached is not None:
        return cached
    log.info("Decoding %d images of %s into the cache %s (once).", len(files), root / split, cache_path)
    decoded, converted = decode_image_folder(files, resize)
    if converted:
        log.info("Converted to RGB: %s images of %s.", ", ".join(f"{count} {mode}" for mode, count in
                                                              sorted(converted.items())), root / split)
    try:
        write_cache(cache_path, decoded, source_fingerprint)
    except OSError as error:
        log.warning("Could not write the cache %s (%s); the images will be decoded again next time.", cache_path, error)
    return decoded
