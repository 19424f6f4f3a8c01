"""Finds host-device synchronizations inside the Lightning training loop.

    python benchmarks/sync_check.py train.py-flags...

Runs train.py's main with torch.cuda.set_sync_debug_mode("warn") switched on from the first training step to the
end of training, and prints each distinct Python call site that synchronized, with how often it did. A fast
training loop should show only the deliberate ones (epoch ends, logging every N steps).
"""

from __future__ import annotations

import collections
import sys
import traceback
import warnings

import torch

from cifar_lit.module import CIFARClassifier
from cifar_lit.run import main

sites: collections.Counter = collections.Counter()


def record(message, category, filename, lineno, file=None, line=None):
    if "synchronizing" in str(message):
        frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename]
        sites["\n".join(f"    {f.filename}:{f.lineno} {f.name}" for f in frames[-6:])] += 1


def on_train_start(self):
    torch.cuda.set_sync_debug_mode("warn")


def on_train_end(self):
    torch.cuda.set_sync_debug_mode("default")


if __name__ == "__main__":
    warnings.showwarning = record
    warnings.simplefilter("always")
    CIFARClassifier.on_train_start = on_train_start
    CIFARClassifier.on_train_end = on_train_end
    code = main(sys.argv[1:])
    print(f"{sum(sites.values())} synchronizations from {len(sites)} call sites during training:")
    for site, count in sites.most_common():
        print(f"{count:6d} x\n{site}")
    sys.exit(code)
