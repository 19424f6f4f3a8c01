"""Finds host-device synchronizations inside the Lightning training loop on a GPU.

    python benchmarks/sync_check.py train.py-flags...

Runs train.py's main with torch.cuda.set_sync_debug_mode("warn") switched on from the end of the second training
step to the end of training, and prints each distinct Python call site that synchronized, with how often, and the
tensor-to-host conversions counted by cifar_lit.bench.host_sync over the same stretch. A fast training loop shows only
the deliberate ones: logging steps (every --log-every-n-steps) and epoch ends.
"""

from __future__ import annotations

import collections
import sys
import traceback
import warnings

import pytorch_lightning as pl
import torch

from cifar_lit.bench.host_sync import HostSyncCounter
from cifar_lit.run import train as run

sites: collections.Counter = collections.Counter()


def record(message, category, filename, lineno, file=None, line=None):
    if "synchronizing" in str(message):
        frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
        sites["\n".join(f"    {f.filename}:{f.lineno} {f.name}" for f in frames[-6:])] += 1


class WatchSyncs(pl.Callback):
    """CUDA's sync warnings and the host-conversion count, from the end of step 2 to the end of training."""

    def __init__(self) -> None:
        self.counter: HostSyncCounter | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2 and self.counter is None:
            torch.cuda.set_sync_debug_mode("warn")
            self.counter = HostSyncCounter()
            self.counter.__enter__()

    def on_train_end(self, trainer, pl_module):
        torch.cuda.set_sync_debug_mode("default")
        if self.counter is not None:
            self.counter.__exit__(None, None, None)


if __name__ == "__main__":
    warnings.showwarning = record
    warnings.simplefilter("always")
    watch = WatchSyncs()
    build = run.build_callbacks
    def with_watch(*args, **kwargs):
        callbacks = build(*args, **kwargs)
        callbacks.before.append(watch)
        return callbacks

    run.build_callbacks = with_watch
    code = run.main(sys.argv[1:])
    print(f"{sum(sites.values())} synchronizations from {len(sites)} call sites during training (CUDA's count):")
    for site, count in sites.most_common():
        print(f"{count:6d} x\n{site}")
    if watch.counter is not None:
        print(f"{watch.counter.total} tensor-to-host conversions (cifar_lit.bench.host_sync), by site:")
        for site, count in watch.counter.by_site.most_common():
            print(f"{count:6d} x {site}")
    sys.exit(code)
