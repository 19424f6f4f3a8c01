"""Framework overhead per training step on the CPU: train.py's Lightning path against the bare PyTorch loop, both
with a tiny network, so that what is left is the cost of the loop around the model.

    python benchmarks/framework_overhead.py [--steps 80] [--repeats 5] [--label after] [--out DIR]

Both run the same recipe and data path in eager mode (the fast85 settings without compile, float32, batch 32): the
Lightning path is `cifar_lit.run.train.main` with its callbacks, logging and checkpoints; the bare loop is
`cifar_lit.bench.bare_loop.bare_training_run`. The network is replaced by a one-convolution network in both. Lightning's
time per step is measured between the ends of consecutive training steps after the first ten (logging steps
included); the bare loop's from its training-loop seconds. Each is the median over --repeats runs in this process.
It touches only what every version of the project has, so it also runs against older commits ("before"): from a
checkout of the old commit, `PYTHONPATH=. python /path/to/framework_overhead.py --label before`.

Writes benchmarks/results/framework_overhead-<device>-<label>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

from cifar_lit import models
from cifar_lit.bench import bare_loop as baseline
from cifar_lit.data.constants import CIFAR10_CLASSES
from cifar_lit.reporting.provenance import command_line, device_description, git_commit, versions, write_record
from cifar_lit.run import config as options
from cifar_lit.run import train as run
from cifar_lit.training import module

SKIP = 10  # first steps left out: allocations, first-call costs
OUT = Path(__file__).resolve().parent / "results"


class TinyNet(nn.Module):
    """3x3 convolution to 8 channels, batch norm, ReLU, global average pool, linear classifier. The convolution
    block is named `layer3`, the layer every version's Grad-CAM default names, so train.py accepts the network
    without a flag that older versions lack."""

    def __init__(self, num_classes: int = 10, **_: object) -> None:
        super().__init__()
        self.layer3 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.linear = nn.Linear(8, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.layer3(images).mean(dim=(2, 3)))


class StepClock(pl.Callback):
    """Host time at the end of every training step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ends.append(time.perf_counter())


def write_images(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", max(1, per_class // 5))):
        for name in CIFAR10_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def flags(data: Path, logdir: Path, steps: int) -> list[str]:
    return ["--gpus", "0", "--precision", "32-true", "--no-download", "--data-dir", str(data), "--logdir", str(logdir),
            "--batch-size", "32", "--eval-batch-size", "500", "--max-epochs", "1", "--target-acc", "1.0",
            "--limit-train-batches", str(steps), "--no-progress-bar", "--sanity-val-steps", "0",
            "--grid-every-n-epochs", "0", "--log-every-n-steps", "50", "--schedule", "linear", "--no-compile"]


def lightning_step_seconds(data: Path, logdir: Path, steps: int) -> float:
    clock = StepClock()
    build = run.build_callbacks
    def with_clock(*args, **kwargs):
        callbacks = build(*args, **kwargs)
        callbacks.after.append(clock)
        return callbacks

    run.build_callbacks = with_clock
    try:
        assert run.main(flags(data, logdir, steps)) == 0
    finally:
        run.build_callbacks = build
    return statistics.median(np.diff(clock.ends[SKIP:]))


def bare_step_seconds(data: Path, steps: int) -> float:
    argv = flags(data, Path(tempfile.mkdtemp()), steps)
    # Typed options since the options were typed; a flat dict before.
    parsed = options.parse_options(argv) if hasattr(options, "parse_options") else options.parse_config(argv)
    result = baseline.bare_training_run(parsed, "cpu", "32-true")
    return 32 / result["images_per_second"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=80, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="after", help="which code this is, e.g. before / after")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.manual_seed(0)
    if hasattr(models, "MODELS"):  # every consumer builds the network by name since the registry
        models.MODELS["resnet18"] = TinyNet
    else:  # older commits built it with resnet18() in these two modules
        module.resnet18 = baseline.resnet18 = TinyNet
    with tempfile.TemporaryDirectory() as tmp:
        data = write_images(Path(tmp) / "data", per_class=args.steps * 32 // 10)
        lightning, bare = [], []
        for repeat in range(args.repeats):
            lightning.append(lightning_step_seconds(data, Path(tmp) / f"logs{repeat}", args.steps))
            bare.append(bare_step_seconds(data, args.steps))
            print(f"repeat {repeat}: Lightning {1e6 * lightning[-1]:.0f} us/step, bare {1e6 * bare[-1]:.0f} us/step",
                  flush=True)
    record = {
        "benchmark": "framework_overhead",
        "label": args.label,
        "what": "host time per training step, tiny network, eager float32, batch 32: train.py's Lightning path "
                "(callbacks, logging, checkpoint hooks) vs the bare PyTorch loop on the same recipe and data path",
        "device": device_description("cpu"),
        "lightning_us_per_step": {"median": 1e6 * statistics.median(lightning), "runs": [1e6 * s for s in lightning]},
        "bare_us_per_step": {"median": 1e6 * statistics.median(bare), "runs": [1e6 * s for s in bare]},
        "command": command_line(program="benchmarks/framework_overhead.py"),
        "git_commit": git_commit(),
        "versions": versions(),
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
    }
    overhead = record["lightning_us_per_step"]["median"] - record["bare_us_per_step"]["median"]
    record["overhead_us_per_step"] = overhead
    record["lightning_over_bare_time"] = (record["lightning_us_per_step"]["median"]
                                          / record["bare_us_per_step"]["median"])
    path = write_record(args.out, "framework_overhead", record, args.label)
    print(f"{args.label}: Lightning {record['lightning_us_per_step']['median']:.0f} us/step, bare "
          f"{record['bare_us_per_step']['median']:.0f} us/step, overhead {overhead:.0f} us/step; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
