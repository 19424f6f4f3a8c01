"""The run folder (`<logdir>/version_N`): which one a run writes into, checked to be writable before anything is
written there, removed when a failed start left it empty, and known to every callback that writes into it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from cifar_lit.reliability.checkpoints import CHECKPOINT_FOLDER
from cifar_lit.reliability.errors import ConfigError
from cifar_lit.reliability.files import process_alive
from cifar_lit.reliability.secrets import mask_secrets

log = logging.getLogger("cifar_lit")
RUN_DIR_ENV = "CIFAR_LIT_RUN_DIR"  # inherited by DDP worker processes that Lightning starts, so all share one folder


def next_free_version(logdir: Path, prefix: str = "version_") -> Path:
    """The first <prefix>N folder (version_N) after the existing ones (not created)."""
    taken = [int(p.name[len(prefix):]) for p in logdir.glob(f"{prefix}*") if p.name[len(prefix):].isdigit()]
    return logdir / f"{prefix}{max(taken, default=-1) + 1}"


def next_version_dir(logdir: Path, prefix: str = "version_") -> Path:
    """The first free <prefix>N folder, created now so no other run takes it."""
    logdir.mkdir(parents=True, exist_ok=True)
    number = int(next_free_version(logdir, prefix).name[len(prefix):])
    while True:
        candidate = logdir / f"{prefix}{number}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def write_probe(folder: Path) -> None:
    """Create `folder` if needed and write (then remove) a small file in it."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test-{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()


def check_writable(folder: Path, what: str = "the log folder", flag: str = "--logdir",
                   fix: str | None = None) -> None:
    """Write a file in `folder` (created if needed), or raise a ConfigError naming it and the fix."""
    try:
        write_probe(folder)
    except OSError as error:
        fix = fix or f"Choose a writable folder with {flag}, or fix its permissions / free some disk space."
        raise ConfigError(f"Cannot write to {what} {folder} ({error.strerror or error}). {fix}") from None


def launched_as_several_processes() -> bool:
    """torchrun or SLURM started every rank already: no rank may pick a run folder alone."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def launched_rank() -> int:
    """This process's global rank where torchrun or SLURM started every rank; 0 for a process started alone (and
    for Lightning's own launcher, which starts the other ranks itself)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def choose_run_dir(fast_dev_run: bool, logdir: str | Path, resumed_run_dir: Path | None,
                   name: str | None = None) -> tuple[Path | None, bool]:
    """(run folder, whether it was created now): `name` under `logdir` when given (a sweep's trial_NNN), else the
    next version_N. None when nothing is written (fast-dev-run) or when the folder is only known once Lightning has
    set up the processes (torchrun, SLURM: rank zero chooses it then)."""
    if fast_dev_run:
        return None, False
    check_writable(Path(logdir))
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV]), False
    if resumed_run_dir is not None:
        check_writable(resumed_run_dir / CHECKPOINT_FOLDER, "the resumed run's folder", fix=(
            "A resume writes its checkpoints, logs and summary there: make it writable again (or copy the run "
            "folder somewhere writable and resume from the copy's checkpoints/last.ckpt)."))
        return resumed_run_dir, False
    if launched_as_several_processes():
        return None, False
    if name is not None:
        folder = Path(logdir) / name
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            raise ConfigError(f"The run folder {folder} exists already (--run-name {name}). Give another name, or "
                              "resume that run with --resume.") from None
        return folder, True
    return next_version_dir(Path(logdir)), True


def remove_if_unused(run_dir: Path | None, created: bool) -> None:
    """Delete a run folder this process created when it holds no checkpoint (the run failed before training)."""
    if created and run_dir is not None and not any((run_dir / CHECKPOINT_FOLDER).glob("*.ckpt")):
        shutil.rmtree(run_dir, ignore_errors=True)


