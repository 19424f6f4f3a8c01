"""The real training path on a GPU: bf16, channels_last, torch.compile with its warm-up. Skipped without a GPU."""

import json

import pytest
import torch

from cifar_lit.run.train import main

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_compiled_bf16_training_on_the_gpu(tiny_flags, tmp_path):
    flags = [f for f in tiny_flags]
    flags[flags.index("--gpus") + 1] = "1"
    assert main([*flags, "--compile", "--compile-cache", str(tmp_path / "cache"), "--channels-last", "--width", "8",
                 "--max-epochs", "4", "--target-acc", "0.5"]) == 0
    (run_dir,) = (tmp_path / "logs").glob("version_*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == "bf16-mixed" and not summary["device"].startswith("CPU")
    assert summary["warmup_seconds"] > 0 and summary["peak_gpu_memory_mb"] > 0
    assert summary["test_acc"] >= 0.5 - 1e-6  # float32
    assert summary["compile_cache"]["state"] == "cold" and summary["compile_cache"]["misses"] > 0
