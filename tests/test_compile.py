"""The compiled path: every graph is compiled in the warm-up, none breaks, none is compiled again later, and a
second run finds the compiled code on disk (warm start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY_FLAGS, with_extra_callback
from torch._dynamo.utils import counters

from cifar_lit.run.train import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def quick_compile(monkeypatch):
    """torch.compile with the aot_eager backend: Dynamo captures and guards the same graphs as with Inductor
    (graph breaks and recompiles show the same way) without generating code, so a test takes seconds."""
    real_compile = torch.compile

    def compile_without_inductor(function=None, **options):
        options.pop("mode", None)
        return real_compile(function, backend="aot_eager", **options)

    monkeypatch.setattr(torch, "compile", compile_without_inductor)
    torch._dynamo.reset()  # code compiled by earlier tests in this process would be reused, not compiled
    counters.clear()
    yield
    torch._dynamo.reset()


class GraphCount(pl.Callback):
    """Unique graphs Dynamo has compiled when training starts (after the warm-up) and at the end of each stage."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def on_train_start(self, trainer, pl_module):
        self.seen["after warm-up"] = counters["stats"]["unique_graphs"]

    def on_train_end(self, trainer, pl_module):
        self.seen["after training"] = counters["stats"]["unique_graphs"]

    def on_test_end(self, trainer, pl_module):
        self.seen["after the test"] = counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("flags", [[], ["--flip-tta", "--cutout", "8"], ["--ema-decay", "0.9"]],
                         ids=["plain", "tta-and-cutout", "ema"])
def test_nothing_is_compiled_after_the_warm_up_and_nothing_breaks(image_folder, tmp_path, monkeypatch, quick_compile,
                                                                   flags):
    graphs = GraphCount()
    with_extra_callback(monkeypatch, graphs)
    assert main([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(tmp_path / "logs"), "--width", "8",
                 "--max-epochs", "2", "--target-acc", "1.0", "--compile", "--compile-cache", str(tmp_path / "cache"),
                 *flags]) == 0
    assert graphs.seen["after warm-up"] >= 4  # training step, evaluation step, augmentation, normalization
    assert graphs.seen["after warm-up"] == graphs.seen["after training"] == graphs.seen["after the test"], graphs.seen
    assert not counters["graph_break"]  # fullgraph=True would have raised; this says so for the record
    (run_dir,) = (tmp_path / "logs").glob("version_*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["warmup_seconds"] > 0 and summary["phase_seconds"]["warmup"] >= summary["warmup_seconds"]


@pytest.mark.slow
def test_a_second_run_starts_warm_from_the_compile_cache(image_folder, tmp_path):
    """Inductor for real, in two processes as a user would run them (about 40 s cold on 2 CPU cores, 4 s warm)."""
    cache = tmp_path / "compile-cache"
    flags = [*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(tmp_path / "logs"), "--width", "8",
             "--max-epochs", "1", "--target-acc", "1.0", "--compile", "--compile-cache", str(cache)]
    reports = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "train.py", *flags], cwd=ROOT, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        latest = max((tmp_path / "logs").glob("version_*/summary.json"), key=lambda path: path.stat().st_mtime_ns)
        reports.append(json.loads(latest.read_text())["compile_cache"])
    cold, warm = reports
    assert cold["state"] == "cold" and cold["misses"] > 0 and cold["hits"] == 0
    assert warm["state"] == "warm" and warm["hits"] == cold["misses"] and warm["misses"] == 0
    assert cold["folder"] == warm["folder"] == str(cache / "inductor") and any((cache / "inductor").iterdir())
