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
