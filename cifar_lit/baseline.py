"""A bare PyTorch training loop over the same model, recipe and data path as the Lightning run.

It exists to measure what Lightning costs: same data on the device, same batched augmentation and seeds, same
optimizer, schedule, precision, memory format and compilation, no framework around it. The benchmark runs both on
the same work and reports the ratio.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifar_lit.data.augment import augment_batch, channel_tensor, normalize
from cifar_lit.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from cifar_lit.data.loaders import TensorBatchLoader, derive_seed
from cifar_lit.data.sources import load_split
from cifar_lit.metrics import EvaluationSums, evaluate_batch
from cifar_lit.models import resnet18
from cifar_lit.optim import build_scheduler, build_sgd
from cifar_lit.warmup import run_every_shape


def _autocast(device: torch.device, precision: str) -> Any:
    if precision.startswith("bf16"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return lambda: torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             batch_size: int, forward_context: Any, memory_format: torch.memory_format,
             flip_tta: bool = False) -> dict[str, torch.Tensor]:
    """The evaluation of uint8 images held on the model's device, by the same step as the Trainer's validation
    (cifar_lit.metrics): accuracy, loss, per-class accuracy, confusion matrix, flip-TTA accuracy."""
    model.eval()
    sums = EvaluationSums(len(CIFAR10_CLASSES)).to(labels.device)
    for start in range(0, len(labels), batch_size):
        batch = normalize(images[start : start + batch_size], mean, std).contiguous(memory_format=memory_format)
        with forward_context():
            batch_sums, _ = evaluate_batch(model, batch, labels[start : start + batch_size], len(CIFAR10_CLASSES),
                                           flip_tta)
        sums.update(batch_sums)
    model.train()
    return sums.compute()


def bare_training_run(config: dict[str, Any], device: str | torch.device, precision: str) -> dict[str, Any]:
    """Train like train.py would with `config` (epochs, target, recipe), evaluating on the test set each epoch.

    Returns seconds of training to the target (device synchronized, compile warm-up excluded and reported apart),
    the per-epoch accuracies and the training throughput.
    """
    device = torch.device(device)
    torch.manual_seed(config["seed"])
    data_dir = Path(config["data_dir"])
    train = load_split(data_dir, "train", None, config["verify_checksums"])
    test = load_split(data_dir, "test", None, config["verify_checksums"])

    def on_device(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2).contiguous().to(device)
        return images, torch.from_numpy(split.labels).to(device)

    train_images, train_labels = on_device(train)
    test_images, test_labels = on_device(test)
    mean, std = channel_tensor(CIFAR10_MEAN, device), channel_tensor(CIFAR10_STD, device)
    memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format

    model = resnet18(width=config["width"]).to(device, memory_format=memory_format)
    criterion = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
    forward_context = _autocast(device, precision)
    warmup_seconds = 0.0
    if config["compile"]:
        model.compile()
        eval_sizes = {min(config["eval_batch_size"], len(test_labels)), len(test_labels) % config["eval_batch_size"]}
        warmup_seconds = run_every_shape(model, config["batch_size"], [s for s in eval_sizes if s], criterion,
                                         forward_context, config["channels_last"])

    epoch_box = [0]
    loader = TensorBatchLoader(train_images, train_labels, config["batch_size"], shuffle=True, drop_last=True,
                               seed=config["seed"], epoch_fn=lambda: epoch_box[0])
    peak_lr = config["lr"]
    if config.get("lr_reference_batch_size"):
        peak_lr *= config["batch_size"] / config["lr_reference_batch_size"]
    optimizer = build_sgd(model, peak_lr, config["momentum"], config["nesterov"], config["weight_decay"],
                          config["norm_bias_weight_decay"], config["norm_bias_lr_scale"])
    scheduler = build_scheduler(optimizer, config["schedule"], config["max_epochs"] * len(loader),
                                config["warmup_fraction"], config["lr_start_factor"], config["lr_end_factor"])
    generator = torch.Generator(device=device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    accuracies, train_seconds, reached_seconds, reached_epoch = [], 0.0, None, None
    images_seen = 0
    synchronize()
    start = time.perf_counter()
    for epoch in range(config["max_epochs"]):
        epoch_box[0] = epoch
        epoch_start = time.perf_counter()
        for images, labels in loader:
            batch_epoch, batch_index = loader.next_batch_key()
            generator.manual_seed(derive_seed(config["seed"], batch_epoch, batch_index, 0))
            inputs = augment_batch(images, generator, mean, std, config["crop_padding"], config["flip"],
                                   config["cutout"]).contiguous(memory_format=memory_format)
            with forward_context():
                loss = criterion(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            images_seen += len(labels)
        synchronize()
        train_seconds += time.perf_counter() - epoch_start
        accuracy = float(evaluate(model, test_images, test_labels, mean, std, config["eval_batch_size"],
                                  forward_context, memory_format)["acc"])
        accuracies.append(accuracy)
        if reached_epoch is None and accuracy >= config["target_acc"]:
            reached_epoch, reached_seconds = epoch + 1, time.perf_counter() - start
            break
    return {
        "train_seconds_to_target": reached_seconds,
        "epochs_to_target": reached_epoch,
        "reached": reached_epoch is not None,
        "total_seconds": time.perf_counter() - start,
        "train_loop_seconds": train_seconds,
        "images_per_second": images_seen / train_seconds if train_seconds else None,
        "val_acc_per_epoch": accuracies,
        "test_acc": accuracies[-1] if accuracies else None,
        "warmup_seconds": warmup_seconds,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
