"""Several processes through Lightning's DDP on the CPU: one set of outputs, every test image counted once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import GRIDS, TINY_FLAGS, built_once, python
from PIL import Image
from synthetic import write_image_folder

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.options import DataOptions
from cifar_lit.reporting.evaluate import main as evaluate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    """300 training images and 101 test images: the test set does not split evenly over two processes."""
    root = write_image_folder(tmp_path_factory.mktemp("ddp") / "cifar", train_per_class=30, test_per_class=10)
    extra = np.full((32, 32, 3), 200, dtype=np.uint8)
    Image.fromarray(extra).save(root / "test" / "ship" / "extra.png")
    return root


def ddp_flags(data: Path, logdir: Path, grids: bool = True) -> list[str]:
    """Two CPU processes on the odd folder; `grids`: rank zero draws them while the other rank waits at the next
    collective (the exact-resume runs compare weights, and draw none)."""
    flags = [f for f in TINY_FLAGS]
    flags[flags.index("--gpus"):flags.index("--gpus") + 2] = []
    return [*flags, *(GRIDS if grids else []), "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
            "--data-dir", str(data), "--logdir", str(logdir), "--target-acc", "0.5", "--max-epochs", "8",
            "--eval-batch-size", "20"]


def launch(flags: list[str], launcher: str = "lightning") -> subprocess.CompletedProcess:
    """train.py on two processes. Lightning's launcher starts the second once the first has imported everything
    (seconds later); torchrun starts both side by side, as a cluster job does."""
    by = {"lightning": [], "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]}
    return subprocess.run([sys.executable, *by[launcher], "train.py", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)


def check_one_run_and_exact_test_accuracy(logdir: Path, tmp_path: Path, reached: bool = True) -> dict:
    runs = sorted(logdir.glob("version_*"))
    assert len(runs) == 1, runs
    run_dir = runs[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["target_reached"] is reached
    if reached:
        assert summary["epochs_run"] == summary["target_epoch"] < 8  # stopped at the target, on both ranks
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    assert len(list(run_dir.glob("events.out.tfevents.*"))) >= 1 and (run_dir / "metrics.csv").is_file()
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    out = tmp_path / "single"
    assert evaluate(["--ckpt", str(best), "--out", str(out), "--gpus", "0"]) == 0
    single = json.loads((out / "metrics.json").read_text())
    assert single["images"] == 101
    assert summary["test_acc"] == pytest.approx(single["accuracy"], abs=1e-7)  # k/101, every image once
    return summary


@pytest.mark.slow
def test_two_process_ddp_run_writes_one_run_and_counts_each_test_image_once(odd_folder, tmp_path):
    logdir = tmp_path / "logs"
    result = launch(ddp_flags(odd_folder, logdir))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = check_one_run_and_exact_test_accuracy(logdir, tmp_path)
    assert summary["config"]["devices"] == 2


@pytest.mark.slow
def test_torchrun_launch_shares_one_run_folder(uninterrupted_ddp, tmp_path):
    """The uninterrupted run of the resume tests below is the torchrun launch (one run of the two, not two)."""
    summary = check_one_run_and_exact_test_accuracy(uninterrupted_ddp, tmp_path, reached=False)
    assert summary["epochs_run"] == 3 and summary["global_steps"] == 15


class FakeTrainer:
    """What the DataModule asks of a Trainer, for rank `rank` of `world` processes."""

    def __init__(self, rank: int, world: int) -> None:
        self.global_rank, self.world_size = rank, world
        self.strategy = SimpleNamespace(root_device=torch.device("cpu"))
        self.fit_loop = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0)))
        self.training = False


@pytest.mark.parametrize("data_path", ["tensor", "pil"])
def test_each_rank_evaluates_its_own_share_without_padding(odd_folder, data_path):
    seen = []
    for rank in range(3):
        module = ImageDataModule(DataOptions(data_dir=str(odd_folder), data_path=data_path, eval_batch_size=16,
                                             num_workers=0))
        module.trainer = FakeTrainer(rank, 3)
        module.setup("fit")
        labels = [batch[1] for batch in module.test_dataloader()]
        seen.append(np.concatenate([label.numpy() for label in labels]))
    assert sum(len(part) for part in seen) == 101
    assert [len(part) for part in seen] == [34, 34, 33]
    counts = np.bincount(np.concatenate(seen), minlength=10)
    assert counts.tolist() == [10] * 8 + [11, 10]


@pytest.mark.parametrize("data_path", ["tensor", "pil"])
def test_ranks_train_on_disjoint_shares(odd_folder, data_path):
    shares = []
    for rank in range(2):
        module = ImageDataModule(DataOptions(data_dir=str(odd_folder), data_path=data_path, batch_size=10,
                                             num_workers=0, crop_padding=0, flip=False))
        module.trainer = FakeTrainer(rank, 2)
        module.setup("fit")
        loader = module.train_dataloader()
        shares.append({bytes(img.numpy().tobytes()) for batch in loader for img in batch[0]})
    assert len(shares[0]) == len(shares[1]) == 150
    assert not shares[0] & shares[1]


@pytest.mark.parametrize("shard", [False, True], ids=["global-shuffle", "sharded"])
def test_schedule_length_is_the_loaders_length_on_every_rank(odd_folder, shard):
    # 300 training images on 7 ranks: shards of 43 or 42 images, so a batch of 43 fits on some ranks only
    for rank in range(7):
        module = ImageDataModule(DataOptions(data_dir=str(odd_folder), batch_size=43, shard_train_data=shard))
        module.trainer = FakeTrainer(rank, 7)
        module.setup("fit")
        assert module.train_batches_per_epoch() == len(list(module.train_dataloader()))


RUNNER = Path(__file__).with_name("phase_hold_runner.py")
EXACT_DDP = ["--deterministic", "--target-acc", "1.0", "--max-epochs", "3", "--ckpt-every-n-epochs", "1"]
# A run signalled in each phase in turn, each stop resumed by the next launch: (phase held on rank zero, HOLD_AFTER,
# global step of last.ckpt after the stop). 5 steps per epoch on each rank; the resumed run's first checkpoints after
# a validation are the second epoch's. The stopped runs are launched by Lightning, the last resume by torchrun (a
# cluster job's resume). One chain, not a run per phase: each launch costs two interpreters' imports (about 5 s each
# on 2 CPU cores).
SIGNALLED = [("train", None, 0), ("validation", None, 5), ("checkpoints", "validation", 10)]


def ddp_processes(marker: str) -> list[int]:
    """Processes whose command line names `marker` (a test's unique log folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def final_weights(logdir: Path) -> dict:
    (run_dir,) = sorted(logdir.glob("version_*"))
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted_ddp(odd_folder, tmp_path_factory) -> Path:
    """The two-process run without a signal, launched by torchrun: the runs it is compared with are launched by
    Lightning, and the launcher must not change what is computed."""
    def train_whole(logdir: Path) -> None:
        result = launch([*ddp_flags(odd_folder, logdir, grids=False), *EXACT_DDP], "torchrun")
        assert result.returncode == 0, result.stderr[-3000:]

    return built_once(tmp_path_factory, "ddp_whole", train_whole)


def stop_in(phase: str, after: str | None, flags: list[str], logdir: Path) -> Path:
    """Launches train.py on two processes through the phase-holding runner, sends SIGTERM to rank zero once it is in
    `phase`, checks that every rank stopped well, and returns last.ckpt."""
    env = {**os.environ, "HOLD_PHASE": phase, "PYTHONPATH": str(ROOT), **({"HOLD_AFTER": after} if after else {})}
    process = python([str(RUNNER), *flags], cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith(f"entered {phase}"):
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            break
    lines += process.stderr.readlines()
    code = process.wait(timeout=120)
    err = "".join(lines)
    assert code == 128 + signal.SIGTERM, f"{phase}: {err[-3000:]}"
    assert time.monotonic() - signalled < 60, "every rank stops within a minute"
    deadline = time.monotonic() + 20
    while ddp_processes(str(logdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ddp_processes(str(logdir)) == [], "no rank is left behind"
    assert err.count("Stopped by signal 15") >= 1 and "Traceback" not in err, err[-3000:]
    (run_dir,) = sorted(logdir.glob("version_*"))
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_sigterm_in_each_phase_of_a_two_process_run_stops_every_rank_saves_once_and_resumes_exactly(odd_folder,
                                                                                                   tmp_path,
                                                                                                   uninterrupted_ddp):
    logdir = tmp_path / "logs"
    flags = [*ddp_flags(odd_folder, logdir, grids=False), *EXACT_DDP]
    resume: list[str] = []
    for phase, after, step in SIGNALLED:
        last = stop_in(phase, after, [*flags, *resume], logdir)
        assert torch.load(last, weights_only=True)["global_step"] == step, phase
        resume = ["--resume", str(last)]
    resumed = launch([*flags, *resume], "torchrun")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final, whole = final_weights(logdir), final_weights(uninterrupted_ddp)
    assert final["global_step"] == whole["global_step"] == 15
    for key, value in whole["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), f"{key} differs from the uninterrupted run"
