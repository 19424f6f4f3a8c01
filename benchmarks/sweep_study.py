"""The small study of docs/sweeps.md and the README's picture: configs/sweeps/cpu_small.yaml on the JPEG copy of
CIFAR-10, through sweep.py in this process.

    python benchmarks/sweep_study.py /path/to/cifar10-jpeg OUT [--trials 10] [-- more sweep.py / train.py flags]

Writes into OUT the record `sweep_study-<device>-<date>.json` (the command, commit, versions, device, wall seconds,
and every trial: number, state, parameters, value, why it was pruned) and the report's pictures as
sweep_history.png, sweep_epochs.png and sweep_slice.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import optuna

from cifar_lit.reporting.provenance import git_commit, shell_command, versions, write_record
from cifar_lit.sweep import cli
from cifar_lit.sweep.report import best_so_far
from cifar_lit.sweep.study import default_storage

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "configs" / "sweeps" / "cpu_small.yaml"
FLAGS = ["--startup-trials", "3", "--sampler-seed", "0", "--gpus", "0", "--width", "8", "--max-epochs", "3",
         "--limit-train-batches", "40", "--batch-size", "256", "--no-download", "--no-progress-bar"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--trials", type=int, default=10)
    args, extra = parser.parse_known_args()
    logdir = args.out / "logs"
    argv = ["--space", str(SPACE), "--trials", str(args.trials), *FLAGS, "--data-dir", str(args.data),
            "--logdir", str(logdir), *[flag for flag in extra if flag != "--"]]
    started = time.perf_counter()
    if cli.main(argv) != 0:
        return 1
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name="cpu_small", storage=default_storage(logdir))
    folder = logdir / "sweeps" / "cpu_small"
    first = json.loads((folder / "trial_000" / "summary.json").read_text())
    best = best_so_far(study)
    record = {
        "what": "a small accuracy study on the JPEG copy of CIFAR-10: configs/sweeps/cpu_small.yaml, median pruner",
        "date": dt.date.today().isoformat(),
        "device": first["device"],
        "command": shell_command("sweep.py", *argv),
        "git_commit": git_commit(),
        "versions": {**versions(), "optuna": optuna.__version__},
        "wall_seconds": seconds,
        "best_trial": best.number if best else None,
        "trials": [{"number": trial.number, "state": trial.state.name.lower(), "params": trial.params,
                    "value": trial.value, "pruned": trial.user_attrs.get("pruned")} for trial in study.get_trials()],
    }
    path = write_record(args.out, "sweep_study", record)
    for name in ("history", "epochs", "slice"):
        shutil.copy(folder / f"{name}.png", args.out / f"sweep_{name}.png")
    print(f"{len(record['trials'])} trials in {seconds:.0f} s; best: trial {record['best_trial']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
