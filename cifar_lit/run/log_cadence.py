"""Step-level scalars (the learning rate, train/loss_step) reach TensorBoard at least once per epoch."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

log = logging.getLogger("cifar_lit")


class LogEveryEpoch(Callback):
    """Lowers the Trainer's `log_every_n_steps` to the number of training steps in an epoch when it is larger.

    Lightning writes step-level scalars only on steps that are multiples of `log_every_n_steps`, counted over the
    whole run: with shorter epochs than that (a small data set, a large batch, many GPUs) no learning-rate curve or
    step loss would be logged at all, or only every few epochs. Runs in `setup`, before Lightning's loop reads it.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None:
            return
        steps = datamodule.train_batches_per_epoch()
        if isinstance(trainer.limit_train_batches, int):
            steps = min(steps, trainer.limit_train_batches)
        if 0 < steps < trainer.log_every_n_steps:
            log.info("Logging step-level scalars every %d steps (one epoch) instead of every %d.", steps,
                     trainer.log_every_n_steps)
            trainer.log_every_n_steps = steps
