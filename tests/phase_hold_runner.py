"""train.py for tests that signal a run in a given phase: prints `entered PHASE` on stderr the first time the run
enters HOLD_PHASE (after it has been in HOLD_AFTER, if set) and holds there until a signal comes, for a second at
most, so the test can send a signal while the run is in that phase. `startup` is held as soon as the phase clock
exists. torch.compile uses the aot_eager backend, so a --compile run needs no C++ compiler."""

import os
import sys
import time

import torch

from cifar_lit import phases
from cifar_lit.reliability.signals import SignalGuard
from cifar_lit.run import train as run

HOLD, AFTER = os.environ["HOLD_PHASE"], os.environ.get("HOLD_AFTER")
real_init = phases.PhaseClock.__init__
real_handle = SignalGuard.handle
received: list[int] = []


def noting_handle(self, signum, frame):
    received.append(signum)
    real_handle(self, signum, frame)


def holding_init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    seen = {"after": AFTER is None, "held": False}

    def hold(name: str) -> None:
        seen["after"] = seen["after"] or name == AFTER
        if name == HOLD and seen["after"] and not seen["held"]:
            seen["held"] = True
            print(f"entered {name}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline and not received:
                time.sleep(0.01)

    self.listeners.append(hold)
    hold(self.current)


def compile_without_inductor(function=None, **options):
    options.pop("mode", None)
    return real_compile(function, backend="aot_eager", **options)


if __name__ == "__main__":
    real_compile = torch.compile
    phases.PhaseClock.__init__ = holding_init
    SignalGuard.handle = noting_handle  # before main() installs it
    torch.compile = compile_without_inductor
    sys.exit(run.main())
