"""Stopping safely: on SIGTERM or Ctrl-C save a resumable checkpoint first; on a non-finite loss save nothing."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from cifar_lit.callbacks.run_folder import RunFolderCallback
from cifar_lit.checkpoints import CHECKPOINT_FOLDER, LAST_NAME
from cifar_lit.lightning_compat import is_lightning_sigterm, on_last_batch_of_epoch
from cifar_lit.phases import phase
from cifar_lit.signals import SignalGuard


class StopRequested(Exception):
    """Training was asked to stop by a signal; a checkpoint was saved (path in `checkpoint`)."""

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, step: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step


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


class GracefulStop(RunFolderCallback):
    """While the training loop runs, a first SIGTERM or Ctrl-C is held (cifar_lit.signals) until the step in hand
    ends; then last.ckpt is saved and the run stops (StopRequested).

    Lightning installs its own SIGTERM handler at the start of every fit and test; its loops would then raise in
    the middle of a validation pass or of the final test. In a single process cifar_lit.run puts the project's
    handler back each time (lightning_compat.keep_own_signal_handlers), and the stop always happens after a
    training step that is not an epoch's last, so the checkpoint resumes exactly; a signal during validation or an
    epoch's last step takes effect after the next step, and one after the last step lets training end (cifar_lit.run
    then stops before the test). With several processes Lightning's handler stays (it tells the other ranks), and
    its exception gets the same checkpoint if it comes while training, never during the test.
    """

    def __init__(self, guard: NonFiniteLossGuard | None = None, run_dir: Path | None = None,
                 signals: SignalGuard | None = None) -> None:
        super().__init__(run_dir)
        self.guard = guard
        self.signals = signals or SignalGuard()
        self.saved: Path | None = None
        self.lightning_signum: int | None = None

    @property
    def signum(self) -> int | None:
        return self.signals.signum or self.lightning_signum

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # With several processes the project's handler only notes the signal: Lightning's, which runs before it,
        # tells the other ranks and stops them all at the same point.
        self.signals.deferring = True

    def _save(self, trainer: pl.Trainer) -> None:
        if self.guard is not None:
            self.guard.check()
        path = self.run_dir / CHECKPOINT_FOLDER / LAST_NAME
        with phase("checkpoints"):
            trainer.save_checkpoint(path, weights_only=False)
        self.saved = path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (self.signals.signum is not None and self.signals.deferring and trainer.world_size == 1
                and not on_last_batch_of_epoch(trainer)):
            self.signals.deferring = False
            self._save(trainer)
            raise StopRequested(self.signals.signum, self.saved, trainer.current_epoch, trainer.global_step)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.signals.deferring = False
        if is_lightning_sigterm(exception) and self.saved is None and trainer.training:
            self.lightning_signum = signal.SIGTERM
            self._save(trainer)
