"""Faults: interrupted and resumed runs, kills, signals, non-finite losses, unsafe checkpoints, failing disks."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import textwrap
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import TINY_FLAGS, built_once, python, start_training, wait_for, wait_until, with_extra_callback

from cifar_lit.reliability import checkpoints
from cifar_lit.reporting.evaluate import main as evaluate
from cifar_lit.reporting.history import read_history_csv
from cifar_lit.run import train as run
from cifar_lit.run.train import main
from cifar_lit.training.module import CIFARClassifier

ROOT = Path(__file__).resolve().parent.parent
METRIC_COLUMNS = ("epoch", "step", "train_acc", "train_loss", "val_acc", "val_loss")
EXACT = ["--deterministic", "--schedule", "onecycle", "--warmup-fraction", "0.3", "--target-acc", "1.0",
         "--max-epochs", "3"]


def only_run(logdir: Path) -> Path:
    (run_dir,) = sorted(logdir.glob("version_*"))
    return run_dir


def metric_rows(run_dir: Path) -> list[tuple[str, ...]]:
    import csv

    with open(run_dir / "metrics.csv") as handle:
        return [tuple(row[c] for c in METRIC_COLUMNS) for row in csv.DictReader(handle)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SignalAtStep(pl.Callback):
    """Sends this process `signum` right after training step `step`, as a kill from outside would."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


# ------------------------------------------------------------------------------------------------- exact resume


