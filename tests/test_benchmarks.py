"""Every script under benchmarks/ runs: a tiny smoke run of each on the CPU, so none rots between GPU windows
(framework_overhead.py once failed on main and nothing noticed), and the GPU lease's dress rehearsal."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from helpers import ROOT, TINY_FLAGS, GraphCount, built_once, with_extra_callback
from torch._dynamo.utils import counters

from cifar_lit.models import MODELS

BENCHMARKS = ROOT / "benchmarks"
SMALL_RUN = ["--width", "8", "--batch-size", "30", "--eval-batch-size", "50", "--max-epochs", "1",
             "--no-progress-bar", "--sanity-val-steps", "0", "--grid-images", "8"]


def run_in_process(monkeypatch, script: str, *args: str) -> int:
    """The script as `python benchmarks/<script> args...` would run it, in this process (no second start-up)."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *args])
    try:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0


def run_script(*command: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(list(command), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def only_record(folder: Path, pattern: str) -> dict:
    (path,) = folder.glob(pattern)
    return json.loads(path.read_text())


def test_every_benchmark_script_has_a_smoke_test():
    names = {path.name for path in BENCHMARKS.iterdir() if path.suffix in (".py", ".sh")}
    tests = "".join(path.read_text() for path in Path(__file__).parent.glob("test_*.py"))
    untested = sorted(name for name in names if f"def test_{Path(name).stem}_runs" not in tests)
    assert not untested, f"no smoke test (def test_<script>_runs...) for {untested}"


def test_cache_timing_runs(monkeypatch, image_folder, tmp_path):
    assert run_in_process(monkeypatch, "cache_timing.py", "--data-dir", str(image_folder), "--out",
                          str(tmp_path)) == 0
    record = only_record(tmp_path, "cache-*.json")
    assert record["train_images"] == 300 and record["decode_train_seconds"] > 0 and record["cached_test_seconds"] > 0


def test_data_load_runs(monkeypatch, image_folder):
    assert run_in_process(monkeypatch, "data_load.py", str(image_folder)) == 0
    assert (image_folder / ".cifar_lit_cache").is_dir()


def test_data_path_runs(monkeypatch, image_folder, tmp_path):
    assert run_in_process(monkeypatch, "data_path.py", "--data-dir", str(image_folder), "--device", "cpu",
                          "--epochs", "1", "--workers", "0", "--batch-size", "30", "--out", str(tmp_path)) == 0
    assert only_record(tmp_path, "data_path-*.json")


def test_digits_run_runs(monkeypatch, tmp_path):
    """scikit-learn is not a dependency: its load_digits is stood in for by 20 random 8x8 images per digit."""
    rng = np.random.default_rng(0)
    digits = SimpleNamespace(images=rng.integers(0, 17, (200, 8, 8)).astype(float), target=np.repeat(np.arange(10), 20))
    sklearn, datasets = ModuleType("sklearn"), ModuleType("sklearn.datasets")
    datasets.load_digits = lambda: digits
    monkeypatch.setitem(sys.modules, "sklearn", sklearn)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", datasets)
    assert run_in_process(monkeypatch, "digits_run.py", "--out", str(tmp_path), "--", *SMALL_RUN) == 0
    record = only_record(tmp_path, "digits-*.json")
    assert record["images"] == {"train": 160, "test": 40} and record["num_classes"] == 10


def test_figure_drawing_runs(monkeypatch, tmp_path):
    assert run_in_process(monkeypatch, "figure_drawing.py", "--images", "4", "--repeats", "1", "--out",
                          str(tmp_path)) == 0
    assert only_record(tmp_path, "figure_drawing-*.json")


@pytest.mark.slow
def test_framework_overhead_runs(tmp_path, monkeypatch):
    """It swaps the registered ResNet18 for a one-convolution network: the registry gets its own back after."""
    monkeypatch.setitem(MODELS, "resnet18", MODELS["resnet18"])
    assert run_in_process(monkeypatch, "framework_overhead.py", "--steps", "20", "--repeats", "1", "--out",
                          str(tmp_path)) == 0
    record = only_record(tmp_path, "framework_overhead-*.json")
    assert record["lightning_us_per_step"]["median"] > 0 and record["bare_us_per_step"]["median"] > 0


def test_sweep_overhead_runs(tmp_path, monkeypatch):
    """It swaps the network and wraps the trials' fit: both get their own back after."""
    from cifar_lit.sweep import trials

    monkeypatch.setitem(MODELS, "resnet18", MODELS["resnet18"])
    monkeypatch.setattr(trials, "fit", trials.fit)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert run_in_process(monkeypatch, "sweep_overhead.py", "--trials", "2", "--steps", "5", "--out",
                          str(tmp_path)) == 0
    record = only_record(tmp_path, "sweep_overhead-*.json")
    assert len(record["rss_mb_after_each_trial"]) == 2 and record["live_lightning_modules_after_each_trial"] == [0, 0]
    assert 0 < record["sweep_own_seconds_per_trial"] < record["trial_seconds_mean"]


def test_sweep_study_runs(image_folder, tmp_path, monkeypatch):
    assert run_in_process(monkeypatch, "sweep_study.py", str(image_folder), str(tmp_path), "--trials", "1", "--",
                          "--max-epochs", "1", "--limit-train-batches", "2", "--eval-batch-size", "50") == 0
    record = only_record(tmp_path, "sweep_study-*.json")
    assert [trial["number"] for trial in record["trials"]] == [0] and record["best_trial"] == 0
    assert (tmp_path / "sweep_history.png").read_bytes().startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def insight_out(image_folder_master, tmp_path_factory) -> Path:
    def run_insight(out: Path) -> None:
        argv = [str(BENCHMARKS / "insight_run.py"), str(image_folder_master), str(out), "--", *SMALL_RUN,
                "--lr-find-steps", "20", "--limit-train-batches", "5", "--no-download"]
        with pytest.MonkeyPatch.context() as patch:
            assert run_in_process(patch, *[Path(argv[0]).name, *argv[1:]]) == 0

    return built_once(tmp_path_factory, "insight_out", run_insight)


@pytest.mark.slow
def test_insight_run_runs(insight_out):
    record = only_record(insight_out, "insight-*.json")
    assert record["lr_range_test"]["suggested_flag_lr"] > 0 and 0 <= record["test_acc"] <= 1
    assert record["default_lr_run"]["lr"] == 0.2 and 0 <= record["default_lr_run"]["test_acc"] <= 1
    assert (insight_out / "lr_find.png").is_file() and (insight_out / "gradcam_misclassified.png").is_file()


@pytest.mark.slow
def test_show_summary_runs(insight_out, monkeypatch, capsys):
    assert run_in_process(monkeypatch, "show_summary.py", str(insight_out / "logs")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("reached=" in line and "test=" in line for line in lines), lines


def test_profile_step_runs(monkeypatch, image_folder, capsys):
    assert run_in_process(monkeypatch, "profile_step.py", "--data-dir", str(image_folder), "--device", "cpu",
                          "--width", "8", "--batch-sizes", "30", "--steps", "2", "--warmup-steps", "1") == 0
    assert "images/s" in capsys.readouterr().out


def load_script(name: str) -> ModuleType:
    namespace = runpy.run_path(str(BENCHMARKS / name))
    return SimpleNamespace(**namespace)


def test_sync_check_runs_a_compiled_run_without_compiling_it_again(image_folder, tmp_path, monkeypatch,
                                                                   quick_compile):
    """Its conversion counter is a torch function mode, which Dynamo guards on: inside a compiled run it would
    have every step compiled again in the window it watches."""
    graphs = GraphCount()
    with_extra_callback(monkeypatch, graphs)
    sync_check = load_script("sync_check.py")
    code, watcher = sync_check.watch([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(tmp_path / "logs"),
                                      "--max-epochs", "1", "--target-acc", "1.0", "--compile", "--compile-cache",
                                      str(tmp_path / "cache")])
    assert code == 0 and watcher.started
    assert graphs.seen["after warm-up"] == graphs.seen["after training"], graphs.seen
    assert not counters["recompiles"], dict(counters["recompiles"])
    assert "not counted" in sync_check.report(watcher)


def test_sync_check_runs_and_counts_conversions_in_an_eager_run(image_folder, tmp_path, capsys):
    sync_check = load_script("sync_check.py")
    code = sync_check.main([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(tmp_path / "logs"),
                            "--max-epochs", "1", "--target-acc", "1.0", "--log-every-n-steps", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "tensor-to-host conversions (cifar_lit.bench.host_sync), by site:" in out


def lines_of(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines()]


@pytest.fixture(scope="module")
def lease_out(image_folder_master, tmp_path_factory) -> Path:
    """The lease's one command (`all`: both calls) on the CPU, from a .tar.gz as the GPU machine gets it. One fast85
    seed: each run is a program of its own (seconds of imports); the out-of-time test below goes through two seeds."""
    def rehearse(root: Path) -> None:
        archive = root / "data.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(image_folder_master, arcname="cifar10-jpeg")
        env = {"GPU_LEASE_REHEARSE": "1", "GPU_LEASE_SEEDS": "1", "PYTHON": sys.executable,
               "GPU_LEASE_WORK": str(root / "work")}
        run_script("bash", str(BENCHMARKS / "gpu_lease.sh"), str(archive), str(root / "out"), "all", env=env)

    return built_once(tmp_path_factory, "lease", rehearse) / "out"


@pytest.mark.slow
def test_gpu_lease_runs_its_dress_rehearsal_with_a_line_per_run(lease_out):
    lines = lines_of(lease_out / "results.jsonl")
    assert [(line["kind"], line["seed"]) for line in lines] == [
        ("fast85", 0), ("bare", 0), ("default", 0), ("fp16", 0), ("evaluate", 0)]
    for line in lines:
        assert {"kind", "seed", "reached", "train_seconds", "wall_seconds", "epochs", "test_acc", "images_per_second",
                "gpu_busy"} <= set(line) and not line.get("failed"), line
        assert 0 <= line["test_acc"] <= 1 and line["wall_seconds"] > 0
    assert lines[3]["command"].endswith("--precision 16-mixed") and lines[3]["skipped_steps"] is not None
    assert sorted(path.name for path in lease_out.iterdir()) == [
        "call1.log", "call2.log", "results.jsonl", "train1.log", "train2.log"], "few files: at most 8 come back"
    assert "decoding" in (lease_out / "call1.log").read_text()
    assert "is decoded already" in (lease_out / "call2.log").read_text(), "call 2 skips the decoding interpreter"


@pytest.mark.slow
def test_lease_records_runs_on_what_the_lease_brought_back(lease_out, tmp_path, capsys):
    brought = Path(shutil.copytree(lease_out, tmp_path / "out"))
    seed_0 = lines_of(brought / "results.jsonl")[0]  # and a second seed's line, as a lease of several seeds brings
    with (brought / "results.jsonl").open("a") as handle:
        handle.write(json.dumps({**seed_0, "seed": 1}) + "\n")
    assert load_script("lease_records.py").main([str(brought), "--results-dir", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    record = only_record(tmp_path, "gpu-lease-*.json")
    assert record["summary"]["fast85"]["runs"] == 2 and record["summary"]["bare"]["finished"] == 1
    assert record["lightning_over_bare_images_per_second"] > 0 and record["git_commit"] and record["versions"]
    assert record["date"] == seed_0["finished_at"][:10]
    rows = stdout.splitlines()
    assert rows[0].startswith("| `fast85`, 2 seeds | CPU") and "of the bare loop's" in rows[0]
    assert "16-mixed" in rows[2] and rows[3].startswith("| evaluate.py")
    assert "| fp16 | 0 |" in next(tmp_path.glob("gpu-lease-*.md")).read_text()
    # The README's results table takes the lease's runs: its rows come from the record, with its commit.
    doc_tables = load_script("doc_tables.py")
    results = tmp_path / "all_records"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    shutil.copy(next(tmp_path.glob("gpu-lease-*.json")), results)
    doc_tables.results_table.__globals__["RESULTS"] = results  # the script's own namespace, from runpy
    rows = doc_tables.results_table().splitlines()
    (fast,) = [row for row in rows if row.startswith("| `fast85` (ResNet18), 2 run(s) |")]
    assert "CPU" in fast and record["git_commit"][0][:7] in fast and "gpu-lease-" in fast
    assert not [row for row in rows if row.startswith("| `fast85` (ResNet18) | not measured")]


def test_lease_records_names_a_missing_results_file(tmp_path, capsys):
    records = load_script("lease_records.py")
    assert records.main([str(tmp_path)]) == 2
    assert f"error: {tmp_path / 'results.jsonl'} does not exist" in capsys.readouterr().err


def test_a_run_out_of_time_is_recorded_as_such_and_what_finished_is_kept(image_folder, tmp_path):
    """Every run killed at a one-second limit (GPU_LEASE_LIMIT): each gets a line saying so, the call goes on to the
    next run, and the lines already there stay (a run's imports alone outlast the limit)."""
    env = {"GPU_LEASE_REHEARSE": "1", "GPU_LEASE_SEEDS": "2", "PYTHON": sys.executable,
           "GPU_LEASE_WORK": str(tmp_path / "work"), "GPU_LEASE_LIMIT": "1"}
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"kind": "fast85", "seed": 9, "reached": True}) + "\n")
    # The data decoded already, as call 2 finds it: the decoding interpreter has no limit to test, only imports.
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "decoded").write_text(f"{image_folder}\n")
    run_script("bash", str(BENCHMARKS / "gpu_lease.sh"), str(image_folder), str(out), "1", env=env)
    lines = lines_of(out / "results.jsonl")
    assert lines[0] == {"kind": "fast85", "seed": 9, "reached": True}, "what finished before is kept"
    assert [(line["kind"], line["seed"], line["timed_out"], line["limit_seconds"]) for line in lines[1:]] == [
        ("fast85", 0, True, 1), ("bare", 0, True, 1), ("fast85", 1, True, 1)], "the bare loop right after the cold seed"


def test_gpu_lease_refuses_an_unknown_call_before_it_starts_anything(tmp_path):
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_lease.sh"), str(tmp_path), str(tmp_path / "out"), "3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "error: CALL is '3'; it must be all" in result.stderr
    assert not (tmp_path / "out").exists(), "nothing written"


def test_gpu_lease_installs_its_wheels_once_for_both_calls_and_names_bad_data(tmp_path):
    """`all` as the GPU machine runs it, with a wheel of a package that machine lacks, and data that is not there:
    call 1 installs the wheel, call 2 finds it installed, and each call names the data and exits 2."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "leasepkg-0.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr("leasepkg/__init__.py", "VALUE = 7\n")
        wheel.writestr("leasepkg-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: leasepkg\nVersion: 0.1\n")
        wheel.writestr("leasepkg-0.1.dist-info/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("leasepkg-0.1.dist-info/RECORD", "")
    work, out, missing = tmp_path / "work", tmp_path / "out", tmp_path / "no-data.tar.gz"
    env = {**os.environ, "GPU_LEASE_REHEARSE": "1", "PYTHON": sys.executable, "GPU_LEASE_WORK": str(work),
           "GPU_LEASE_WHEELS": str(wheels)}
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_lease.sh"), str(missing), str(out), "all"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    said = result.stdout + result.stderr  # each call's log takes both
    assert said.count(f"error: the data {missing} is neither a folder nor a file") == 2, said
    assert "installing the wheels" in (out / "call1.log").read_text()
    assert "installed already" in (out / "call2.log").read_text()
    imported = subprocess.run([sys.executable, "-c", "import leasepkg; print(leasepkg.VALUE)"], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(work / "site")}, capture_output=True, text=True)
    assert imported.stdout == "7\n", imported.stderr


def test_doc_tables_runs(capsys):
    assert load_script("doc_tables.py").main([]) == 0
    printed = capsys.readouterr().out
    assert printed.count("<!-- table: ") == printed.count("<!-- /table -->") >= 3
