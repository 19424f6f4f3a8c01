"""A real small data set through `--dataset folder` and `--resize`: scikit-learn's handwritten digits (1,797 8x8
grayscale images, 10 classes, shipped inside the package), written as an image folder and trained with train.py.

    pip install scikit-learn   # only this script needs it
    python benchmarks/digits_run.py [--out benchmarks/results] [-- extra train.py flags]

The images are written at their own 8x8 size (16 gray levels scaled to 0-255), split 80/20 per class with a fixed
seed; `--resize` upscales them to 32x32 when they are first decoded and the grayscale ones become RGB. The record
(device, versions, command, commit, accuracy, seconds) is written to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cifar_lit.reporting.provenance import (
    PROJECT_ROOT,
    command_line,
    device_description,
    git_commit,
    versions,
    write_record,
)
from cifar_lit.run.train import fit

DEFAULT_FLAGS = ["--gpus", "0", "--max-epochs", "10", "--batch-size", "128", "--eval-batch-size", "500",
                 "--no-progress-bar", "--sanity-val-steps", "0"]


def write_digits(root: Path, test_share: float = 0.2, seed: int = 0) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        cut = int(round(len(indices) * test_share))
        for split, chosen in (("test", indices[:cut]), ("train", indices[cut:])):
            folder = root / split / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                pixels = (digits.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(PROJECT_ROOT / "benchmarks" / "results"))
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --, flags for train.py")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    with tempfile.TemporaryDirectory(prefix="digits_") as tmp:
        data = write_digits(Path(tmp) / "digits")
        counts = {split: sum(1 for _ in (data / split).rglob("*.png")) for split in ("train", "test")}
        logdir = Path(tmp) / "logs"
        flags = [*DEFAULT_FLAGS, "--data-dir", str(data), "--resize", "--logdir", str(logdir), *extra]
        start = time.perf_counter()
        result = fit(flags)
        wall = time.perf_counter() - start
        if result.outcome != "finished":
            print(f"error: the run ended as {result.outcome}: {result.stop_reason}", file=sys.stderr)
            return 1
        summary = json.loads((result.run_dir / "summary.json").read_text())
    record = {
        "what": "scikit-learn's digits as an image folder, 8x8 grayscale upscaled with --resize, trained by train.py",
        "date": dt.date.today().isoformat(),
        "device": device_description("cpu"),
        "command": command_line(sys.argv[1:], "benchmarks/digits_run.py"),
        "train_py_flags": [*DEFAULT_FLAGS, "--data-dir", "<the digits folder>", "--resize", "--logdir",
                           "<a temporary folder>", *extra],
        "git_commit": git_commit(),
        "versions": versions(),
        "images": counts,
        **{key: summary[key] for key in ("dataset", "num_classes", "class_names", "test_acc", "best_val_acc",
                                          "epochs_run", "train_seconds", "total_seconds", "val_acc_per_epoch",
                                          "target_acc", "target_source")},
        "wall_seconds": wall,
        "normalization_measured": summary["config"]["normalization"],
    }
    path = write_record(args.out, "digits", record)
    print(f"test accuracy {record['test_acc']:.4f} after {record['epochs_run']} epochs, "
          f"{record['train_seconds']:.0f} s of training; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
