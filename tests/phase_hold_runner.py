"""train.py for tests that signal a run in a given phase from outside: prints `entered PHASE` on stderr the first
time the run enters HOLD_PHASE (after it has been in HOLD_AFTER, if set) and holds there until a signal comes, for a
second at most, so the test can send a signal while the run is in that phase. `startup` is held as soon as the phase
clock exists. torch.compile uses the aot_eager backend, so a --compile run needs no C++ compiler."""

import os
import sys
import time

import torch
from helpers import on_entering

from cifar_lit import phases
from cifar_lit.reliability.signals import SignalGuard
from cifar_lit.run import train as run

real_handle = SignalGuard.handle
received: list[int] = []


def noting_handle(self, signum, frame):
    received.append(signum)
    real_handle(self, signum, frame)


def hold(name: str) -> None:
    print(f"entered {name}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline and not received:
        time.sleep(0.01)


def compile_without_inductor(function=None, **options):
    options.pop("mode", None)
    return real_compile(function, backend="aot_eager", **options)


if __name__ == "__main__":
    real_compile = torch.compile
    phases.PhaseClock.__init__ = on_entering(os.environ["HOLD_PHASE"], os.environ.get("HOLD_AFTER"), hold)
    SignalGuard.handle = noting_handle  # before main() installs it
    torch.compile = compile_without_inductor
    sys.exit(run.main())
