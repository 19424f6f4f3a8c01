"""Every recipe option builds and trains: two real training steps each, through train.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cifar_lit.run.train import main

pytestmark = pytest.mark.slow

OPTIONS = {
    "ema": ["--ema-decay", "0.9"],
    "flip-tta": ["--flip-tta"],
    "cutout": ["--cutout", "8"],
    "onecycle": ["--schedule", "onecycle", "--warmup-fraction", "0.5"],
    "linear": ["--schedule", "linear", "--warmup-fraction", "0.5"],
    "cosine": ["--schedule", "cosine", "--warmup-fraction", "0.5"],
    "bf16": ["--precision", "bf16-mixed"],
    "no-channels-last": ["--no-channels-last"],
    "groups": ["--label-smoothing", "0.2", "--no-nesterov", "--norm-bias-weight-decay", "1e-4",
               "--norm-bias-lr-scale", "0.5"],
    "lr-scaling": ["--lr-reference-batch-size", "256", "--batch-size", "60"],
    "pil-path": ["--data-path", "pil", "--num-workers", "0"],
    "val-split": ["--val-split", "50"],
    "computed-normalization": ["--normalization", "computed"],
}


def run_option(flags: list[str], extra: list[str], logdir: Path) -> tuple[dict, dict]:
    assert main([*flags, *extra, "--max-epochs", "1", "--limit-train-batches", "2", "--target-acc", "1.0"]) == 0
    (run_dir,) = logdir.glob("version_*")
    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return summary, checkpoint


@pytest.mark.parametrize("name", OPTIONS)
def test_option_trains(noisy_flags, tmp_path, name):
    summary, checkpoint = run_option(noisy_flags, OPTIONS[name], tmp_path / "logs")
    assert checkpoint["global_step"] == 2 and summary["test_acc"] is not None
    learned = checkpoint["state_dict"]["model.linear.weight"]
    assert torch.isfinite(learned).all()
    if name == "ema":
        assert "current_model_state" in checkpoint and "averaging_state" in checkpoint
        assert not torch.equal(checkpoint["current_model_state"]["model.linear.weight"], learned)
    if name == "flip-tta":
        assert 0 <= summary["test_acc_tta"] <= 1
    if name in ("onecycle", "linear", "cosine"):
        assert checkpoint["lr_schedulers"][0]["last_epoch"] == 2
        assert checkpoint["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)  # annealed to the end
    if name == "groups":
        groups = checkpoint["optimizer_states"][0]["param_groups"]
        assert groups[1]["weight_decay"] == 1e-4 and not groups[0]["nesterov"]
    if name == "lr-scaling":
        assert checkpoint["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(0.005 * 60 / 256)
    if name == "val-split":
        assert summary["config"]["val_split"] == 50
