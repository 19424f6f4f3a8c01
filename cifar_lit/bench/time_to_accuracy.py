"""Time-to-accuracy benchmark: `python -m cifar_lit.bench --preset fast85 --seeds 5 --data-dir DIR`.

Each seed runs the real command, `train.py --config configs/<preset>.yaml --seed S ...`, through `cifar_lit.fit` in
this process; its summary.json gives the training seconds to the target (Lightning's Timer from the first training
step, compile warm-up excluded and reported apart), epochs, test accuracy, images/s, peak GPU memory and where the
run's seconds went (phases). The first seed's wall time counts from this process's start, imports included, as a
`python train.py` process's would; later seeds count from their own start. All seeds share one compile cache that
starts empty (--compile-cache to use another), and Dynamo's in-memory graphs are dropped between seeds, so with a
compiled preset the first seed starts cold and the others warm from the disk cache, as new processes would; the
record reports cold and warm wall and warm-up seconds apart. In the same invocation it runs the bare PyTorch loop
(cifar_lit.bench.bare_loop) on the same recipe and data path, and the PIL data path on the same preset, and reports
both as ratios. GPU busy time is sampled with NVML during each run's training window when pynvml is available.

Writes benchmarks/results/<preset>-<device>-<date>.json and a markdown table beside it. With `--jsonl FILE`, every
finished run (each seed, the PIL run, the bare loop) is also appended to FILE as one JSON object at once, so a
benchmark cut short by a time limit keeps what finished (benchmarks/gpu_lease.sh runs it that way).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from cifar_lit.bench.bare_loop import bare_training_run
from cifar_lit.hardware.plan import plan_hardware
from cifar_lit.phases import PHASES
from cifar_lit.reporting.provenance import (
    PROJECT_ROOT,
    command_line,
    device_description,
    git_commit,
    versions,
    write_record,
)
from cifar_lit.run.config import parse_options
from cifar_lit.run.stop_at_target import CIFAR10_TARGET
from cifar_lit.run.train import fit
from cifar_lit.training.compile_cache import compile_cache


class GpuBusySampler:
    """Samples NVML's GPU utilization (share of time a kernel was running) with wall-clock timestamps."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            self._nvml = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def __enter__(self) -> GpuBusySampler:
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rate = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            self.samples.append((time.time(), int(rate)))
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean_between(self, start: float | None, end: float | None) -> float | None:
        if start is None or end is None:
            return None
        values = [rate for stamp, rate in self.samples if start <= stamp <= end]
        return statistics.fmean(values) if values else None


def spread(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}


def run_train(preset: Path, seed: int, *, data_dir: str, logdir: Path, extra: list[str], sampler: GpuBusySampler,
              log_file: Path | None, started: float | None = None) -> dict[str, Any]:
    """One train.py run through `cifar_lit.fit`: its summary plus wall time and GPU busy share, its command and its
    run folder. `started`: when this process began (its first run's wall includes the imports, as train.py's)."""
    argv = ["--config", str(preset), "--seed", str(seed), "--data-dir", data_dir, "--logdir", str(logdir), *extra]
    torch._dynamo.reset()  # each run compiles from the disk cache, as a new process would
    start = time.perf_counter()
    result = fit(argv, started=started)
    wall = time.perf_counter() - (started if started is not None else start)
    if log_file is not None:
        with open(log_file, "a") as handle:
            handle.write(f"$ {command_line(argv, 'train.py')}\n{result}\n")
    if result.outcome != "finished":
        raise RuntimeError(f"train.py {' '.join(argv)} ended as {result.outcome}: {result.stop_reason}")
    summary_path = result.run_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    return {
        "seed": seed,
        "reached": summary["target_reached"],
        "train_seconds_to_target": summary["target_seconds"],
        "epochs_to_target": summary["target_epoch"],
        "wall_seconds": wall,
        "train_seconds": summary["train_seconds"],
        "warmup_seconds": summary["warmup_seconds"],
        "epochs_run": summary["epochs_run"],
        "test_acc": summary["test_acc"],
        "test_acc_tta": summary.get("test_acc_tta"),
        "best_val_acc": summary["best_val_acc"],
        "val_acc_per_epoch": summary["val_acc_per_epoch"],
        "images_per_second": summary.get("images_per_second"),
        "peak_gpu_memory_mb": summary.get("peak_gpu_memory_mb"),
        "gpu_busy_percent": sampler.mean_between(summary.get("train_started_at"), summary.get("train_ended_at")),
        "total_seconds": summary.get("total_seconds"),
        "compile_cache": (summary.get("compile_cache") or {}).get("state"),
        "skipped_steps": summary.get("skipped_steps"),
        "target_acc": summary.get("target_acc"),
        "phase_seconds": summary.get("phase_seconds") or {},
        "device": summary["device"],
        "versions": summary.get("versions"),
        "git_commit": summary.get("git_commit"),
        "command": command_line(argv, "train.py"),
        "run_dir": str(summary_path.parent),
    }


