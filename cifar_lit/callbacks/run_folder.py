"""Callbacks that write into the run folder, and the one that records the run's configuration there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import Callback

from cifar_lit.files import write_text_atomic


class RunFolderCallback(Callback):
    """Knows the run folder (lightning_logs/version_N). Given up front in a single process; otherwise (torchrun,
    SLURM) fixed in `setup`, which every rank runs: finding it, `trainer.log_dir`, is a collective call there, so it
    must never happen later on rank zero alone."""

    def __init__(self, run_dir: Path | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.run_dir is None and trainer.log_dir:
            self.run_dir = Path(trainer.log_dir)


class ConfigRecord(RunFolderCallback):
    """Writes the fully resolved configuration to <run>/config.yaml (rank zero); resuming reads it back."""

    def __init__(self, config: dict[str, Any], run_dir: Path | None = None) -> None:
        super().__init__(run_dir)
        self.config = config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
