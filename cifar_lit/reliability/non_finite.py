"""A non-finite training loss stops the run before anything poisoned is saved, found without stalling the device;
the steps loss scaling skips (non-finite gradients in fp16, handled by the scaler) are counted, not mistaken for it."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from cifar_lit.lightning_compat import loss_scale


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite at `step`."""

    def __init__(self, step: int, epoch: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step
        self.epoch = epoch


class NonFiniteLossGuard(Callback):
    """Notes the first step whose loss is NaN or infinite and stops the run before any checkpoint is written.

    The test runs on the device without waiting for it (no host sync per step); the host looks at the result on
    the Trainer's logging steps (every `log_every_n_steps`, when the loggers read values anyway), at every epoch's
    end and always before a checkpoint can be saved, so a poisoned state is never written over a good checkpoint.
    The step reported is the exact one where the loss first went bad.
    """

    def __init__(self, checkpoint_every_n_steps: int = 0) -> None:
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self._first_bad_step: torch.Tensor | None = None
        self._epoch_of_step: dict[int, int] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = trainer.global_step
        self._first_bad_step.masked_fill_(~torch.isfinite(loss.detach()) & (self._first_bad_step < 0), step)
        self._epoch_of_step[step] = trainer.current_epoch
        due = step % trainer.log_every_n_steps == 0
        checkpoint_due = self.checkpoint_every_n_steps and step % self.checkpoint_every_n_steps == 0
        if due or checkpoint_due:
            self.check()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._strategy = trainer.strategy

    def check(self) -> None:
        """Raise NonFiniteLoss if any step so far had a non-finite loss on any rank (all ranks raise together)."""
        if self._first_bad_step is not None:
            flag = self._first_bad_step
            if getattr(self, "_strategy", None) is not None and self._strategy.world_size > 1:
                flag = self._strategy.reduce(flag.clone().float(), reduce_op="max").long()
            bad_step = int(flag)
            if bad_step >= 0:
                raise NonFiniteLoss(bad_step, self._epoch_of_step.get(bad_step, 0))
            self._epoch_of_step.clear()


class SkippedSteps(Callback):
    """Counts the optimizer steps that 16-mixed's loss scaling skipped because the gradients overflowed in fp16.

    A skipped step is the scaler doing its job (it halves the scale and tries again), not a failed run: the loss
    itself is finite, so NonFiniteLossGuard, which looks at the loss, lets it pass. The count is kept on the device
    (the scale is compared before and after each step) and read once per epoch; it goes to the loggers as
    `train/skipped_steps`, into summary.json and into checkpoints.
    """

    def __init__(self) -> None:
        self.total = 0
        self._pending: torch.Tensor | None = None
        self._before: torch.Tensor | None = None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        scale = loss_scale(trainer)
        self._before = scale.detach().clone() if scale is not None else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        scale = loss_scale(trainer)
        if scale is None or self._before is None:
            return
        skipped = (scale < self._before).long()
        self._pending = skipped if self._pending is None else self._pending + skipped
        self._before = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        self.total += int(self._pending)
        self._pending = None
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"train/skipped_steps": self.total}, step=trainer.global_step)

    def count(self) -> int:
        """Skipped steps so far (reads the device's count)."""
        return self.total + (int(self._pending) if self._pending is not None else 0)

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.count()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total = int(state_dict.get("total", 0))
        self._pending = None
