"""Evaluating a trained checkpoint without the Trainer: predictions, per-class numbers, and classifying user images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from cifar_lit.data.augment import normalize, scale_and_shift
from cifar_lit.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE
from cifar_lit.data.options import DataOptions
from cifar_lit.data.pixels import read_picture
from cifar_lit.reliability.checkpoints import check_compatible, datamodule_state, load_checkpoint
from cifar_lit.reliability.errors import CheckpointError, DataError
from cifar_lit.reliability.option_types import from_values
from cifar_lit.training.metrics import EvaluationSums, evaluate_batch
from cifar_lit.training.module import TOP5_ABOVE_CLASSES, CIFARClassifier


@dataclass(kw_only=True)
class TrainedModel:
    """A network restored from a checkpoint, with the normalization and class names it was trained with."""

    module: CIFARClassifier
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hparams: dict[str, Any]
    datamodule_hparams: dict[str, Any]
    class_names: tuple[str, ...] = CIFAR10_CLASSES
    dataset: str | None = None

    @property
    def data_options(self) -> DataOptions:
        """How the run read its data: the DataModule's options it saved, their defaults where a checkpoint from an
        older run lacks one."""
        return from_values(DataOptions, self.datamodule_hparams)


def load_trained_model(path: Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Weights-only load, refused with a message when unsafe, unreadable, or another model."""
    path = Path(path)
    checkpoint = load_checkpoint(path, resuming=False)
    check_compatible(checkpoint, path, use="evaluate")
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    module = CIFARClassifier.from_hyperparameters(hparams, compile=False)
    # check_compatible has matched every network weight; metric running sums (kept for resuming) may be absent
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    module.to(device).eval()
    data = datamodule_state(checkpoint)
    classes = tuple(data.get("class_names") or CIFAR10_CLASSES)  # checkpoints before other data sets: CIFAR-10
    if len(classes) != module.num_classes:
        raise CheckpointError(f"{path} lists {len(classes)} class names for a network of {module.num_classes}"
                              " outputs; it was not written by cifar_lit. Use a checkpoint of a cifar_lit run.")
    return TrainedModel(
        module=module,
        mean=tuple(data.get("mean", CIFAR10_MEAN)),
        std=tuple(data.get("std", CIFAR10_STD)),
        hparams=hparams,
        datamodule_hparams=dict(checkpoint.get("datamodule_hyper_parameters") or {}),
        class_names=classes,
        dataset=data.get("dataset", "cifar10"),
    )


def model_inputs(model: TrainedModel, images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 NHWC images as the normalized NCHW batch the network takes (the DataModule's evaluation transform)."""
    scale, shift = scale_and_shift(model.mean, model.std, device)
    return normalize(torch.from_numpy(np.ascontiguousarray(images)).to(device), scale, shift, channels_last=False)


@torch.inference_mode()
def evaluate_images(model: TrainedModel, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 500,
                    flip_tta: bool = False, device: torch.device | str = "cpu") -> tuple[dict[str, Any], np.ndarray]:
    """Accuracy, loss, per-class accuracy and confusion matrix (and flip-TTA accuracy) of uint8 NHWC images, by the
    evaluation step the Trainer's validation and test use (cifar_lit.training.metrics); and each image's predicted
    class."""
    classes = len(model.class_names)
    sums = EvaluationSums(classes).to(device)
    predictions = [torch.zeros(0, dtype=torch.long)]
    for start in range(0, len(images), batch_size):
        inputs = model_inputs(model, images[start : start + batch_size], device)
        targets = torch.from_numpy(np.asarray(labels[start : start + batch_size], dtype=np.int64)).to(device)
        batch_sums, batch_predictions = evaluate_batch(model.module, inputs, targets, num_classes=classes,
                                                       flip_tta=flip_tta)
        sums.update(batch_sums)
        predictions.append(batch_predictions.cpu())
    results = sums.compute()
    metrics: dict[str, Any] = {
        "images": int(results["images"]),
        "accuracy": float(results["acc"]),
        "loss": float(results["loss"]),
        "per_class_accuracy": dict(zip(model.class_names, results["per_class"].tolist(), strict=True)),
        "confusion_matrix": results["confusion"].tolist(),
    }
    if flip_tta:
        metrics["accuracy_flip_tta"] = float(results["acc_tta"])
    if classes > TOP5_ABOVE_CLASSES:
        metrics["accuracy_top5"] = float(results["acc_top5"])
    return metrics, torch.cat(predictions).numpy()


@torch.inference_mode()
def predict_probabilities(model: TrainedModel, images: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Class probabilities (N, classes) of the user's own uint8 NHWC images."""
    if len(images) == 0:
        return np.zeros((0, len(model.class_names)), dtype=np.float32)
    return F.softmax(model.module(model_inputs(model, images, device)).float(), dim=1).cpu().numpy()


def read_user_image(path: Path) -> np.ndarray:
    """Any picture as a 32x32 RGB uint8 array, converted as the training data was (`data.pixels`)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        raise DataError(f"The image {path} {what}. Give paths of image files (PNG, JPEG, WebP...) to --images.")
    try:
        return read_picture(path, IMAGE_SIZE)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for files that are not images
        raise DataError(f"Cannot read {path} as an image ({type(error).__name__}: {error}).") from None