def append_result(path: Path | None, kind: str, result: dict[str, Any], **facts: Any) -> None:
    """One finished run as one JSON line of `path`, written and flushed to disk at once. The keys every line has:
    kind, seed, reached, train_seconds (to the target, else the whole training), wall_seconds, epochs, test_acc,
    images_per_second, gpu_busy (percent of the training window), then the run's own details."""
    if path is None:
        return
    line = {
        "kind": kind,
        "seed": result.get("seed"),
        "reached": result.get("reached"),
        "train_seconds": result.get("train_seconds_to_target") or result.get("train_seconds")
        or result.get("train_loop_seconds"),
        "wall_seconds": result.get("wall_seconds", result.get("total_seconds")),
        "epochs": result.get("epochs_to_target") or result.get("epochs_run"),
        "test_acc": result.get("test_acc"),
        "images_per_second": result.get("images_per_second"),
        "gpu_busy": result.get("gpu_busy_percent"),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **facts,
        **result,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(line) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


SUMMARY_KEYS = ("train_seconds_to_target", "wall_seconds", "epochs_to_target", "test_acc", "images_per_second",
                "warmup_seconds", "peak_gpu_memory_mb", "gpu_busy_percent")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median/min/max over the seeds of each figure and each phase; wall and warm-up seconds of the runs that
    started cold (compiled everything) and warm (found it in the compile cache) apart."""
    summary: dict[str, Any] = {key: spread([run[key] for run in runs]) for key in SUMMARY_KEYS}
    summary["test_acc_mean"] = statistics.fmean([run["test_acc"] for run in runs])
    summary["phase_seconds"] = {name: spread([run["phase_seconds"].get(name) for run in runs]) for name in PHASES}
    for state in ("cold", "warm"):
        started = [run for run in runs if run["compile_cache"] == state]
        summary[f"{state}_start"] = {"runs": len(started), **{
            key: spread([run[key] for run in started]) for key in ("wall_seconds", "warmup_seconds")}}
    return summary


def markdown_table(record: dict[str, Any]) -> str:
    lines = [
        f"# {record['preset']} on {record['device']} ({record['date']})",
        "",
        f"Command: `{record['command']}`  ",
        f"Commit: `{record['git_commit']}`; torch {record['versions']['torch']}, pytorch-lightning "
        f"{record['versions']['pytorch_lightning']}, CUDA {record['versions']['cuda']}. Data: {record['data']}.",
        "",
        "| seed | reached | train s to target | epochs | wall s | warm-up s | test acc | images/s | GPU busy % |",
        "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(value: Any, pattern: str = "{:.2f}") -> str:
        return "–" if value is None else pattern.format(value)

    for run in record["runs"]:
        lines.append(
            f"| {run['seed']} | {'yes' if run['reached'] else 'no'} | {fmt(run['train_seconds_to_target'])} | "
            f"{fmt(run['epochs_to_target'], '{}')} | {fmt(run['wall_seconds'], '{:.1f}')} | "
            f"{fmt(run['warmup_seconds'], '{:.1f}')} | {fmt(run['test_acc'], '{:.4f}')} | "
            f"{fmt(run['images_per_second'], '{:,.0f}')} | {fmt(run['gpu_busy_percent'], '{:.0f}')} |"
        )
    summary = record["summary"]

    def median_range_of(part: dict[str, Any], pattern: str) -> str:
        return f"{fmt(part['median'], pattern)} ({fmt(part['min'], pattern)}–{fmt(part['max'], pattern)})"

    def median_range(key: str, pattern: str = "{:.2f}") -> str:
        return median_range_of(summary[key], pattern)

    for state in ("cold", "warm"):
        part = summary.get(f"{state}_start") or {}
        if part.get("runs"):
            lines.append(f"\n{state.capitalize()} start ({part['runs']} run(s)): wall seconds "
                         f"{median_range_of(part['wall_seconds'], '{:.1f}')}, warm-up seconds "
                         f"{median_range_of(part['warmup_seconds'], '{:.1f}')}.")
    lines += [
        "",
        f"Median (min–max) training seconds to {record['target_acc']:.0%}: {median_range('train_seconds_to_target')}; "
        f"wall seconds {median_range('wall_seconds', '{:.1f}')}; test accuracy {median_range('test_acc', '{:.4f}')} "
        f"(mean {fmt(summary['test_acc_mean'], '{:.4f}')}).",
    ]
    phase_rows = summary.get("phase_seconds") or {}
    if phase_rows:
        lines += ["", "Where the seconds of a run go (summary.json `phase_seconds`), median (min–max) over the seeds:",
                  "", "| phase | seconds |", "|---|---:|"]
        lines += [f"| {name} | {median_range_of(part, '{:.2f}')} |" for name, part in phase_rows.items()]
    for name in ("bare_pytorch", "pil_data_path"):
        if record.get(name):
            part = record[name]
            lines.append(f"\n{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in part.items() if not isinstance(v, (list, dict))))
    if record.get("ratios"):
        lines.append("\nRatios: " + ", ".join(f"{k} {v:.3f}" for k, v in record["ratios"].items() if v is not None))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """The benchmark of `argv`; `started`: when this process began (`python -m cifar_lit.bench` passes it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fast85", help="name in configs/ or a YAML path")
    parser.add_argument("--seeds", type=int, default=5, help="train.py runs, one per seed (0: only the bare loop)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default=str(PROJECT_ROOT / "benchmarks" / "results"))
    parser.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare PyTorch loop")
    parser.add_argument("--pil-epochs", type=int, default=2, help="epochs of the PIL data path run (0: skip)")
    parser.add_argument("--pil-workers", type=int, default=8)
    parser.add_argument("--log", help="append every train.py output to this file")
    parser.add_argument("--compile-cache", help="compile cache folder for every run (default: a new, empty one)")
    parser.add_argument("--jsonl", help="append every finished run to this file as one JSON object")
    parser.add_argument("--kind", help="the runs' `kind` in --jsonl (default: the preset's name)")
    parser.add_argument("--runs-dir", help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --, flags passed to every train.py run")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    preset = Path(args.preset)
    if preset.suffix not in (".yaml", ".yml"):
        preset = PROJECT_ROOT / "configs" / f"{args.preset}.yaml"
    options = parse_options(["--config", str(preset), "--data-dir", args.data_dir, *extra])
    hardware = plan_hardware(options.hardware_request(), with_memory=False)
    device, precision = hardware.device.torch_device, hardware.precision
    log_file = Path(args.log) if args.log else None
    jsonl, kind = (Path(args.jsonl) if args.jsonl else None), args.kind or preset.stem

    record: dict[str, Any] = {
        "preset": preset.stem,
        "date": dt.date.today().isoformat(),
        "device": device_description(device),
        "target_acc": options.run.target_acc if options.run.target_acc is not None else CIFAR10_TARGET,
        "data": f"{args.data_dir}",
        "command": command_line(sys.argv[1:] if argv is None else argv, "-m cifar_lit.bench"),
        "git_commit": git_commit(),
        "versions": versions(),
        "config": options.as_dict(),
    }
    with tempfile.TemporaryDirectory(prefix="cifar_lit_bench_") as tmp, GpuBusySampler() as sampler:
        runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        cache = args.compile_cache or str(Path(tmp) / "compile-cache")
        extra = ["--compile-cache", cache, *extra]
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            runs.append(run_train(preset, seed, data_dir=args.data_dir, logdir=runs_dir / f"{kind}-seed{seed}",
                                  extra=extra, sampler=sampler, log_file=log_file,
                                  started=started if not runs else None))
            append_result(jsonl, kind, runs[-1], preset=preset.stem)
            print(f"seed {seed}: {json.dumps({k: v for k, v in runs[-1].items() if k != 'val_acc_per_epoch'})}",
                  flush=True)
        record["runs"] = runs
        record["seeds"] = [run["seed"] for run in runs]
        record["reached"] = all(run["reached"] for run in runs)
        record["gpu_busy_sampled"] = sampler.available
        if args.pil_epochs:
            pil = run_train(preset, args.first_seed, data_dir=args.data_dir, logdir=runs_dir / f"{kind}-pil",
                            extra=[*extra, "--data-path", "pil", "--num-workers", str(args.pil_workers),
                                   "--max-epochs", str(args.pil_epochs), "--target-acc", "1.0"],
                            sampler=sampler, log_file=log_file)
            append_result(jsonl, "pil", pil, preset=preset.stem)
            record["pil_data_path"] = {key: pil[key] for key in ("images_per_second", "wall_seconds", "epochs_run",
                                                                 "gpu_busy_percent")}
            record["pil_data_path"]["epochs_note"] = "throughput run: schedule and accuracy not comparable"
        if args.bare:
            bare_options = options.with_plan(hardware).replace(seed=args.first_seed)
            with compile_cache(cache):  # the runs' own cache: the bare loop compiles what the runs compiled
                bare = bare_training_run(bare_options, device, precision)
            bare["seed"] = args.first_seed
            bare["gpu_busy_percent"] = sampler.mean_between(bare["train_started_at"], bare["train_ended_at"])
            record["bare_pytorch"] = bare
            append_result(jsonl, "bare", bare, preset=preset.stem, device=record["device"],
                          versions=record["versions"], git_commit=record["git_commit"], command=record["command"])
            print(f"bare: {json.dumps({k: v for k, v in bare.items() if k != 'val_acc_per_epoch'})}", flush=True)
    if not runs:
        return 0  # the bare loop alone: its line is the result

    record["summary"] = summarize(runs)
    # The top-level fields the record format promises, as medians over the seeds.
    for key in SUMMARY_KEYS:
        record[key] = record["summary"][key]["median"]
    lightning_ips = record["summary"]["images_per_second"]["median"]
    ratios = {}
    if record.get("bare_pytorch") and lightning_ips and record["bare_pytorch"]["images_per_second"]:
        ratios["lightning_over_bare_images_per_second"] = lightning_ips / record["bare_pytorch"]["images_per_second"]
    if record.get("pil_data_path") and lightning_ips and record["pil_data_path"]["images_per_second"]:
        ratios["tensor_over_pil_images_per_second"] = lightning_ips / record["pil_data_path"]["images_per_second"]
    record["ratios"] = ratios

    path = write_record(args.out, record["preset"], record)
    path.with_suffix(".md").write_text(markdown_table(record))
    print(markdown_table(record))
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
