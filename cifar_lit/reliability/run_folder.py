"""The run folder (`<logdir>/version_N`): which one a run writes into, checked to be writable before anything is
written there, removed when a failed start left it empty, and known to every callback that writes into it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from cifar_lit.reliability.checkpoints import CHECKPOINT_FOLDER
from cifar_lit.reliability.errors import ConfigError

RUN_DIR_ENV = "CIFAR_LIT_RUN_DIR"  # inherited by DDP worker processes that Lightning starts, so all share one folder


def next_free_version(logdir: Path) -> Path:
    """The first version_N folder after the existing ones (not created)."""
    taken = [int(p.name.split("_")[1]) for p in logdir.glob("version_*") if p.name.split("_")[1].isdigit()]
    return logdir / f"version_{max(taken, default=-1) + 1}"


def next_version_dir(logdir: Path) -> Path:
    """The first free version_N folder, created now so no other run takes it."""
    logdir.mkdir(parents=True, exist_ok=True)
    candidate = next_free_version(logdir)
    number = int(candidate.name.split("_")[1])
    while True:
        candidate = logdir / f"version_{number}"
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


def choose_run_dir(config: dict[str, Any], resumed_run_dir: Path | None) -> tuple[Path | None, bool]:
    """(run folder, whether it was created now). None when nothing is written (fast-dev-run) or when the folder is
    only known once Lightning has set up the processes (torchrun, SLURM: rank zero chooses it then)."""
    if config["fast_dev_run"]:
        return None, False
    check_writable(Path(config["logdir"]))
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV]), False
    if resumed_run_dir is not None:
        check_writable(resumed_run_dir / CHECKPOINT_FOLDER, "the resumed run's folder", fix=(
            "A resume writes its checkpoints, logs and summary there: make it writable again (or copy the run "
            "folder somewhere writable and resume from the copy's checkpoints/last.ckpt)."))
        return resumed_run_dir, False
    if launched_as_several_processes():
        return None, False
    return next_version_dir(Path(config["logdir"])), True


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
