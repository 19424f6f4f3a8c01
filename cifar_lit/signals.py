"""SIGTERM and Ctrl-C at any moment of a run: stop at once where nothing can be lost, at a step boundary where
training state would be.

Outside training (start-up, data, warm-up, the final test, reports) there is nothing in memory worth saving that is
not on disk already, so the first signal raises `Interrupted` at once. While the training loop runs (steps,
validation, checkpoint writes) the signal is only noted; `cifar_lit.callbacks.safety.GracefulStop` saves a
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

from cifar_lit import phases

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
