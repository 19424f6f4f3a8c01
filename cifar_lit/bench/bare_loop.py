"""A bare PyTorch training loop over the same model, recipe and data path as the Lightning run.

It exists to measure what Lightning costs: same data on the device, same batched augmentation and seeds, same
optimizer, schedule, precision, memory format and compilation, no framework around it. The benchmark runs both on
the same work and reports the ratio.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifar_lit.data.augment import augment, draw_codes, input_dtype, normalize, pad, scale_and_shift
from cifar_lit.data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, IMAGE_SIZE
from cifar_lit.data.loaders import TensorBatchLoader, derive_seed
from cifar_lit.data.sources import open_dataset
from cifar_lit.data.stats import channel_stats
from cifar_lit.hardware.timing import cudnn_autotune, peak_memory_mb, steady_throughput, synchronize
from cifar_lit.models import build_model
from cifar_lit.training.compile_warmup import compile_options, run_every_shape
from cifar_lit.training.metrics import EvaluationSums, evaluate_batch
from cifar_lit.training.optim import build_scheduler, build_sgd, scaled_lr


def _autocast(device: torch.device, precision: str) -> Any:
    if precision.startswith("bf16"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return lambda: torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext


@torch.no_grad()  # as the Trainer evaluates: compiled code is guarded on the grad mode
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
             batch_size: int, forward_context: Any, prepare: Callable[..., torch.Tensor] = normalize,
             step: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None, dtype: torch.dtype = torch.float32,
             channels_last: bool = True, flip_tta: bool = False, classes: int = len(CIFAR10_CLASSES)
             ) -> dict[str, torch.Tensor]:
    """The evaluation of uint8 NHWC images held on the model's device, by the same step as the Trainer's validation
    (cifar_lit.training.metrics): accuracy, loss, per-class accuracy, confusion matrix, flip-TTA accuracy. `prepare` and
    `step` may be compiled versions of `normalize` and of `evaluate_batch` bound to the model."""
    step = step or (lambda inputs, targets: evaluate_batch(model, inputs, targets, classes, flip_tta))
    model.eval()
    sums = EvaluationSums(classes).to(labels.device)
    for start in range(0, len(labels), batch_size):
        with forward_context():
            inputs = prepare(images[start : start + batch_size], scale, shift, dtype, channels_last)
            batch_sums, _ = step(inputs, labels[start : start + batch_size])
        sums.update(batch_sums)
    model.train()
    return sums.compute()


def bare_training_run(config: dict[str, Any], device: str | torch.device, precision: str) -> dict[str, Any]:
    """Train like train.py would with `config` (epochs, target, recipe), evaluating on the test set each epoch.

    Returns seconds of training to the target (device synchronized, compile warm-up excluded and reported apart),
    the per-epoch accuracies and the training throughput, measured as the Lightning run's (`steady_throughput`)
    with the same cuDNN settings.
    """
    device = torch.device(device)
    torch.manual_seed(config["seed"])
    torch.backends.cudnn.benchmark = cudnn_autotune(config["deterministic"])  # as the Trainer sets it
    dataset = open_dataset(Path(config["data_dir"]), config["dataset"], config["cifar100_labels"], None,
                           config["verify_checksums"], config["resize"])
    train, test = dataset.load("train"), dataset.load("test")
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if dataset.is_cifar10 else channel_stats(train.images)  # as the run

    def on_device(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(split.images)).to(device)
        return images, torch.from_numpy(split.labels).to(device)

    train_images, train_labels = on_device(train)
    train_images = pad(train_images, config["crop_padding"])
    test_images, test_labels = on_device(test)
    scale, shift = scale_and_shift(mean, std, device)
    dtype, channels_last = input_dtype(precision), config["channels_last"]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    classes = len(dataset.class_names)

    model = build_model(config["model"], classes, config["width"]).to(device, memory_format=memory_format)
    criterion = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
    forward_context = _autocast(device, precision)

    def train_forward(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return criterion(model(inputs), targets)

    def eval_forward(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return evaluate_batch(model, inputs, targets, classes)

    transform, prepare = augment, normalize
    warmup_seconds = 0.0
    if config["compile"]:
        options = compile_options(config["compile_mode"])
        train_forward, eval_forward = torch.compile(train_forward, **options), torch.compile(eval_forward, **options)
        transform, prepare = torch.compile(augment, **compile_options()), torch.compile(normalize, **compile_options())
        eval_sizes = {min(config["eval_batch_size"], len(test_labels)), len(test_labels) % config["eval_batch_size"]}

        def warm_train(size: int) -> torch.Tensor:
            codes = torch.zeros(size, dtype=torch.long, device=device)
            with forward_context():
                inputs = transform(train_images[:size], codes, scale, shift, config["crop_padding"], config["flip"],
                                   config["cutout"], dtype, channels_last)
                return train_forward(inputs, train_labels[:size])

        def warm_eval(size: int) -> None:
            with forward_context():
                eval_forward(prepare(test_images[:size], scale, shift, dtype, channels_last), test_labels[:size])

        warmup_seconds = run_every_shape(model, warm_train, warm_eval, [config["batch_size"]],
                                         [size for size in eval_sizes if size])

    epoch_box = [0]
    loader = TensorBatchLoader(train_images, train_labels, config["batch_size"], shuffle=True, drop_last=True,
                               seed=config["seed"], epoch_fn=lambda: epoch_box[0])
    peak_lr = scaled_lr(config["lr"], config["batch_size"] * 1, config["lr_reference_batch_size"])  # one process
    optimizer = build_sgd(model, peak_lr, config["momentum"], config["nesterov"], config["weight_decay"],
                          config["norm_bias_weight_decay"], config["norm_bias_lr_scale"], config.get("fused_sgd"))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.startswith("16"))  # loss scaling, as 16-mixed
    # At most --limit-train-batches per epoch, as the Trainer (and its schedule) take them.
    batches = min(len(loader), config.get("limit_train_batches") or len(loader))
    scheduler = build_scheduler(optimizer, config["schedule"], config["max_epochs"] * batches,
                                config["warmup_fraction"], config["lr_start_factor"], config["lr_end_factor"])
    generator = torch.Generator(device=device)

    accuracies, train_seconds, reached_seconds, reached_epoch = [], 0.0, None, None
    epoch_rates = []
    synchronize(device)
    start, train_started_at = time.perf_counter(), time.time()
    for epoch in range(config["max_epochs"]):
        epoch_box[0] = epoch
        epoch_start, images_seen = time.perf_counter(), 0
        for images, labels in itertools.islice(loader, batches):
            batch_epoch, batch_index = loader.next_batch_key()
            generator.manual_seed(derive_seed(config["seed"], batch_epoch, batch_index, 0))
            codes = draw_codes(len(labels), config["crop_padding"], config["flip"], config["cutout"],
                               (IMAGE_SIZE, IMAGE_SIZE), generator, device)
            with forward_context():
                inputs = transform(images, codes, scale, shift, config["crop_padding"], config["flip"],
                                   config["cutout"], dtype, channels_last)
                loss = train_forward(inputs, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            images_seen += len(labels)
        synchronize(device)
        epoch_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_seconds
        epoch_rates.append(images_seen / epoch_seconds if epoch_seconds > 0 else None)
        results = evaluate(model, test_images, test_labels, scale, shift, config["eval_batch_size"], forward_context,
                           prepare, eval_forward, dtype, channels_last, classes=classes)
        accuracy = float(results["acc"])
        accuracies.append(accuracy)
        if reached_epoch is None and config["target_acc"] is not None and accuracy >= config["target_acc"]:
            reached_epoch, reached_seconds = epoch + 1, time.perf_counter() - start
            break
    train_ended_at = time.time()
    return {
        "train_seconds_to_target": reached_seconds,
        "epochs_to_target": reached_epoch,
        "reached": reached_epoch is not None,
        "total_seconds": time.perf_counter() - start,
        "train_loop_seconds": train_seconds,
        "images_per_second": steady_throughput(epoch_rates),
        "images_per_second_per_epoch": epoch_rates,
        "train_started_at": train_started_at,
        "train_ended_at": train_ended_at,
        "epochs_run": len(accuracies),
        "val_acc_per_epoch": accuracies,
        "test_acc": accuracies[-1] if accuracies else None,
        "warmup_seconds": warmup_seconds,
        "peak_gpu_memory_mb": peak_memory_mb(device),
    }
