"""The tables of numbers that README.md and docs/ quote, made from the records under benchmarks/results/, so that no
number on a page can drift from its record.

    python benchmarks/doc_tables.py            # print every table
    python benchmarks/doc_tables.py --write    # put them into the pages, between their markers

A table sits in a page between `<!-- table: NAME -->` and `<!-- /table -->`. tests/test_docs.py fails when a page's
table differs from what this script makes of today's records, so a new record (a GPU lease's, say) means running
`--write` and committing the pages with it.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NOT_MEASURED = "not measured at this commit"
MARKED = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def record(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def link(name: str, page_depth: int = 0) -> str:
    return f"[`{name}`]({'../' * page_depth}benchmarks/results/{name})"


def short(commit: str) -> str:
    return commit[:7]


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def lease_records() -> list[tuple[str, dict[str, Any]]]:
    """GPU leases of later commits (benchmarks/gpu_lease.sh, benchmarks/lease_records.py), newest last."""
    return [(path.name, json.loads(path.read_text())) for path in sorted(RESULTS.glob("gpu-lease-*.json"))]


def results_table(depth: int = 0) -> str:
    """The README's first table: each preset and network, its test accuracy and training seconds to 85%, where and
    at which commit; the current code's rows say when nothing of it has run on a GPU."""
    rows = ["| preset or network | test accuracy | seconds of training to 85% | device | commit | record |",
            "|---|---|---|---|---|---|"]
    measured = set()
    for name, lease in lease_records():
        commits = lease.get("git_commit") or []
        commit = ", ".join(short(c) for c in commits) if isinstance(commits, list) else short(commits)
        for kind, label in (("default", "`default` (ResNet18)"), ("fast85", "`fast85` (ResNet18)")):
            finished = [line for line in (lease.get("runs") or {}).get(kind, []) if not line.get("failed")]
            if not finished:
                continue
            measured.add(kind)
            reached = [line["train_seconds"] for line in finished if line.get("reached")]
            seconds = (f"{statistics.median(reached):.1f} (median of {len(reached)})" if reached
                       else "85% not reached")
            accuracy = statistics.median(line["test_acc"] for line in finished)
            rows.append(f"| {label}, {len(finished)} run(s) | {percent(accuracy)} (median) | {seconds} | "
                        f"{lease.get('device', '?')} | {commit} | {link(name, depth)} |")
    for kind, label in (("default", "`default` (ResNet18)"), ("fast85", "`fast85` (ResNet18)"),
                        ("resnet34", "`--model resnet34`"), ("resnet9", "`--model resnet9`")):
        if kind not in measured:
            rows.append(f"| {label} | {NOT_MEASURED} | {NOT_MEASURED} | – | – | – |")
    h100_name = "gpu-h100-bb1e3a8-2026-11.json"
    h100 = record(h100_name)
    runs, commit, device = h100["runs"], h100["git_commit"], "H100"
    default, ten, five = runs["default"], runs["fast85_10_epochs"], runs["fast85_5_seeds"]
    rows += [
        f"| `default` (ResNet18), an older commit | {percent(default['test_acc'])} at epoch "
        f"{default['target_epoch']} | {default['train_seconds_to_target']:.1f} | {device} | {commit} | "
        f"{link(h100_name, depth)} |",
        f"| `fast85`, seed {ten['seed']}, 10 epochs, an older commit | {percent(ten['test_acc'])} | "
        f"{ten['train_seconds_to_target']:.2f} | {device} | {commit} | {link(h100_name, depth)} |",
        f"| `fast85`, {five['seeds']} seeds, {five['epochs']} epochs, an older commit | "
        f"{percent(five['test_acc']['min'])} to {percent(five['test_acc']['max'])} | 85% not reached | {device} | "
        f"{commit} | {link(h100_name, depth)} |",
    ]
    cpu_name = "cpu-real-data-check-cpu-x86-64-2-cores-2026-11-24.json"
    cpu = record(cpu_name)
    epoch_minutes = 50_000 / cpu["images_per_second"] / 60
    rows.append(f"| ResNet18, {cpu['global_steps']} steps at batch 128 ({cpu['global_steps'] * 128 / 50_000:.2f} "
                f"epoch), a check on real data | {percent(cpu['test_acc'])} | not a run to 85% "
                f"({cpu['images_per_second']:.0f} images/s: about {epoch_minutes:.0f} min an epoch) | "
                f"{cpu['device']} | {short(cpu['git_commit'])} | {link(cpu_name, depth)} |")
    return "\n".join(rows)


