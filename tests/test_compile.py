"""The compiled path: every graph is compiled in the warm-up, none breaks, none is compiled again later, and a
second run finds the compiled code on disk (warm start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_FLAGS, GraphCount, with_extra_callback
from torch._dynamo.utils import counters

from cifar_lit.run.train import fit, main

ROOT = Path(__file__).resolve().parent.parent


# TTA, cutout and EMA wrap whatever network there is: they are checked on the tests' one-block network (tracing the
# ResNet's training step is most of a run here); the ResNet itself is checked plain, and in bf16 on the tensor path.
TINY = ["--model", "tiny_network:tiny", "--gradcam-layer", "0"]


@pytest.mark.parametrize("flags", [[], [*TINY, "--flip-tta", "--cutout", "8"], [*TINY, "--ema-decay", "0.9"]],
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


@pytest.mark.parametrize("data_path, network", [("tensor", []), ("pil", TINY)], ids=["tensor", "pil"])
def test_a_bf16_mixed_run_compiles_nothing_after_the_warm_up(image_folder, tmp_path, monkeypatch, quick_compile,
                                                              data_path, network):
    """In mixed precision the loop runs the batch transforms outside autocast and the steps inside it, and the PIL
    path hands over float32 batches: the warm-up must compile exactly those (Dynamo guards on both)."""
    graphs = GraphCount()
    with_extra_callback(monkeypatch, graphs)
    assert main([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(tmp_path / "logs"), "--width", "8",
                 "--max-epochs", "1", "--target-acc", "1.0", "--compile", "--compile-cache", str(tmp_path / "cache"),
                 "--precision", "bf16-mixed", "--data-path", data_path, "--num-workers", "0", *network]) == 0
    assert counters["stats"]["unique_graphs"] >= 4
    assert graphs.seen["after warm-up"] == graphs.seen["after training"] == graphs.seen["after the test"], graphs.seen
    assert not counters["recompiles"], dict(counters["recompiles"])


@pytest.mark.slow
def test_a_second_run_starts_warm_from_the_compile_cache(image_folder, tmp_path):
    """Inductor for real: a first run in this process, then a second in a process of its own, as a user would run
    it. The network is a one-block one of the tests' own (tests/tiny_network.py): Inductor's C++ code generation
    for the ResNet's graphs took over two minutes of the suite, and the cache's cold and warm starts are the same
    whatever the graphs."""
    cache = tmp_path / "compile-cache"
    flags = [*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(tmp_path / "logs"), *TINY, "--max-epochs",
             "1", "--target-acc", "1.0", "--compile", "--compile-cache", str(cache)]
    torch._dynamo.reset()
    first = fit(flags)
    second = subprocess.run([sys.executable, "train.py", *flags], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert second.returncode == 0, second.stderr[-3000:]
    latest = max((tmp_path / "logs").glob("version_*/summary.json"), key=lambda path: path.stat().st_mtime_ns)
    cold = json.loads((first.run_dir / "summary.json").read_text())["compile_cache"]
    warm = json.loads(latest.read_text())["compile_cache"]
    assert cold["state"] == "cold" and cold["misses"] > 0 and cold["hits"] == 0
    assert warm["state"] == "warm" and warm["hits"] == cold["misses"] and warm["misses"] == 0
    assert cold["folder"] == warm["folder"] == str(cache / "inductor") and any((cache / "inductor").iterdir())
