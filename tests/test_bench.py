import json

import pytest

from cifar_lit.bench.time_to_accuracy import main, markdown_table, summarize
from cifar_lit.phases import PHASES
from cifar_lit.run.stop_at_target import REACHED_TOLERANCE

RECORD_FIELDS = {"device", "preset", "target_acc", "reached", "train_seconds_to_target", "wall_seconds",
                 "epochs_to_target", "test_acc", "images_per_second", "seeds", "command", "git_commit", "versions"}


@pytest.mark.slow
def test_benchmark_runs_end_to_end_and_writes_a_valid_record(image_folder, tmp_path):
    out = tmp_path / "results"
    # One seed (the first is 3): the lease rehearsal in test_benchmarks.py runs two, and summarize() has its own tests.
    code = main(["--preset", "fast85", "--seeds", "1", "--first-seed", "3", "--data-dir", str(image_folder), "--out",
                 str(out), "--pil-epochs", "1", "--pil-workers", "0", "--",
                 "--gpus", "0", "--width", "8", "--max-epochs", "3", "--batch-size", "30", "--eval-batch-size", "50",
                 "--no-compile",
                 "--lr", "0.005", "--lr-reference-batch-size", "30", "--schedule", "constant", "--warmup-fraction", "0",
                 "--target-acc", "0.3"])
    assert code == 0
    (record_path,) = out.glob("fast85-cpu-*.json")
    record = json.loads(record_path.read_text())
    assert RECORD_FIELDS <= set(record)
    assert record["seeds"] == [3] and len(record["runs"]) == 1 and record["bare_pytorch"]["seed"] == 3
    assert record["reached"] is True and all(run["reached"] for run in record["runs"])
    assert 0 < record["train_seconds_to_target"] < record["wall_seconds"]
    assert 1 <= record["epochs_to_target"] <= 3 and record["test_acc"] >= 0.3 - REACHED_TOLERANCE
    assert record["images_per_second"] > 0 and record["versions"]["torch"]
    assert record["bare_pytorch"]["reached"] and record["bare_pytorch"]["images_per_second"] > 0
    assert record["pil_data_path"]["images_per_second"] > 0
    assert set(record["ratios"]) == {"lightning_over_bare_images_per_second", "tensor_over_pil_images_per_second"}
    assert "| seed |" in record_path.with_suffix(".md").read_text()
    phases = record["summary"]["phase_seconds"]
    assert set(phases) == set(PHASES)
    assert phases["train"]["min"] > 0 and phases["train"]["max"] >= phases["train"]["min"]
    for run in record["runs"]:
        assert sum(run["phase_seconds"].values()) == pytest.approx(run["total_seconds"], rel=0.03)
        assert run["total_seconds"] <= run["wall_seconds"]
    assert "| train |" in record_path.with_suffix(".md").read_text()
    # no compile in this run: no run started cold or warm, and the record says so
    assert [run["compile_cache"] for run in record["runs"]] == [None]
    assert record["summary"]["cold_start"]["runs"] == record["summary"]["warm_start"]["runs"] == 0


def test_cold_and_warm_starts_are_reported_apart():
    def run(seed, state, wall, warmup):
        return {"seed": seed, "reached": True, "train_seconds_to_target": 9.0, "wall_seconds": wall,
                "epochs_to_target": 8, "test_acc": 0.86, "images_per_second": 40000.0, "warmup_seconds": warmup,
                "peak_gpu_memory_mb": 5000.0, "gpu_busy_percent": 95.0, "compile_cache": state,
                "phase_seconds": dict.fromkeys(PHASES, 1.0)}

    runs = [run(0, "cold", 40.0, 30.0), run(1, "warm", 20.0, 3.0), run(2, "warm", 22.0, 2.0)]
    summary = summarize(runs)
    assert summary["cold_start"]["runs"] == 1 and summary["cold_start"]["wall_seconds"]["median"] == 40.0
    assert summary["warm_start"]["runs"] == 2 and summary["warm_start"]["warmup_seconds"]["max"] == 3.0
    assert summary["wall_seconds"]["median"] == 22.0  # all seeds together
    record = {"preset": "fast85", "device": "GPU", "date": "2026-11-25", "command": "c", "git_commit": "x",
              "versions": {"torch": "t", "pytorch_lightning": "l", "cuda": "c"}, "data": "d", "runs": runs,
              "summary": summary, "target_acc": 0.85}
    table = markdown_table(record)
    assert "Cold start (1 run(s)): wall seconds 40.0 (40.0–40.0), warm-up seconds 30.0 (30.0–30.0)." in table
    assert "Warm start (2 run(s)): wall seconds 21.0 (20.0–22.0), warm-up seconds 2.5 (2.0–3.0)." in table
