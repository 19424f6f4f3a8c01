"""Lightning's progress bar, with the latest training loss fetched without making the host wait for the device."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar


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
        super().on_train_epoch_start(trainer, *args)
        # Epochs counted from 1, as in every message, metrics.csv and the checkpoint names (Lightning's from 0).
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        if self._loss is not None and trainer.training:
            metrics["loss"] = f"{float(self._value[0]):.3f}"
        return metrics