def assert_same_run(expected_dir: Path, resumed_dir: Path) -> None:
    """Same weights, optimizer state, LR schedule and per-epoch metrics, to the bit."""
    expected = torch.load(expected_dir / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == expected["global_step"] == 30
    assert expected["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    momentum = [[state["momentum_buffer"] for state in ckpt["optimizer_states"][0]["state"].values()]
                for ckpt in (expected, resumed)]
    assert all(torch.equal(a, b) for a, b in zip(*momentum, strict=True)) and len(momentum[0]) == len(momentum[1]) > 0
    assert expected["lr_schedulers"] == resumed["lr_schedulers"]
    assert metric_rows(expected_dir) == metric_rows(resumed_dir)


@pytest.fixture(scope="module")
def uninterrupted(noisy_folder_master, tmp_path_factory) -> Path:
    """The uninterrupted run the interrupted ones must match, trained once for this file."""
    def train_whole(root: Path) -> None:
        folder = shutil.copytree(noisy_folder_master, root / "noisy")
        assert main([*TINY_FLAGS, "--data-dir", str(folder), *EXACT, "--logdir", str(root / "whole")]) == 0

    return only_run(built_once(tmp_path_factory, "faults_uninterrupted", train_whole) / "whole")


@pytest.mark.slow
@pytest.mark.parametrize("signal_step, stop_step", [(13, 13), (10, 11)], ids=["mid-epoch", "on-an-epochs-last-step"])
def test_run_stopped_by_a_signal_and_resumed_is_bit_identical(noisy_flags, tmp_path, monkeypatch, uninterrupted,
                                                             signal_step, stop_step):
    logdir = tmp_path / "logs"
    with monkeypatch.context() as patch:
        with_extra_callback(patch, SignalAtStep(signal_step))
        assert main([*noisy_flags, *EXACT, "--logdir", str(logdir)]) == 128 + signal.SIGTERM
    interrupted = torch.load(only_run(logdir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert interrupted["global_step"] == stop_step
    assert main(["--resume", "last", "--logdir", str(logdir)]) == 0
    assert_same_run(uninterrupted, only_run(logdir))


@pytest.mark.slow
def test_run_killed_between_epochs_and_resumed_is_bit_identical(noisy_flags, tmp_path, uninterrupted):
    logdir = tmp_path / "logs"
    process = start_training([*noisy_flags, *EXACT, "--logdir", str(logdir)])
    last = logdir / "version_0" / "checkpoints" / "last.ckpt"
    wait_for(logdir, "version_0/checkpoints/last.ckpt", process)
    process.kill()
    process.wait()
    assert checkpoints.load_checkpoint(last)["global_step"] == 10
    assert main(["--resume", "last", "--logdir", str(logdir)]) == 0
    assert_same_run(uninterrupted, only_run(logdir))


@pytest.mark.slow
def test_step_checkpoints_resume_exactly_and_skip_an_epochs_last_step(noisy_flags, tmp_path, monkeypatch,
                                                                     uninterrupted):
    logdir = tmp_path / "logs"
    saved_steps = []
    real_save = checkpoints.AtomicCheckpointIO.save_checkpoint

    def record(self, checkpoint, path, storage_options=None):
        saved_steps.append((Path(path).name, checkpoint["global_step"]))
        return real_save(self, checkpoint, path, storage_options)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints.AtomicCheckpointIO, "save_checkpoint", record)
        with_extra_callback(patch, SignalAtStep(17))
        code = main([*noisy_flags, *EXACT, "--logdir", str(logdir), "--ckpt-every-n-steps", "5"])
    assert code == 128 + signal.SIGTERM
    last_saves = [step for name, step in saved_steps if name == "last.ckpt"]
    assert last_saves == [5, 10, 15, 17]  # step 10 is the epoch-end save after validation, not the step save
    assert main(["--resume", "last", "--logdir", str(logdir)]) == 0
    assert_same_run(uninterrupted, only_run(logdir))


# ------------------------------------------------------------------------------------------------ kills, signals


@pytest.mark.slow
def test_kill_9_at_random_moments_always_leaves_a_loadable_last_checkpoint(noisy_flags, tmp_path):
    logdir = tmp_path / "logs"
    args = [*noisy_flags, "--target-acc", "1.0", "--max-epochs", "4", "--ckpt-every-n-steps", "1"]
    rng = random.Random(1234)
    steps = []

    def saved() -> list[int]:
        return [path.stat().st_mtime_ns for path in logdir.glob("version_*/checkpoints/last.ckpt")]

    for _ in range(2):  # a fresh run, then a resumed one: each start costs seconds of imports
        written = saved()
        process = start_training([*args, *(["--resume", "last"] if written else [])])
        # Once this process has saved a step (a checkpoint a step, about 0.1 s each), at a random moment of the next
        # half second: mostly in the middle of a step or of a checkpoint's write.
        wait_until(lambda before=written: saved() != before, process)
        time.sleep(rng.uniform(0, 0.5))
        assert process.poll() is None, "the run ended before the kill: give it more epochs"
        process.kill()
        process.wait()
        state = checkpoints.load_checkpoint(only_run(logdir) / "checkpoints" / "last.ckpt")  # never a torn file
        steps.append(state["global_step"])
    assert 0 < steps[0] < steps[1] < 40, "the resumed run went on from the last and was killed"
    assert main(["--resume", "last", "--logdir", str(logdir)]) == 0
    summary = json.loads((only_run(logdir) / "summary.json").read_text())
    assert summary["epochs_run"] == 4 and summary["global_steps"] == 40


KILLED_DURING_WRITE = textwrap.dedent("""
    import os, sys, time, torch
    from pathlib import Path
    from cifar_lit.reliability.checkpoints import AtomicCheckpointIO
    target = Path(sys.argv[1])
    io = AtomicCheckpointIO()
    io.save_checkpoint({"version": 1, "weights": torch.ones(1000)}, target)
    real_save = torch.save
    def slow_save(obj, handle):
        handle.write(b"PK half a checkpoint")
        handle.flush()
        Path(sys.argv[2]).touch()
        time.sleep(60)
    torch.save = slow_save
    io.save_checkpoint({"version": 2, "weights": torch.zeros(1000)}, target)
""")


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_keeps_the_previous_file(tmp_path):
    target, writing = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "writing"
    process = python(["-c", KILLED_DURING_WRITE, str(target), str(writing)], cwd=ROOT)
    wait_until(writing.exists, process, timeout=120)
    process.kill()
    process.wait()
    assert checkpoints.load_checkpoint(target)["version"] == 1
    stale = list(target.parent.glob(".last.ckpt.*.tmp"))
    assert len(stale) == 1
    checkpoints.AtomicCheckpointIO().save_checkpoint({"version": 3}, target)
    assert checkpoints.load_checkpoint(target)["version"] == 3
    assert not stale[0].exists(), "the dead writer's temporary file is cleaned up"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT], ids=["Ctrl-C"])  # SIGTERM: tests/test_signals.py