def cpu_speed_table(depth: int = 1) -> str:
    """docs/speed.md: what the CPU measurements of the fast path say, before and after, each with its record."""
    before, after = (record(f"framework_overhead-cpu-x86-64-2-cores-{label}-2026-11-25.json")
                     for label in ("before", "after"))
    load = record("data_load-cpu-x86-64-2-cores-2026-11-25.json")
    old_path = record("data_path-cpu-x86-64-2-cores-2026-11-24.json")
    eager = record("data_path-cpu-x86-64-2-cores-2026-11-25-eager.json")
    compiled = record("data_path-cpu-x86-64-2-cores-2026-11-25-compiled.json")
    cache = record("cache-cpu-x86-64-2-cores-2026-11-24.json")
    figures_before, figures_after = (record(f"figure_drawing-cpu-x86-64-2-cores-{label}-2026-12-02.json")
                                     for label in ("before", "after"))
    pil = old_path["results"]["pil_2_workers"]["images_per_second"]
    rows = [
        "| what (2 CPU cores) | before | after | records |",
        "|---|---|---|---|",
        f"| Lightning's loop minus the bare loop, per step (tiny network, batch 32) | "
        f"{before['overhead_us_per_step'] / 1000:.2f} ms ({short(before['git_commit'])}) | "
        f"{after['overhead_us_per_step'] / 1000:.2f} ms ({short(after['git_commit'])}) | "
        f"{link('framework_overhead-cpu-x86-64-2-cores-before-2026-11-25.json', depth)}, "
        f"{link('framework_overhead-cpu-x86-64-2-cores-after-2026-11-25.json', depth)} |",
        f"| the data phase of a run on the JPEG copy, its cache built | "
        f"{load['data_phase_estimate_seconds']['before']:.2f} s ({short(load['before']['git_commit'])}) | "
        f"{load['data_phase_estimate_seconds']['after']:.2f} s ({short(load['after']['git_commit'])}) | "
        f"{link('data_load-cpu-x86-64-2-cores-2026-11-25.json', depth)} |",
        f"| training batches alone (crop, flip, normalize; no model), images/s | "
        f"PIL path, 2 workers: {pil:,.0f}; tensor path as it was then: "
        f"{old_path['results']['tensor']['images_per_second']:,.0f} ({short(old_path['git_commit'])}) | "
        f"tensor path: {eager['results']['tensor']['images_per_second']:,.0f} eager, "
        f"{compiled['results']['tensor']['images_per_second']:,.0f} compiled ({short(eager['git_commit'])}) | "
        f"{link('data_path-cpu-x86-64-2-cores-2026-11-24.json', depth)}, "
        f"{link('data_path-cpu-x86-64-2-cores-2026-11-25-eager.json', depth)}, "
        f"{link('data_path-cpu-x86-64-2-cores-2026-11-25-compiled.json', depth)} |",
        f"| the JPEG copy's 60,000 images: decoded once, then loaded from the cache | "
        f"decode {cache['decode_train_seconds'] + cache['decode_test_seconds']:.1f} s | "
        f"cached load {cache['cached_train_seconds'] + cache['cached_test_seconds']:.2f} s "
        f"({short(cache['git_commit'])}) | {link('cache-cpu-x86-64-2-cores-2026-11-24.json', depth)} |",
        f"| one evaluation's figures (30-image grids, Grad-CAM, confusion matrix, per-class bars) | "
        f"{figures_before['seconds_per_evaluation']:.2f} s ({short(figures_before['git_commit'])}) | "
        f"{figures_after['seconds_per_evaluation']:.2f} s ({short(figures_after['git_commit'])}) | "
        f"{link('figure_drawing-cpu-x86-64-2-cores-before-2026-12-02.json', depth)}, "
        f"{link('figure_drawing-cpu-x86-64-2-cores-after-2026-12-02.json', depth)} |",
    ]
    return "\n".join(rows)


def h100_table(depth: int = 1) -> str:
    """docs/speed.md: the H100 measurements of an older commit, the only GPU numbers so far."""
    name = "gpu-h100-bb1e3a8-2026-11.json"
    h100 = record(name)
    runs = h100["runs"]
    default, ten, five, bare = runs["default"], runs["fast85_10_epochs"], runs["fast85_5_seeds"], runs["bare_loop"]
    return "\n".join([
        f"| run (H100, commit {h100['git_commit']}, {link(name, depth)}) | result |",
        "|---|---|",
        f"| `python train.py --gpus 1` | {percent(default['test_acc'])} at epoch {default['target_epoch']}, "
        f"{default['train_seconds_to_target']:.1f} s of training, {default['wall_seconds']:.1f} s wall |",
        f"| `fast85`, seed {ten['seed']}, 10 epochs | 85% after {ten['train_seconds_to_target']:.2f} s of training; "
        f"{percent(ten['test_acc'])} final; {ten['images_per_second']:,} images/s; GPU busy "
        f"{ten['gpu_busy_percent']}%; {ten['wall_seconds']:.1f} s wall |",
        f"| `fast85`, {five['seeds']} seeds, {five['epochs']} epochs | 85% not reached: "
        f"{percent(five['test_acc']['min'])} to {percent(five['test_acc']['max'])}; "
        f"{five['images_per_second']['min']:,} to {five['images_per_second']['max']:,} images/s; GPU busy "
        f"{five['gpu_busy_percent']['min']}-{five['gpu_busy_percent']['max']}% |",
        f"| the bare PyTorch loop on the same step | {bare['images_per_second']:,} images/s (Lightning / bare "
        f"{bare['lightning_over_bare']:.2f}) |",
    ])


