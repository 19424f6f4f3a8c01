import json

import pytest

from cifar_lit.bench import main
from cifar_lit.callbacks.stop_at_target import REACHED_TOLERANCE
from cifar_lit.phases import PHASES

RECORD_FIELDS = {"device", "preset", "target_acc", "reached", "train_seconds_to_target", "wall_seconds",
                 "epochs_to_target", "test_acc", "images_per_second", "seeds", "command", "git_commit", "versions"}


@pytest.mark.slow
def test_benchmark_runs_end_to_end_and_writes_a_valid_record(image_folder, tmp_path):
    out = tmp_path / "results"
    code = main(["--preset", "fast85", "--seeds", "2", "--data-dir", str(image_folder), "--out", str(out),
                 "--pil-epochs", "1", "--pil-workers", "0", "--",
                 "--gpus", "0", "--max-epochs", "2", "--batch-size", "30", "--eval-batch-size", "50", "--no-compile",
                 "--lr", "0.005", "--lr-reference-batch-size", "30", "--schedule", "constant", "--warmup-fraction", "0",
                 "--target-acc", "0.5"])
    assert code == 0
    (record_path,) = out.glob("fast85-cpu-*.json")
    record = json.loads(record_path.read_text())
    assert RECORD_FIELDS <= set(record)
    assert record["seeds"] == [0, 1] and len(record["runs"]) == 2
    assert record["reached"] is True and all(run["reached"] for run in record["runs"])
    assert 0 < record["train_seconds_to_target"] < record["wall_seconds"]
    assert record["epochs_to_target"] in (1, 2) and record["test_acc"] >= 0.5 - REACHED_TOLERANCE
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
