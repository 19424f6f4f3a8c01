"""Shared fixtures: small synthetic data sets on disk and the flags that make train.py runs small and quick."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).parent))

from helpers import TINY_FLAGS  # noqa: E402
from synthetic import write_image_folder, write_torchvision_batches  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n: one worker per core, so each worker (and the train.py processes it starts) uses one thread;
    # two threads per worker on two cores made every test about twice as slow.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, in file order (a stable sort): the workers start on the long end-to-end runs and
    finish on the short ones, instead of one worker running a minute-long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
