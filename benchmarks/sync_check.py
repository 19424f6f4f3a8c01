"""Finds host-device synchronizations inside the Lightning training loop on a GPU.

    python benchmarks/sync_check.py train.py-flags...

Runs train.py's main and watches from the end of the second training step to the end of training: on a CUDA
device, `torch.cuda.set_sync_debug_mode("warn")` names each Python call site that synchronized, with how often; in
an eager run, `cifar_lit.bench.host_sync` also counts the tensor-to-host conversions over the same stretch (on any
device). A fast training loop shows only the deliberate ones: logging steps (every --log-every-n-steps) and epoch
ends.

A compiled run (--compile, fast85) is watched by CUDA alone: the conversion counter is a torch function mode, and
Dynamo guards compiled code on the modes in force, so entering it would compile every step again inside the window.
"""

from __future__ import annotations

import collections
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from cifar_lit.bench.host_sync import HostSyncCounter
from cifar_lit.run import train as run

WATCH_FROM_STEP = 2  # the first steps allocate, autotune and (eager) warm up


class WatchSyncs(pl.Callback):
    """CUDA's sync warnings (on a CUDA device) and the host-conversion count (eager runs), from the end of step 2 to
    the end of training. `sites` counts CUDA's warnings by the six innermost frames that raised them."""

    def __init__(self) -> None:
        self.sites: collections.Counter[str] = collections.Counter()
        self.counter: HostSyncCounter | None = None
        self.cuda = False
        self.started = False

    def note(self, message: Any, *_: Any, **__: Any) -> None:
        if "synchronizing" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
            self.sites["\n".join(f"    {f.filename}:{f.lineno} {f.name}" for f in frames[-6:])] += 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step != WATCH_FROM_STEP or self.started:
            return
        self.started = True
        self.cuda = pl_module.device.type == "cuda"
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn")
        if not pl_module.hparams.get("compile"):
            self.counter = HostSyncCounter()
            self.counter.__enter__()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
        if self.counter is not None:
            self.counter.__exit__(None, None, None)


def watch(argv: Sequence[str]) -> tuple[int, WatchSyncs]:
    """train.py's main on `argv` with the watcher among its callbacks; (exit code, watcher)."""
    watcher = WatchSyncs()
    build = run.build_callbacks

    def with_watch(*args: Any, **kwargs: Any) -> Any:
        callbacks = build(*args, **kwargs)
        callbacks.before.append(watcher)
        return callbacks

    run.build_callbacks = with_watch
    try:
        with warnings.catch_warnings():  # restores the filters and showwarning afterwards
            warnings.simplefilter("always")
            warnings.showwarning = watcher.note
            code = run.main(list(argv))
    finally:
        run.build_callbacks = build
    return code, watcher


def report(watcher: WatchSyncs) -> str:
    lines = []
    if watcher.cuda:
        lines.append(f"{sum(watcher.sites.values())} synchronizations from {len(watcher.sites)} call sites during "
                     "training (CUDA's count):")
        lines += [f"{count:6d} x\n{site}" for site, count in watcher.sites.most_common()]
    else:
        lines.append("not a CUDA run: CUDA's own count of synchronizations is not available")
    if watcher.counter is not None:
        lines.append(f"{watcher.counter.total} tensor-to-host conversions (cifar_lit.bench.host_sync), by site:")
        lines += [f"{count:6d} x {site}" for site, count in watcher.counter.by_site.most_common()]
    else:
        lines.append("compiled run: tensor-to-host conversions not counted (the counting mode would recompile)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    code, watcher = watch(sys.argv[1:] if argv is None else argv)
    print(report(watcher))
    return code


if __name__ == "__main__":
    sys.exit(main())
