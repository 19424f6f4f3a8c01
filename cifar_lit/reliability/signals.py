"""SIGTERM and Ctrl-C at any moment of a run: stop at once where nothing can be lost, at a step boundary where
training state would be.

Outside training (start-up, data, warm-up, the final test, reports) there is nothing in memory worth saving that is
not on disk already, so the first signal raises `Interrupted` at once. While the training loop runs (steps,
validation, checkpoint writes) the signal is only noted; `GracefulStop` (below) saves a
checkpoint after the next step that resumes exactly and stops there. A second Ctrl-C interrupts at once in every
phase: checkpoints are written to a temporary file and renamed, so an interrupted write leaves the earlier file.

`Interrupted` is a BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it, and
Lightning passes it through its exception handling (callbacks' `on_exception`) unchanged.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from cifar_lit import phases
from cifar_lit.lightning_compat import is_lightning_sigterm, on_last_batch_of_epoch
from cifar_lit.phases import phase
from cifar_lit.reliability.checkpoints import CHECKPOINT_FOLDER, LAST_NAME
from cifar_lit.reliability.non_finite import NonFiniteLossGuard
from cifar_lit.reliability.run_folder import RunFolderCallback

SIGNALS = (signal.SIGINT, signal.SIGTERM)
AT_ONCE_IN_FIT = ("warmup",)  # inside fit but before any training: the compile warm-up holds nothing to save


class Interrupted(BaseException):
    """A signal stopped the run at once, in phase `phase` (the phase clock's name, or None without a clock);
    `run_dir` is filled in on the way out once the run has a folder."""

    def __init__(self, signum: int, phase: str | None) -> None:
        super().__init__(f"interrupted by signal {signum} during {phase}")
        self.signum = signum
        self.phase = phase
        self.run_dir: Path | None = None


class SignalGuard:
    """This process's SIGTERM/SIGINT handler (main thread only; elsewhere, e.g. a test runner's worker thread, it
    does nothing). `deferring` is set while a signal must wait for a step boundary; `signum` is the first signal
    received, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferring = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous.setdefault(signum, signal.getsignal(signum))
                signal.signal(signum, self.handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def handle(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        clock = phases.active()
        current = clock.current if clock is not None else None
        if not self.deferring or current in AT_ONCE_IN_FIT or (not first and signum == signal.SIGINT):
            self.deferring = False
            raise Interrupted(signum, current)


class StopRequested(Exception):
    """Training was asked to stop by a signal; a checkpoint was saved (path in `checkpoint`)."""

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, step: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.step = step


class GracefulStop(RunFolderCallback):
    """While the training loop runs, a first SIGTERM or Ctrl-C is held (SignalGuard) until the step in hand ends;
    then last.ckpt is saved and the run stops (StopRequested).

    Lightning installs its own SIGTERM handler at the start of every fit and test; its loops would then raise in
    the middle of a validation pass or of the final test. cifar_lit.run.train puts the project's handler back each
    time (lightning_compat.keep_own_signal_handlers). In a single process the stop happens after a training step
    that is not an epoch's last, so the checkpoint resumes exactly; a signal during validation or an epoch's last
    step takes effect after the next step, and one after the last step lets training end (run.train then stops
    before the test). With several processes every rank notes its own signals and, at the start of each step, all
    ranks agree whether any got one (lightning_compat.agree_on_stop_every_step): then all raise Lightning's
    SIGTERMException together, and `on_exception` saves last.ckpt once, collectively, never during the test.
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
        # From here on the handler only notes a signal: the stop comes at a step boundary (one process: after the
        # step; several: when all ranks agree at the next step's start).
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
