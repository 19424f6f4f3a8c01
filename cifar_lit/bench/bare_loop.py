"""A bare PyTorch training loop around the run's own recipe: it differs from the Lightning run only in the loop.

It exists to measure what Lightning costs. The network, loss, compiled steps, optimizer and schedule are the
LightningModule's (`configure_model`, `build_optimizer`, `train_forward`, `eval_forward`); the data, its order and
its augmentation are the DataModule's (`train_dataloader`, `train_transform`, `eval_transform`); the compile
warm-up is the callback's (`compile_warmup.warm_up`); cuDNN's settings and the images/s measure are the Trainer
run's. What is left is the loop itself: no callbacks, logging, checkpoints or hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from typing import Any

import torch

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.hardware.timing import cudnn_autotune, peak_memory_mb, steady_throughput, synchronize
from cifar_lit.run.options import Options
from cifar_lit.run.stop_at_target import resolve_target
from cifar_lit.training.compile_warmup import warm_up
from cifar_lit.training.metrics import EvaluationSums
from cifar_lit.training.module import CIFARClassifier


def precision_context(device: torch.device, precision: str) -> Any:
    """Autocast as Lightning's mixed precision enters it around each step."""
    if precision.startswith("bf16"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return lambda: torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext


@torch.no_grad()  # as the Trainer evaluates: compiled code is guarded on the grad mode
def evaluate(module: CIFARClassifier, datamodule: ImageDataModule, context: Any) -> dict[str, torch.Tensor]:
    """The test set through the DataModule's evaluation transform and the module's evaluation step, as the Trainer's
    validation runs them."""
    module.eval()
    sums = EvaluationSums(module.num_classes).to(next(module.parameters()).device)
    for images, labels in datamodule.val_dataloader():
        inputs = datamodule.eval_transform(images)
        with context():
            batch_sums, _ = module.eval_forward(inputs, labels)
        sums.update(batch_sums)
    module.train()
    return sums.compute()


def bare_training_run(options: Options, device: str | torch.device, precision: str) -> dict[str, Any]:
    """Train like train.py would with `options` (epochs, target, recipe), evaluating on the test set each epoch.

    Returns seconds of training to the target (device synchronized, compile warm-up excluded and reported apart),
    the per-epoch accuracies and the training throughput, measured as the Lightning run's (`steady_throughput`) with
    the same cuDNN settings.
    """
    device = torch.device(device)
    torch.manual_seed(options.run.seed)
    torch.backends.cudnn.benchmark = cudnn_autotune(options.run.deterministic)  # as the Trainer sets it
    datamodule = ImageDataModule(dataclasses.replace(options.data, data_on_device=True, data_path="tensor"))
    datamodule.use_without_trainer(device, precision)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = CIFARClassifier(options.model, num_classes=len(datamodule.class_names)).to(device)
    module.configure_model()  # channels_last and the compiled steps, as the Trainer's set-up does
    context = precision_context(device, precision)
    warmup_seconds = warm_up(module, datamodule, context) if module.options.compile else 0.0

    epoch_box = [0]
    loader = datamodule.train_dataloader()
    loader.epoch_fn = lambda: epoch_box[0]
    # At most --limit-train-batches per epoch, as the Trainer (and its schedule) take them.
    batches = min(len(loader), options.run.limit_train_batches or len(loader))
    optimizer, scheduler = module.build_optimizer(options.run.max_epochs * batches)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.startswith("16"))  # loss scaling, as 16-mixed

    target = resolve_target(options.run.target_acc, datamodule.dataset.kind if datamodule.dataset else None).value
    accuracies, epoch_rates, train_seconds, reached_seconds, reached_epoch = [], [], 0.0, None, None
    synchronize(device)
    start, train_started_at = time.perf_counter(), time.time()
    for epoch in range(options.run.max_epochs):
        epoch_box[0] = epoch
        epoch_start, images_seen = time.perf_counter(), 0
        for images, labels in itertools.islice(loader, batches):
            inputs = datamodule.train_transform(images, *loader.next_batch_key())
            with context():
                loss, _ = module.train_forward(inputs, labels)
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
        accuracy = float(evaluate(module, datamodule, context)["acc"])
        accuracies.append(accuracy)
        if reached_epoch is None and target is not None and accuracy >= target:
            reached_epoch, reached_seconds = epoch + 1, time.perf_counter() - start
            break
    return {
        "train_seconds_to_target": reached_seconds,
        "epochs_to_target": reached_epoch,
        "reached": reached_epoch is not None,
        "total_seconds": time.perf_counter() - start,
        "train_loop_seconds": train_seconds,
        "images_per_second": steady_throughput(epoch_rates),
        "images_per_second_per_epoch": epoch_rates,
        "train_started_at": train_started_at,
        "train_ended_at": time.time(),
        "epochs_run": len(accuracies),
        "val_acc_per_epoch": accuracies,
        "test_acc": accuracies[-1] if accuracies else None,
        "warmup_seconds": warmup_seconds,
        "peak_gpu_memory_mb": peak_memory_mb(device),
    }
