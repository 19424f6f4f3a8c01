"""When checkpoints are written: ModelCheckpoint's rules, each write counted as the run's checkpoints phase."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from cifar_lit.lightning_compat import on_last_batch_of_epoch
from cifar_lit.phases import phase
from cifar_lit.reliability.checkpoints import CHECKPOINT_FOLDER, LAST_NAME
from cifar_lit.reliability.run_folder import RunFolderCallback


class PhasedCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint; the hooks in which it may save count as the checkpoints phase. `{epoch}` in a
    file name counts from 1, as every message, metrics.csv and the progress bar do (Lightning counts from 0)."""

    def format_checkpoint_name(self, metrics: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": int(metrics["epoch"]) + 1}
        return super().format_checkpoint_name(metrics, *args, **kwargs)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        with phase("checkpoints"):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with phase("checkpoints"):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with phase("checkpoints"):
            super().on_validation_end(trainer, pl_module)


class StepCheckpoint(PhasedCheckpoint):
    """Every N training steps, except on an epoch's last batch (the epoch-end checkpoint, written right after
    validation, covers that step; see lightning_compat.on_last_batch_of_epoch)."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not on_last_batch_of_epoch(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class FinalCheckpoint(RunFolderCallback):
    """last.ckpt once, when training ends, for runs that skip the per-epoch ones (`--ckpt-every-n-epochs 0`): what
    `--resume last` needs to test and summarise a stopped run, or to train on with a raised target. `before_save`
    (the NaN guard's check) runs first, so a poisoned state is never written."""

    def __init__(self, before_save: Callable[[], None], run_dir: Path | None = None) -> None:
        super().__init__(run_dir)
        self.before_save = before_save

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.before_save()
        with phase("checkpoints"):
            trainer.save_checkpoint(self.run_dir / CHECKPOINT_FOLDER / LAST_NAME, weights_only=False)