class RunFolderCallback(Callback):
    """Knows the run folder (lightning_logs/version_N). Given up front in a single process; otherwise (torchrun,
    SLURM) fixed in `setup`, which every rank runs: finding it, `trainer.log_dir`, is a collective call there, so it
    must never happen later on rank zero alone."""

    def __init__(self, run_dir: Path | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.run_dir is None and trainer.log_dir:
            self.run_dir = Path(trainer.log_dir)


LOCK_NAME = ".owner.lock"


def process_start_time(pid: int) -> str | None:
    """When process `pid` started, as the kernel counts it (Linux: /proc/<pid>/stat), to tell a live owner from a
    new process that got its pid; None where the system does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name in parentheses


class RunFolderBusy(ConfigError):
    """Another trainer owns the run folder."""


class RunFolderLock:
    """One trainer per run folder: `<run>/.owner.lock`, created with O_CREAT | O_EXCL (atomic on local disks and on
    NFS v3 and later) and holding the owner's pid, host, start time and command.

    A second trainer meets it with a RunFolderBusy naming the owner. A lock whose owner is gone (killed with
    SIGKILL, a crash) is stale: on the same host that is told by the pid (and its start time, where the kernel says),
    and the lock is taken over with a warning. A lock from another host is never taken over: that process cannot be
    seen from here, so the message says how to remove the lock by hand once that run is known to be gone.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def is_stale(self, owner: dict[str, Any] | None) -> bool:
        if owner is None:  # unreadable: a writer killed between creating and filling it, or not ours
            return True
        if owner.get("host") != socket.gethostname():
            return False
        pid = owner.get("pid")
        if not isinstance(pid, int) or not process_alive(pid):
            return True
        started = owner.get("started_ticks")
        return started is not None and process_start_time(pid) not in (None, started)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is None:
                    time.sleep(0.2)  # perhaps being written right now
                    owner = self.owner()
                if not self.is_stale(owner):
                    raise RunFolderBusy(busy_message(self.path, owner)) from None
                log.warning("%s was left by a trainer that no longer runs (%s); this run takes it over.", self.path,
                            describe_owner(owner))
                self.path.unlink(missing_ok=True)
                continue
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started_ticks": process_start_time(
                os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": mask_secrets(" ".join(sys.argv))}
            with os.fdopen(descriptor, "w") as handle:
                handle.write(json.dumps(record))
                handle.flush()
                os.fsync(handle.fileno())
            self.held = True
            return
        raise RunFolderBusy(busy_message(self.path, self.owner()))

    def release(self) -> None:
        if self.held:
            owner = self.owner()
            if owner is None or owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False


def describe_owner(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "an unreadable lock"
    return f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('since')}: {owner.get('command')}"


def busy_message(path: Path, owner: dict[str, Any] | None) -> str:
    here = owner is not None and owner.get("host") == socket.gethostname()
    stop = (f"Wait for it to finish, or stop it with kill -TERM {owner.get('pid')} (it saves last.ckpt first) and "
            "resume then." if here else "Wait for it to finish, or stop it on its host, and resume then.")
    return (f"The run folder {path.parent} is in use by another trainer ({describe_owner(owner)}). Two trainers in "
            f"one run folder would overwrite each other's checkpoints and logs. {stop} If that process is known to "
            f"be gone{'' if here else ' (it ran on another host, which cannot be checked from here)'}, delete {path}.")


@contextmanager
def holding(run_dir: Path | None, created: bool) -> Iterator[None]:
    """This process's hold on its run folder while it trains: the folder's lock, unless it is a DDP worker that
    Lightning's launcher started (the launcher made the folder and holds it: RUN_DIR_ENV names it), and RUN_DIR_ENV
    naming the folder for the workers Lightning starts. Both as they were afterwards. Where torchrun or SLURM started
    every rank (a resume names the folder to each), rank zero holds it for all: each rank's own lock would find
    rank zero's, and that rank would refuse to train while the others wait for it."""
    mine = created or not os.environ.get(RUN_DIR_ENV)
    owner = RunFolderLock(run_dir) if run_dir is not None and mine and launched_rank() == 0 else None
    previous = os.environ.get(RUN_DIR_ENV)
    try:
        if owner is not None:
            owner.acquire()
        if run_dir is not None:
            os.environ[RUN_DIR_ENV] = str(run_dir)
        yield
    finally:
        if owner is not None:
            owner.release()
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
