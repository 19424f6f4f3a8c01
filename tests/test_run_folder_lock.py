"""One trainer per run folder: a second one (a resume of a live run) is refused naming the owner; the lock of an
owner killed with SIGKILL is taken over; locks from another host are never taken over."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from helpers import start_training, wait_for

from cifar_lit.reliability.run_folder import (
    LOCK_NAME,
    RUN_DIR_ENV,
    RunFolderBusy,
    RunFolderLock,
    holding,
    process_start_time,
)
from cifar_lit.run.train import main


@pytest.mark.slow
def test_a_live_run_refuses_a_second_trainer_and_a_killed_ones_lock_is_taken_over(noisy_flags, tmp_path, capsys,
                                                                                  caplog):
    logdir = tmp_path / "logs"
    process = start_training([*noisy_flags, "--target-acc", "1.0", "--max-epochs", "60"])
    pid = process.pid
    try:
        wait_for(logdir, "version_*/checkpoints/last.ckpt", process)
        (run_dir,) = logdir.glob("version_*")
        last = run_dir / "checkpoints" / "last.ckpt"
        lock = json.loads((run_dir / LOCK_NAME).read_text())
        assert lock["pid"] == pid and lock["host"] == socket.gethostname()
        for resume in (str(last), "last"):
            assert main(["--resume", resume, "--logdir", str(logdir)]) == 2
            err = capsys.readouterr().err
            assert f"The run folder {run_dir} is in use by another trainer (pid {pid}" in err
            assert f"kill -TERM {pid}" in err and "Traceback" not in err
        assert sorted(logdir.glob("version_*")) == [run_dir] and json.loads((run_dir / LOCK_NAME).read_text()) == lock
    finally:
        process.kill()
        process.wait()
    assert (run_dir / LOCK_NAME).exists(), "SIGKILL leaves the lock behind"
    epochs = torch.load(last, weights_only=True)["epoch"]
    with caplog.at_level("WARNING"):
        assert main(["--resume", str(last), "--max-epochs", str(epochs + 2)]) == 0
    assert "was left by a trainer that no longer runs" in caplog.text and f"pid {pid}" in caplog.text
    assert not (run_dir / LOCK_NAME).exists(), "released when the run ends"


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "node-17.cluster", "since": "2026-12-01 10:00:00",
                                                  "command": "train.py --gpus 8"}))
    with pytest.raises(RunFolderBusy, match=r"pid 1 on node-17.cluster.*another host.*delete .*\.owner\.lock"):
        RunFolderLock(tmp_path).acquire()


def test_a_dead_or_reused_pid_on_this_host_is_stale(tmp_path):
    lock = RunFolderLock(tmp_path)
    gone = {"pid": 2**22 + 12345, "host": socket.gethostname()}
    assert lock.is_stale(gone)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started_ticks": process_start_time(os.getpid())}
    assert not lock.is_stale(mine)
    if mine["started_ticks"] is not None:  # Linux: a live pid that started at another time is another process
        assert lock.is_stale({**mine, "started_ticks": "1"})


def test_the_lock_is_exclusive_and_released_only_by_its_owner(tmp_path):
    first = RunFolderLock(tmp_path)
    first.acquire()
    with pytest.raises(RunFolderBusy, match=f"pid {os.getpid()}"):
        RunFolderLock(tmp_path).acquire()  # the same process twice: not stale, still refused
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    second = RunFolderLock(tmp_path)
    second.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    second.release()


@pytest.mark.parametrize("launcher", [{"WORLD_SIZE": "2", "RANK": "1"}, {"SLURM_NTASKS": "2", "SLURM_PROCID": "1"}],
                         ids=["torchrun", "slurm"])
def test_under_torchrun_or_slurm_only_rank_zero_holds_the_resumed_run_folder(tmp_path, monkeypatch, launcher):
    """Every rank of a resumed torchrun job is given the run folder: the other ranks meet rank zero's lock, alive,
    and must train beside it, not refuse (they did: the job then waited on them until torchrun killed it)."""
    for name in ("RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    with holding(tmp_path, created=False):  # rank zero's
        lock = json.loads((tmp_path / LOCK_NAME).read_text())
        for name, value in launcher.items():
            monkeypatch.setenv(name, value)
        del os.environ[RUN_DIR_ENV]  # another process: not Lightning's child (holding() puts it back as it was)
        with holding(tmp_path, created=False):  # rank one's: no lock of its own, and rank zero's untouched
            assert json.loads((tmp_path / LOCK_NAME).read_text()) == lock
        assert json.loads((tmp_path / LOCK_NAME).read_text()) == lock
    assert RUN_DIR_ENV not in os.environ, "later runs in this process would take the folder for theirs"
