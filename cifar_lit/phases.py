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
nothing when no clock is active (library use, tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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

    def cumulative(self) -> dict[str, float]:
        """Seconds per phase over the whole run: carried over from earlier processes plus this one."""
        return {name: self.carried[name] + value for name, value in self.elapsed().items()}


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