def insight_table(depth: int = 1) -> str:
    """docs/insight.md: the LR range test's suggestion checked by training with it, on the real data."""
    rows = ["| record | the range test's rule | suggested `--lr` | 300 steps with it | 300 steps at the default "
            "`--lr 0.2` |", "|---|---|---|---|---|"]
    for name, rule in (("insight-cpu-x86-64-2-cores-2026-12-01.json", "the loss's minimum (the rule then)"),
                       ("insight-cpu-x86-64-2-cores-2026-12-04.json", "the steepest descent below the minimum")):
        found = record(name)
        default = found.get("default_lr_run")
        rows.append(f"| {link(name, depth)} | {rule} | {found['lr_range_test']['suggested_flag_lr']:.3g} | "
                    f"{percent(found['test_acc'])} | {percent(default['test_acc']) if default else 'not run'} |")
    return "\n".join(rows)


def newest(pattern: str) -> tuple[str, dict[str, Any]] | None:
    paths = sorted(RESULTS.glob(pattern))
    return (paths[-1].name, json.loads(paths[-1].read_text())) if paths else None


def sweep_overhead_table(depth: int = 1) -> str:
    """docs/sweeps.md: the sweep's own seconds per trial, and memory over the trials."""
    found = newest("sweep_overhead-*.json")
    if found is None:
        return NOT_MEASURED
    name, run = found
    rss = run["rss_mb_after_each_trial"]
    return "\n".join([
        "| trials | a trial | the sweep's own, per trial | share | RSS after trial 1, 2, last | modules alive after "
        "each | device | commit | record |", "|---|---|---|---|---|---|---|---|---|",
        f"| {run['trials']} | {run['trial_seconds_mean']:.2f} s | {1000 * run['sweep_own_seconds_per_trial']:.0f} ms "
        f"| {100 * run['sweep_own_share']:.1f}% | {rss[0]:.0f}, {rss[1]:.0f}, {rss[-1]:.0f} MB | "
        f"{max(run['live_lightning_modules_after_each_trial'])} | {run['device']} | {short(run['git_commit'])} | "
        f"{link(name, depth)} |"])


def sweep_cpu_table(depth: int = 1) -> str:
    """docs/sweeps.md: every trial of the small CPU study on real data."""
    found = newest("sweep_study-*.json")
    if found is None:
        return NOT_MEASURED
    name, study = found
    rows = [f"Record {link(name, depth)}: {study['device']}, commit {short(study['git_commit'])}, "
            f"{study['wall_seconds'] / 60:.0f} minutes in all.", "",
            "| trial | lr | label_smoothing | warmup_fraction | best val accuracy | state |",
            "|---:|---|---|---|---|---|"]
    for trial in study["trials"]:
        params, value = trial["params"], trial["value"]
        state = f"pruned: {trial['pruned']}" if trial["pruned"] else trial["state"]
        best = " (best)" if trial["number"] == study["best_trial"] else ""
        rows.append(f"| {trial['number']} | {params.get('lr', 0):.3g} | {params.get('label_smoothing', 0):.3f} | "
                    f"{params.get('warmup_fraction', 0):.3f} | {percent(value) if value is not None else '–'}{best} | "
                    f"{state} |")
    return "\n".join(rows)


TABLES: dict[str, Callable[[], str]] = {"results": results_table, "cpu-speed": cpu_speed_table,
                                        "h100": h100_table, "insight": insight_table,
                                        "sweep-overhead": sweep_overhead_table, "sweep-cpu": sweep_cpu_table}
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))


def marked_tables(text: str) -> dict[str, str]:
    """The tables a page holds between markers, by name."""
    return {match.group("name"): match.group("body").rstrip("\n") for match in MARKED.finditer(text)}


def rewritten(text: str) -> str:
    return MARKED.sub(lambda m: f"{m.group(1)}{TABLES[m.group('name')]()}\n{m.group(4)}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the tables in README.md and docs/*.md")
    args = parser.parse_args(argv)
    if not args.write:
        for name, make in TABLES.items():
            print(f"<!-- table: {name} -->\n{make()}\n<!-- /table -->\n")
        return 0
    for page in PAGES:
        text = page.read_text()
        unknown = set(marked_tables(text)) - set(TABLES)
        if unknown:
            print(f"error: {page} marks a table this script does not make: {', '.join(sorted(unknown))}",
                  file=sys.stderr)
            return 2
        if rewritten(text) != text:
            page.write_text(rewritten(text))
            print(f"rewrote the tables of {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
