"""Turns a GPU lease's results (benchmarks/gpu_lease.sh) into the records under benchmarks/results/ and the
README's rows.

    python benchmarks/lease_records.py OUT [--results-dir benchmarks/results]

Reads OUT/results.jsonl (one JSON object per finished run, and one per run that failed or ran out of time) and
writes `gpu-lease-<device>-<date>.json` (every line, grouped by kind, with medians and ranges, the device, the
versions, the commands and the commit) and a markdown table beside it; then prints the rows for the README's
Results table. A run that did not finish is listed as such; no number is made up for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cifar_lit.bench.time_to_accuracy import spread
from cifar_lit.reporting.provenance import PROJECT_ROOT, write_record

KINDS = ("fast85", "bare", "default", "fp16", "evaluate")
FIGURES = ("train_seconds", "wall_seconds", "epochs", "test_acc", "images_per_second", "gpu_busy")


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The objects of a results.jsonl; a line cut short by a kill (the last one) is left out and said so."""
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            print(f"warning: {path} line {number} is not complete JSON (cut off?); left out", file=sys.stderr)
    return lines


def summarize_kind(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and ranges over a kind's finished runs; for fast85, cold and warm compile-cache starts apart."""
    finished = [run for run in runs if not run.get("failed")]
    summary: dict[str, Any] = {
        "runs": len(runs),
        "finished": len(finished),
        "reached": sum(1 for run in finished if run.get("reached")),
        **{key: spread([run.get(key) for run in finished]) for key in FIGURES},
    }
    for state in ("cold", "warm"):
        started = [run for run in finished if run.get("compile_cache") == state]
        if started:
            summary[f"{state}_start_wall_seconds"] = spread([run["wall_seconds"] for run in started])
    return summary


def build_record(lines: list[dict[str, Any]]) -> dict[str, Any]:
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for line in lines:
        by_kind.setdefault(line.get("kind", "unknown"), []).append(line)
    described = next((line for line in lines if line.get("device")), {})
    finished = sorted(line["finished_at"] for line in lines if line.get("finished_at"))
    record: dict[str, Any] = {
        "what": "one GPU lease (benchmarks/gpu_lease.sh): fast85 on several seeds sharing one compile cache, the bare "
                "PyTorch loop at the same settings, the default run, the 16-mixed run, evaluate.py on the default "
                "run's best checkpoint",
        "device": described.get("device", "unknown device"),
        "date": finished[0][:10] if finished else "unknown-date",
        "git_commit": sorted({line["git_commit"] for line in lines if line.get("git_commit")}),
        "versions": described.get("versions"),
        "summary": {kind: summarize_kind(runs) for kind, runs in by_kind.items() if runs},
        "failed": [{key: line.get(key) for key in ("kind", "seed", "exit_status", "timed_out", "limit_seconds")}
                   for line in lines if line.get("failed")],
        "runs": by_kind,
    }
    fast, bare = record["summary"].get("fast85"), record["summary"].get("bare")
    if fast and bare and fast["images_per_second"]["median"] and bare["images_per_second"]["median"]:
        record["lightning_over_bare_images_per_second"] = (fast["images_per_second"]["median"]
                                                           / bare["images_per_second"]["median"])
    return record


def fmt(value: Any, pattern: str = "{:.1f}") -> str:
    return "–" if value is None else pattern.format(value)


def median_range(part: dict[str, Any], pattern: str = "{:.1f}") -> str:
    if part["median"] is None:
        return "–"
    if part["min"] == part["max"]:
        return fmt(part["median"], pattern)
    return f"{fmt(part['median'], pattern)} ({fmt(part['min'], pattern)}–{fmt(part['max'], pattern)})"


def readme_rows(record: dict[str, Any], record_path: str) -> list[str]:
    """The README's Results rows: what ran, on what, what came out, and the record."""
    summary, device, rows = record["summary"], record["device"], []
    targets = {line.get("target_acc") for runs in record["runs"].values() for line in runs if line.get("target_acc")}
    target = f"{targets.pop():.0%}" if len(targets) == 1 else "the target"
    if "fast85" in summary:
        part = summary["fast85"]
        text = (f"{part['reached']}/{part['runs']} seeds reached {target}; training s to the target "
                f"{median_range(part['train_seconds'], '{:.2f}')}, wall s {median_range(part['wall_seconds'])}")
        if "warm_start_wall_seconds" in part:
            text += f" (warm compile cache {median_range(part['warm_start_wall_seconds'])}"
            text += f", cold {median_range(part['cold_start_wall_seconds'])})" if "cold_start_wall_seconds" in part \
                else ")"
        text += f"; test accuracy {median_range(part['test_acc'], '{:.2%}')}"
        text += f"; {fmt(part['images_per_second']['median'], '{:,.0f}')} images/s"
        if record.get("lightning_over_bare_images_per_second") is not None:
            text += f", {record['lightning_over_bare_images_per_second']:.3f} of the bare loop's"
        if part["gpu_busy"]["median"] is not None:
            text += f"; GPU busy {median_range(part['gpu_busy'], '{:.0f}')}%"
        rows.append(f"| `fast85`, {part['runs']} seeds | {device} | {text} | `{record_path}` |")
    for kind, what in (("default", "default run, `train.py --gpus 1`"), ("fp16", "`--precision 16-mixed` run")):
        if kind in summary:
            part = summary[kind]
            if not part["finished"]:
                rows.append(f"| {what} | {device} | did not finish | `{record_path}` |")
                continue
            rows.append(f"| {what} | {device} | {'reached' if part['reached'] else 'did not reach'} {target} in "
                        f"{median_range(part['epochs'], '{:.0f}')} epoch(s), "
                        f"{median_range(part['train_seconds'], '{:.1f}')} s of training, "
                        f"{median_range(part['wall_seconds'])} s wall; test accuracy "
                        f"{median_range(part['test_acc'], '{:.2%}')} | `{record_path}` |")
    for line in record["runs"].get("evaluate", []):
        if not line.get("failed"):
            tta = f", {line['accuracy_flip_tta']:.2%} with flip TTA" if line.get("accuracy_flip_tta") else ""
            rows.append(f"| evaluate.py on the default run's best checkpoint | {device} | test accuracy "
                        f"{line['test_acc']:.2%}{tta} | `{record_path}` |")
    return rows


def markdown(record: dict[str, Any], rows: list[str]) -> str:
    lines = [f"# GPU lease on {record['device']} ({record['date']})", "",
             f"Commit(s): {', '.join(f'`{c}`' for c in record['git_commit']) or 'unknown'}; versions: "
             f"{json.dumps(record['versions'])}.", "",
             "| what | device | result | record |", "|---|---|---|---|", *rows, "",
             "| kind | seed | reached | train s | wall s | epochs | test acc | images/s | GPU busy % | command |",
             "|---|---:|:---:|---:|---:|---:|---:|---:|---:|---|"]
    for kind, runs in record["runs"].items():
        for run in runs:
            if run.get("failed"):
                why = "ran out of time" if run.get("timed_out") else f"failed (exit {run.get('exit_status')})"
                lines.append(f"| {kind} | {fmt(run.get('seed'), '{}')} | {why} | | | | | | | |")
                continue
            lines.append(f"| {kind} | {fmt(run.get('seed'), '{}')} | {fmt(run.get('reached'), '{}')} | "
                         f"{fmt(run.get('train_seconds'), '{:.2f}')} | {fmt(run.get('wall_seconds'))} | "
                         f"{fmt(run.get('epochs'), '{}')} | {fmt(run.get('test_acc'), '{:.4f}')} | "
                         f"{fmt(run.get('images_per_second'), '{:,.0f}')} | {fmt(run.get('gpu_busy'), '{:.0f}')} | "
                         f"`{run.get('command', '')}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the OUT folder of benchmarks/gpu_lease.sh")
    parser.add_argument("--results-dir", type=Path, default=PROJECT_ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    results = args.out / "results.jsonl"
    if not results.is_file():
        print(f"error: {results} does not exist; give the OUT folder that benchmarks/gpu_lease.sh wrote",
              file=sys.stderr)
        return 2
    record = build_record(read_lines(results))
    path = write_record(args.results_dir, "gpu-lease", record)
    shown = path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path
    rows = readme_rows(record, str(shown))
    path.with_suffix(".md").write_text(markdown(record, rows))
    print("\n".join(rows))
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
