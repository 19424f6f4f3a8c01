"""What a user watches while a run trains: Lightning's progress bar, with the latest training loss fetched without
making the host wait for the device, and on the CPU a forecast of how long the run will take."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar

log = logging.getLogger("cifar_lit")


class LossProgressBar(TQDMProgressBar):
    """Shows `loss`, copied after each step into pinned host memory without blocking; the bar reads whatever value
    has arrived, at most a step or two old. (A step-level `prog_bar` value would be turned into a number with
    `.item()` after every step, and every `.item()` waits for the GPU to finish its queue.)"""

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._loss: torch.Tensor | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            if self._loss is None:
                self._loss = torch.full((1,), float("nan"), pin_memory=loss.is_cuda)
                self._value = self._loss.numpy()  # a view: reading it is plain host memory, never a device sync
            self._loss.copy_(loss.detach().reshape(1), non_blocking=True)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        """Lightning's reset of the bar, with the epoch counted from 1 as in every message, metrics.csv and the
        checkpoint names (Lightning's own would draw 'Epoch 0' first, visible in a log file)."""
        total = self.total_train_batches
        bar = self.train_progress_bar
        bar.reset(total=None if total == float("inf") else int(total))
        bar.initial = 0
        bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version cut to its last characters ("on_0"): the log names the folder
        if self._loss is not None and trainer.training:
            metrics["loss"] = f"{float(self._value[0]):.3f}"
        return metrics


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class TrainingForecast(pl.Callback):
    """On the CPU, times the steps after the first few and says how long an epoch and the whole schedule will take,
    when that is long, with what makes it shorter. The full ResNet18 takes about 3 s a step on two cores, 40 minutes
    an epoch: a user should hear that before waiting for the first epoch to end."""

    FIRST, MEASURED = 2, 3  # steps left out (allocation, first calls), then steps timed
    SAY_ABOVE_SECONDS = 120.0  # per epoch

    def __init__(self) -> None:
        self._start: float | None = None
        self._done = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._done or pl_module.device.type != "cpu":
            return
        if batch_idx + 1 == self.FIRST:
            self._start = time.perf_counter()
        elif self._start is not None and batch_idx + 1 == self.FIRST + self.MEASURED:
            self._done = True
            step = (time.perf_counter() - self._start) / self.MEASURED
            message = self.forecast(step, int(trainer.num_training_batches), trainer.max_epochs - trainer.current_epoch)
            if message:
                log.warning(message)

    def forecast(self, step_seconds: float, steps_per_epoch: int, epochs_left: int) -> str | None:
        epoch = step_seconds * steps_per_epoch
        if epoch <= self.SAY_ABOVE_SECONDS:
            return None
        return (f"On the CPU this run takes about {duration(epoch)} an epoch ({step_seconds:.1f} s a step x "
                f"{steps_per_epoch} steps) and up to {duration(epoch * epochs_left)} for its {epochs_left} "
                "epoch(s) left, fewer if it reaches its target sooner. A GPU trains it in minutes (Colab and Kaggle "
                "lend one free: python train.py --gpus 1 there). For a quick look here: --max-epochs 1 "
                "--limit-train-batches 50, or a narrower network with --width 16.")