def test_signal_saves_a_checkpoint_and_resume_continues(noisy_flags, tmp_path, signum):
    logdir = tmp_path / "my runs"  # a space: the printed command must still paste as it is
    process = start_training([*noisy_flags, "--target-acc", "1.0", "--max-epochs", "3", "--logdir", str(logdir)])
    wait_for(logdir, "version_*/metrics.csv", process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, err
    message = [line for line in err.splitlines() if line.startswith("Stopped by signal")]
    last = only_run(logdir) / "checkpoints" / "last.ckpt"
    assert len(message) == 1 and message[0].endswith(f"Resume with: python train.py --resume '{last}'")
    assert "weights_only" not in err
    stopped = checkpoints.load_checkpoint(last)
    assert 10 <= stopped["global_step"] < 30
    python, script, *argv = shlex.split(message[0].split("Resume with: ")[1])
    assert (python, script, argv) == ("python", "train.py", ["--resume", str(last)])
    assert main(argv) == 0
    summary = json.loads((only_run(logdir) / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["global_steps"] == 30
    # the epoch cut by the signal reports the time of both processes, not the gap between them (or the uptime)
    epoch_seconds = [row["epoch_seconds"] for row in read_history_csv(only_run(logdir) / "metrics.csv")]
    assert len(epoch_seconds) == 3 and all(0 < seconds < summary["total_seconds"] for seconds in epoch_seconds)
    assert summary["total_seconds"] >= summary["train_seconds"]


# ------------------------------------------------------------------------------------------- targets on resume


@pytest.mark.slow
def test_raising_the_target_on_resume_trains_on_with_a_rebuilt_schedule(noisy_flags, tmp_path, caplog):
    logdir = tmp_path / "logs"
    assert main([*noisy_flags, "--target-acc", "0.3", "--max-epochs", "4", "--schedule", "linear"]) == 0
    first = json.loads((only_run(logdir) / "summary.json").read_text())
    assert first["target_reached"] and first["epochs_run"] < 4
    more = 5
    assert main(["--resume", "last", "--logdir", str(logdir), "--target-acc", "1.0", "--max-epochs", str(more)]) == 0
    second = json.loads((only_run(logdir) / "summary.json").read_text())
    assert second["epochs_run"] == more and second["config"]["target_acc"] == 1.0
    assert second["global_steps"] == 10 * more
    assert f"The LR schedule is rebuilt over {10 * more} steps (the checkpoint's run planned 40)" in caplog.text


@pytest.mark.slow
def test_new_learning_rate_on_resume_is_reported_as_ignored(noisy_flags, tmp_path, caplog):
    logdir = tmp_path / "logs"
    assert main([*noisy_flags, "--target-acc", "1.0", "--max-epochs", "1"]) == 0
    assert main(["--resume", "last", "--logdir", str(logdir), "--max-epochs", "2", "--lr", "0.3"]) == 0
    assert "--lr is ignored when resuming: the optimizer state in the checkpoint keeps lr=0.005" in caplog.text


# ------------------------------------------------------------------------------------------- non-finite loss


@pytest.mark.slow
def test_non_finite_loss_stops_at_its_step_and_keeps_the_good_checkpoints(noisy_flags, tmp_path, monkeypatch,
                                                                           capsys):
    logdir = tmp_path / "logs"
    assert main([*noisy_flags, "--target-acc", "1.0", "--max-epochs", "1"]) == 0
    run_dir = only_run(logdir)
    before = {path.name: digest(path) for path in (run_dir / "checkpoints").iterdir()}
    original = CIFARClassifier.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step == 13 else loss

    monkeypatch.setattr(CIFARClassifier, "training_step", poisoned)
    capsys.readouterr()
    assert main(["--resume", "last", "--logdir", str(logdir), "--max-epochs", "3"]) == run.EXIT_NON_FINITE
    err = capsys.readouterr().err
    assert "became NaN or infinite at step 14 (epoch 2)" in err and str(run_dir / "checkpoints" / "last.ckpt") in err
    after = {path.name: digest(path) for path in (run_dir / "checkpoints").iterdir()}
    assert after == before


# ------------------------------------------------------------------------------------------------ checkpoints


def test_crafted_checkpoint_is_refused_and_its_payload_never_runs(noisy_flags, tmp_path, capsys):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": CIFARClassifier().state_dict(), "pytorch-lightning_version": "2.6.6",
                "extra": Payload()}, crafted)
    assert main([*noisy_flags, "--resume", str(crafted)]) == 2
    err = capsys.readouterr().err
    assert "Refusing to load" in err and "open" in err and "could run code" in err
    assert not marker.exists()


def test_unwritable_logdir_fails_at_start_up(noisy_flags, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main([*noisy_flags, "--logdir", str(blocker / "logs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot write to the log folder") and "--logdir" in err


@pytest.mark.slow
def test_fewer_checkpoints_last_once_at_the_end_and_a_weights_only_best(noisy_flags, tmp_path, monkeypatch, capsys):
    saved = []
    real_save = checkpoints.AtomicCheckpointIO.save_checkpoint

    def record(self, checkpoint, path, storage_options=None):
        saved.append((Path(path).name.split("-")[0], checkpoint["global_step"], "optimizer_states" in checkpoint))
        return real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(checkpoints.AtomicCheckpointIO, "save_checkpoint", record)
    assert main([*noisy_flags, "--width", "8", "--target-acc", "1.0", "--max-epochs", "3", "--ckpt-every-n-epochs",
                 "0", "--best-weights-only"]) == 0
    assert [(step, full) for name, step, full in saved if name == "last.ckpt"] == [(30, True)]
    assert {full for name, _, full in saved if name == "best"} == {False}
    run_dir = only_run(tmp_path / "logs")
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert evaluate(["--ckpt", str(best), "--gpus", "0", "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["test_acc"], abs=1e-6)
    capsys.readouterr()
    assert main(["--resume", str(best)]) == 2
    assert "holds the network's weights only" in capsys.readouterr().err


@pytest.mark.slow
def test_signal_on_the_last_step_stops_before_the_test_and_resume_only_tests(noisy_flags, tmp_path, monkeypatch,
                                                                              capsys):
    logdir = tmp_path / "logs"
    with_extra_callback(monkeypatch, SignalAtStep(20))
    assert main([*noisy_flags, "--width", "8", "--target-acc", "1.0", "--max-epochs", "2"]) == 128 + signal.SIGTERM
    run_dir = only_run(logdir)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"before the test; {last} holds the finished training (epoch 2, step 20)" in capsys.readouterr().err
    assert checkpoints.load_checkpoint(last)["global_step"] == 20 and not (run_dir / "summary.json").exists()
    monkeypatch.undo()
    assert main(["--resume", "last", "--logdir", str(logdir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["global_steps"] == 20 and summary["test_acc"] is not None
    assert len(summary["val_acc_per_epoch"]) == 2 and summary["best_val_acc"] == max(summary["val_acc_per_epoch"])
    assert main(["--resume", "last", "--logdir", str(logdir)]) == 0
    assert "Nothing to do" in capsys.readouterr().out, "a tested run is not tested again"
