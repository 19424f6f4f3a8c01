"""The sweep's own cost per trial, and the memory a finished trial leaves behind, over a study of tiny trials on
the CPU.

    python benchmarks/sweep_overhead.py [--trials 20] [--steps 20] [--out DIR]

A study of --trials trials (SQLite storage, TPE sampling, the median pruner's reports each epoch) runs through
`cifar_lit.sweep.cli.sweep`, each trial a normal run through `fit` (a tiny network, --steps steps and one
validation per trial). The sweep's own cost is the sweep's wall time less the seconds spent inside `fit`, plus the
pruning callback's reports inside `fit`: storage, sampling, trial start and end, progress lines. The process's
resident memory (RSS) and the LightningModules still alive are read after each trial.

Writes benchmarks/results/sweep_overhead-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytorch_lightning as pl
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from framework_overhead import TinyNet, write_images  # noqa: E402

from cifar_lit import models  # noqa: E402
from cifar_lit.reporting.provenance import command_line, device_description, git_commit, versions, write_record  # noqa: E402
from cifar_lit.run.config import parse_options  # noqa: E402
from cifar_lit.sweep import cli, trials  # noqa: E402
from cifar_lit.sweep.space import read_space  # noqa: E402
from cifar_lit.sweep.study import default_storage, open_storage, open_study, pruner_for  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
SPACE = {"objective": "accuracy", "study": "overhead",
         "space": {"lr": {"low": 0.001, "high": 0.1, "log": True}, "label_smoothing": {"low": 0.0, "high": 0.2}}}


def flags(data: Path, logdir: Path, steps: int) -> list[str]:
    return ["--gpus", "0", "--precision", "32-true", "--no-download", "--data-dir", str(data), "--logdir", str(logdir),
            "--batch-size", "32", "--eval-batch-size", "500", "--max-epochs", "1", "--limit-train-batches", str(steps),
            "--no-progress-bar", "--sanity-val-steps", "0", "--no-figures", "--grid-images", "0",
            "--grid-every-n-epochs", "0", "--log-every-n-steps", "50", "--schedule", "linear", "--no-compile"]


class Meter:
    """Wraps the trials' `fit`: its wall seconds, the pruning callback's share, and RSS and live modules after."""

    def __init__(self) -> None:
        self.fit_seconds: list[float] = []
        self.report_seconds: list[float] = []
        self.rss_mb: list[float] = []
        self.live_modules: list[int] = []
        self.meter_seconds = 0.0  # the measuring itself (a full gc each time): not the sweep's
        self.fit = trials.fit

    def __call__(self, options, *, callbacks=(), **kwargs):
        started = time.perf_counter()
        result = self.fit(options, callbacks=callbacks, **kwargs)
        self.fit_seconds.append(time.perf_counter() - started)
        self.report_seconds.append(sum(getattr(callback, "seconds", 0.0) for callback in callbacks))
        measuring = time.perf_counter()
        gc.collect()
        self.rss_mb.append(psutil.Process().memory_info().rss / 2**20)
        self.live_modules.append(sum(isinstance(obj, pl.LightningModule) for obj in gc.get_objects()))
        self.meter_seconds += time.perf_counter() - measuring
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20, help="training steps per trial")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    models.MODELS["resnet18"] = TinyNet
    meter = Meter()
    trials.fit = meter
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_images(root / "data", per_class=args.steps * 32 // 10)
        (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
        space = read_space(root / "space.yaml")
        base = parse_options(flags(data, root / "logs", args.steps))
        study = open_study(open_storage(default_storage(root / "logs"), 60), space.study, space,
                           pruner=pruner_for("median", 5), base=base.record(), seed=0)
        started = time.perf_counter()
        cli.sweep(study, base=base, space=space, trials=args.trials, study_dir=root / "logs" / "sweeps" / "overhead",
                  command="benchmark", heartbeat_seconds=60)
        sweep_seconds = time.perf_counter() - started - meter.meter_seconds
    fit_total, report_total = sum(meter.fit_seconds), sum(meter.report_seconds)
    own = (sweep_seconds - fit_total + report_total) / args.trials
    trial_seconds = sweep_seconds / args.trials
    record = {
        "benchmark": "sweep_overhead",
        "what": "the sweep's own seconds per trial (its wall time less the seconds inside fit, plus the pruning "
                "reports inside fit) against a trial's seconds, SQLite storage, TPE, median pruner; RSS and live "
                "LightningModules after each trial",
        "device": device_description("cpu"),
        "trials": args.trials,
        "steps_per_trial": args.steps,
        "sweep_seconds": sweep_seconds,
        "trial_seconds_mean": trial_seconds,
        "fit_seconds_median": statistics.median(meter.fit_seconds),
        "sweep_own_seconds_per_trial": own,
        "sweep_own_share": own / trial_seconds,
        "pruning_report_seconds_per_trial": report_total / args.trials,
        "rss_mb_after_each_trial": [round(value, 1) for value in meter.rss_mb],
        "rss_growth_mb_trial_2_to_last": meter.rss_mb[-1] - meter.rss_mb[1] if len(meter.rss_mb) > 1 else None,
        "live_lightning_modules_after_each_trial": meter.live_modules,
        "command": command_line(program="benchmarks/sweep_overhead.py"),
        "git_commit": git_commit(),
        "versions": versions(),
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
    }
    path = write_record(args.out, "sweep_overhead", record)
    print(f"{args.trials} trials in {sweep_seconds:.1f} s: the sweep's own {1000 * own:.0f} ms per trial of "
          f"{trial_seconds:.2f} s ({100 * own / trial_seconds:.1f}%); RSS {meter.rss_mb[0]:.0f} -> "
          f"{meter.rss_mb[-1]:.0f} MB; live modules after the last trial: {meter.live_modules[-1]}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
