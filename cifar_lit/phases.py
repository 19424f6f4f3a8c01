"""Where a run's seconds go: every moment of a run belongs to exactly one phase, so the phases add up to its total.

    startup      imports, CUDA initialisation, parsing, building the Trainer
    data         finding, decoding and caching the images, loading them and moving them to the device
    warmup       compiling every batch shape before the training clock starts
    train        training steps
    validation   validation passes (the sanity check included)
    checkpoints  writing checkpoints and waiting for the background writer
    test         the final test of the best checkpoint
    reports      grids, figures, TensorBoard images, metrics.csv, the summary

Times are host times: work queued on the GPU is counted in the phase in which the host waits for it, since phase
changes do not synchronize the device (a few steps' worth at most).

There is one clock per process (`activate`, `active`); code anywhere marks its work with `phase(name)`, which does
nothing when no clock is active (library use, tests). `PhaseTimer` moves the clock along with Lightning's loops and
carries the run's phase seconds across resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

PHASES = ("startup", "data", "warmup", "train", "validation", "checkpoints", "test", "reports")


class PhaseClock:
    """Accumulates host seconds per phase for this process, plus the seconds carried over from earlier processes
    of the same run (a resumed run): `elapsed()` is this process, `cumulative()` the whole run."""

    def __init__(self, started: float | None = None) -> None:
        self.current = "startup"
        self._since = time.perf_counter() if started is None else started
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self.carried = dict.fromkeys(PHASES, 0.0)
        self.listeners: list[Callable[[str], None]] = []

    def switch(self, name: str) -> str:
        """Make `name` the current phase; returns the one it replaces. Listeners hear of every change."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; one of {', '.join(PHASES)}")
        now = time.perf_counter()
        self._seconds[self.current] += now - self._since
        self._since = now
        previous, self.current = self.current, name
        for listener in list(self.listeners):
            listener(name)
        return previous

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """`name` for the duration of a block, then back to the phase before it."""
        previous = self.switch(name)
        try:
            yield
        finally:
            self.switch(previous)

    def elapsed(self) -> dict[str, float]:
        """Seconds per phase in this process, up to now."""
        seconds = dict(self._seconds)
        seconds[self.current] += time.perf_counter() - self._since
        return seconds

    def cumulative(self, elapsed: dict[str, float] | None = None) -> dict[str, float]:
        """Seconds per phase over the whole run: carried over from earlier processes plus this one (`elapsed`, to
        add to a reading of this process taken before; default: now)."""
        return {name: self.carried[name] + value for name, value in (elapsed or self.elapsed()).items()}


_active: PhaseClock | None = None


def activate(clock: PhaseClock | None) -> None:
    """Make `clock` this process's clock (None: none)."""
    global _active
    _active = clock


def active() -> PhaseClock | None:
    return _active


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count a block as phase `name` on this process's clock, if there is one."""
    if _active is None:
        yield
    else:
        with _active.phase(name):
            yield


class PhaseTimer(Callback):
    """train while the training loop runs, validation during validation passes (the sanity check too), checkpoints
    once training has ended (the background writer is drained then), test during the final test and reports after
    it. The other phases are marked by the code that does their work (data, warm-up, checkpoint writes, figures).

    The run's phase seconds so far go to the loggers as `phases/<name>` after every training epoch and after the
    final test (rank zero).

    Its checkpoint state is the run's phase seconds so far, so a resumed run's summary counts every process.
    """

    def __init__(self, clock: PhaseClock) -> None:
        self.clock = clock
        self._before_sanity_check = "startup"
        self._restored: dict[str, float] | None = None

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_sanity_check = self.clock.switch("validation")

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.switch(self._before_sanity_check)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.switch("train")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.clock.switch("validation")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.clock.switch("train")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.switch("checkpoints")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.switch("test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.switch("reports")
        self._log(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer)

    def _log(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            scalars = {f"phases/{name}": seconds for name, seconds in self.clock.cumulative().items()}
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"phase_seconds": self.clock.cumulative()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning 2.6 restores callbacks in `test(ckpt_path=...)` too; only a resumed fit carries seconds over.
        saved = state_dict.get("phase_seconds") or {}
        self._restored = {name: float(saved.get(name, 0.0)) for name in PHASES}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.carry_restored()

    def carry_restored(self) -> None:
        """Count the restored seconds of earlier processes as this run's (a resumed fit, or a finished run that
        is only tested)."""
        if self._restored is not None:
            self.clock.carried = self._restored
