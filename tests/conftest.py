"""Shared fixtures: small synthetic data sets on disk and the flags that make train.py runs small and quick."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import write_image_folder, write_torchvision_batches  # noqa: E402

from cifar_lit.run import train as run  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n: one worker per core, so each worker (and the train.py processes it starts) uses one thread;
    # two threads per worker on two cores made every test about twice as slow.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# A learnable 300-image set; a ResNet18 of width 8 (176k parameters, same layers as width 64) reaches 60% test
# accuracy within a few epochs with these settings on the CPU, in seconds.
TINY_FLAGS = [
    "--gpus", "0", "--width", "8", "--no-download", "--batch-size", "30", "--eval-batch-size", "50", "--lr", "0.005",
    "--lr-reference-batch-size", "30",
    "--schedule", "constant", "--warmup-fraction", "0", "--no-progress-bar", "--sanity-val-steps", "0",
    "--grid-images", "8", "--log-every-n-steps", "5",
]


@pytest.fixture(scope="session")
def image_folder_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("image_folder") / "cifar", train_per_class=30,
                              test_per_class=10)


@pytest.fixture
def image_folder(image_folder_master: Path, tmp_path: Path) -> Path:
    """A private copy (tests may damage it or build caches in it)."""
    return Path(shutil.copytree(image_folder_master, tmp_path / "cifar"))


@pytest.fixture(scope="session")
def noisy_folder_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("noisy_folder") / "cifar", train_per_class=30,
                              test_per_class=10, mislabeled_test_fraction=0.15)


@pytest.fixture
def noisy_flags(noisy_folder_master: Path, tmp_path: Path) -> list[str]:
    """Like tiny_flags, but 15% of the test images are mislabeled: a target of 1.0 is never reached."""
    folder = Path(shutil.copytree(noisy_folder_master, tmp_path / "noisy"))
    return [*TINY_FLAGS, "--data-dir", str(folder), "--logdir", str(tmp_path / "logs")]


@pytest.fixture
def batches_folder(tmp_path: Path) -> Path:
    return write_torchvision_batches(tmp_path / "cifar_batches", train_per_class=10, test_per_class=5)


@pytest.fixture
def tiny_flags(image_folder: Path, tmp_path: Path) -> list[str]:
    return [*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(tmp_path / "logs")]



def with_extra_callback(monkeypatch: pytest.MonkeyPatch, callback) -> None:
    """Make train.py's runs in this test use `callback` too, before all of its own (GracefulStop then sees a
    signal the callback sends in the same step)."""
    original = run.build_callbacks

    def build(*args, **kwargs):
        callbacks = original(*args, **kwargs)
        callbacks.before.append(callback)
        return callbacks

    monkeypatch.setattr(run, "build_callbacks", build)
