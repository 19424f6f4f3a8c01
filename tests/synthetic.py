"""Small synthetic CIFAR-10 look-alikes written into a test's tmp_path, in both supported formats.

Each class gets its own base colour plus noise, so a network can learn the set within a few steps: enough to
test stopping at a target accuracy without real data.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from cifar_lit.data.constants import CIFAR10_CLASSES

CLASS_COLOURS = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [128, 128, 128]],
    dtype=np.float32,
)


def make_images(per_class: int, seed: int, noise: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (10 * per_class, 32, 32, 3) images whose class is told by their colour, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CIFAR10_CLASSES)), per_class)
    base = CLASS_COLOURS[labels][:, None, None, :]
    images = base + rng.normal(0.0, noise, size=(len(labels), 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_image_folder(root: Path, train_per_class: int = 12, test_per_class: int = 6, suffix: str = ".png",
                       seed: int = 0, mislabeled_test_fraction: float = 0.0) -> Path:
    """root/train/<class>/NNNN.png and root/test/<class>/NNNN.png; a share of test images can be filed under a
    wrong class, which caps the reachable test accuracy below 100%."""
    for split, per_class, split_seed in (("train", train_per_class, seed), ("test", test_per_class, seed + 1)):
        images, labels = make_images(per_class, split_seed)
        if split == "test" and mislabeled_test_fraction:
            rng = np.random.default_rng(seed + 2)
            wrong = rng.choice(len(labels), int(mislabeled_test_fraction * len(labels)), replace=False)
            labels[wrong] = (labels[wrong] + rng.integers(1, len(CIFAR10_CLASSES), len(wrong))) % len(CIFAR10_CLASSES)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / CIFAR10_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:04d}{suffix}")
    return root


def write_torchvision_batches(root: Path, train_per_class: int = 10, test_per_class: int = 5, seed: int = 0) -> Path:
    """root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} in torchvision's pickle format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = make_images(train_per_class, seed)
    order = np.random.default_rng(seed).permutation(len(labels))
    for number, part in enumerate(np.array_split(order, 5), start=1):
        _dump(folder / f"data_batch_{number}", images[part], labels[part])
    test_images, test_labels = make_images(test_per_class, seed + 1)
    _dump(folder / "test_batch", test_images, test_labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, handle)
    return root


def _dump(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as handle:
        pickle.dump({"data": data, "labels": labels.tolist()}, handle)


def write_cifar100(root: Path, train_per_class: int = 3, test_per_class: int = 1, seed: int = 0) -> Path:
    """root/cifar-100-python/{train,test,meta} in torchvision's CIFAR-100 pickle format: 100 fine classes, each
    its own colour, five to a coarse superclass. The files cannot match the published MD5 sums."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0, 255, size=(100, 3)).astype(np.float32)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(100), per_class)
        images = np.clip(colours[fine][:, None, None, :] + rng.normal(0, 10, (len(fine), 32, 32, 3)), 0, 255)
        data = images.astype(np.uint8).transpose(0, 3, 1, 2).reshape(len(fine), -1)
        with open(folder / split, "wb") as handle:
            pickle.dump({"data": data, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                         "filenames": [f"{i}.png".encode() for i in range(len(fine))]}, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [f"fine_{i:02d}" for i in range(100)],
                     "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)]}, handle)
    return root


THREE_CLASSES = {"lichen": (40, 160, 60), "rust": (200, 80, 30), "slate": (70, 90, 200)}


def write_own_folder(root: Path, train_per_class: int = 20, test_per_class: int = 6, seed: int = 0) -> Path:
    """A 3-class image folder with names that are not CIFAR-10's; some images are 48x40 pixels, some grayscale
    (their class is then told by brightness), the rest 32x32 RGB."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for name, colour in THREE_CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                size = (40, 48) if index % 4 == 1 else (32, 32)
                pixels = np.clip(np.array(colour, dtype=np.float32) + rng.normal(0, 20, (*size, 3)), 0, 255)
                image = Image.fromarray(pixels.astype(np.uint8))
                if index % 4 == 2:
                    image = image.convert("L")
                image.save(folder / f"{index:03d}.png")
    return root


def write_noise_folder(root: Path, per_class: int = 30, seed: int = 0) -> Path:
    """CIFAR-10's class folders filled with uniform noise: nothing in an image tells its class."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", max(1, per_class // 3))):
        for name in CIFAR10_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{index:04d}.png")
    return root
