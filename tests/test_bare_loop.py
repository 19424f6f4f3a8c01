"""The bare PyTorch loop measures what the Lightning run measures: same cuDNN settings, same images/s."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY_FLAGS

from cifar_lit.bench.bare_loop import bare_training_run
from cifar_lit.hardware.plan import plan_hardware
from cifar_lit.hardware.timing import cudnn_autotune, steady_throughput
from cifar_lit.run.config import Options, parse_options


def bare_config(image_folder, tmp_path, *flags: str) -> Options:
    options = parse_options([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(tmp_path / "logs"),
                             "--width", "8", "--target-acc", "1.0", *flags])
    return options.with_plan(plan_hardware(options.hardware_request(), with_memory=False))


def test_throughput_leaves_out_the_first_epoch():
    assert steady_throughput([100.0, 400.0, 300.0, 500.0]) == 400.0  # median of the epochs after the first
    assert steady_throughput([100.0]) == 100.0
    assert steady_throughput([None, 200.0, 300.0]) == 300.0
    assert steady_throughput([]) is None


@pytest.mark.parametrize("deterministic", [False, True])
def test_the_bare_loop_sets_cudnn_autotuning_as_the_trainer_does(image_folder, tmp_path, monkeypatch, deterministic):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", deterministic)  # the opposite of what a run sets
    pl.Trainer(accelerator="cpu", benchmark=cudnn_autotune(deterministic), logger=False)  # what train.py gives it
    assert torch.backends.cudnn.benchmark is (not deterministic)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", deterministic)
    flags = ["--max-epochs", "1", "--limit-train-batches", "2"] + (["--deterministic"] if deterministic else [])
    bare_training_run(bare_config(image_folder, tmp_path, *flags), "cpu", "32-true")
    assert torch.backends.cudnn.benchmark is (not deterministic)


def test_the_bare_loop_reports_the_median_of_the_epochs_after_the_first(image_folder, tmp_path):
    result = bare_training_run(bare_config(image_folder, tmp_path, "--max-epochs", "3"), "cpu", "32-true")
    rates = result["images_per_second_per_epoch"]
    assert len(rates) == result["epochs_run"] == 3 and all(rate > 0 for rate in rates)
    assert result["images_per_second"] == sorted(rates[1:])[1]
    assert result["train_started_at"] < result["train_ended_at"]
