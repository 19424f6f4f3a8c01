"""What several test modules share: the flags of a small, quick train.py run, a way to add a callback to it, and
train.py started as a separate process (only where a process is what a test is about: signals, kill -9, a lock
held by another process)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
from filelock import FileLock
from torch._dynamo.utils import counters

from cifar_lit import phases
from cifar_lit.run import train as run

ROOT = Path(__file__).resolve().parent.parent

# A learnable 300-image set; a ResNet18 of width 8 (176k parameters, same layers as width 64) reaches 60% test
# accuracy within a few epochs with these settings on the CPU, in seconds.
# Drawing figures took a third of such a run (0.8 s of 2.7 s in a profile: curves, confusion matrix, per-class bars,
# the augmented batch). So the tiny runs draw none (--no-figures); the tests that look at figures, or at what happens
# while they are drawn, ask for them: FIGURES (after the test), GRIDS (with the image grids and their Grad-CAM maps),
# EVERY_EPOCH_FIGURES (every epoch).
TINY_FLAGS = [
    "--gpus", "0", "--width", "8", "--no-download", "--batch-size", "30", "--eval-batch-size", "50", "--lr", "0.005",
    "--lr-reference-batch-size", "30",
    "--schedule", "constant", "--warmup-fraction", "0", "--no-progress-bar", "--sanity-val-steps", "0",
    "--no-figures", "--grid-images", "0", "--grid-every-n-epochs", "0", "--log-every-n-steps", "5",
]
FIGURES = ["--figures"]
GRIDS = [*FIGURES, "--grid-images", "8"]
EVERY_EPOCH_FIGURES = [*GRIDS, "--grid-every-n-epochs", "1"]


def on_entering(phase: str, after: str | None, act: Callable[[str], None]) -> Callable[..., None]:
    """A PhaseClock.__init__ (to patch in) whose clock calls `act(phase)` the first time the run enters `phase`, after
    it has been in `after` (if given); `startup` counts as entered as soon as the clock exists."""
    real_init = phases.PhaseClock.__init__

    def init(clock: phases.PhaseClock, *args, **kwargs) -> None:
        real_init(clock, *args, **kwargs)
        seen = {"after": after is None, "acted": False}

        def on_switch(name: str) -> None:
            seen["after"] = seen["after"] or name == after
            if name == phase and seen["after"] and not seen["acted"]:
                seen["acted"] = True
                act(name)

        clock.listeners.append(on_switch)
        on_switch(clock.current)

    return init


def with_extra_callback(monkeypatch: pytest.MonkeyPatch, callback) -> None:
    """Make train.py's runs in this test use `callback` too, before all of its own (GracefulStop then sees a
    signal the callback sends in the same step)."""
    original = run.build_callbacks

    def build(*args, **kwargs):
        callbacks = original(*args, **kwargs)
        callbacks.before.append(callback)
        return callbacks

    monkeypatch.setattr(run, "build_callbacks", build)


def python(args: list[str], **popen) -> subprocess.Popen:
    """`python ARGS` as a process of its own, with Ctrl-C's default meaning: pytest-xdist's workers ignore SIGINT,
    and a child would inherit that."""
    return subprocess.Popen([sys.executable, *args], preexec_fn=default_sigint, **popen)


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_training(args: list[str]) -> subprocess.Popen:
    return python(["train.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(done: Callable[[], object], process: subprocess.Popen, timeout: float = 180) -> None:
    """Until `done()` holds, while the process runs."""
    deadline = time.monotonic() + timeout
    while not done():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"the process never got there in {timeout} s"
        time.sleep(0.02)


def wait_for(folder: Path, pattern: str, process: subprocess.Popen, timeout: float = 180) -> None:
    wait_until(lambda: list(folder.glob(pattern)), process, timeout)


class GraphCount(pl.Callback):
    """Unique graphs Dynamo has compiled when training starts (after the warm-up) and at the end of each stage."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def on_train_start(self, trainer, pl_module):
        self.seen["after warm-up"] = counters["stats"]["unique_graphs"]

    def on_train_end(self, trainer, pl_module):
        self.seen["after training"] = counters["stats"]["unique_graphs"]

    def on_test_end(self, trainer, pl_module):
        self.seen["after the test"] = counters["stats"]["unique_graphs"]


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name`, filled by `build` once in the whole test session. Under pytest -n every worker is a
    process with its own module fixtures, so a costly one (a minute for the lease rehearsal) ran again in each
    worker that drew one of its tests. Here the first worker builds it; the others wait and reuse it, read-only."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' folders sit side by side in one session folder
    folder, built = root / f"once-{name}", root / f"once-{name}.built"
    with FileLock(f"{folder}.lock"):
        if not built.exists():  # a build that failed left no mark: the next test to ask tries again
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            built.touch()
    return folder
