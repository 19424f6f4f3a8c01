"""The loggers a run writes to (`--logger tensorboard csv mlflow wandb`), and where its figures go in each.

TensorBoard is the default. CSV writes Lightning's metrics.csv into `<run>/csv/`. MLflow writes to a tracking store:
by default an SQLite file beside the runs (`<logdir>/mlflow.db`, artifacts in `<logdir>/mlflow-artifacts`; view it
with `mlflow ui --backend-store-uri sqlite:///<logdir>/mlflow.db`), or the server of `--mlflow-uri` or
MLFLOW_TRACKING_URI. Weights & Biases runs offline, its files in the run folder (`wandb sync` later), unless the user
is logged in (WANDB_API_KEY or `wandb login`); WANDB_MODE decides when set. A resumed run continues the MLflow and
W&B runs it started: their ids are kept in `<run>/loggers.json`.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from cifar_lit.reliability.errors import ConfigError
from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reliability.run_folder import RunFolderCallback
from cifar_lit.reliability.secrets import is_masked

LoggerName = Literal["tensorboard", "csv", "mlflow", "wandb"]
EXTRAS = {"mlflow": ("mlflow", "MLflow"), "wandb": ("wandb", "Weights & Biases")}  # name -> (module, what)
PROJECT = "cifar_lit"  # the MLflow experiment and the W&B project
IDS_FILE = "loggers.json"
ImageSink = Callable[[str, np.ndarray, int], None]  # (tag, HWC uint8 pixels, step)


def check_loggers(names: Sequence[str]) -> None:
    """Each logger asked for can be built here: its extra is installed, or one error naming the install command."""
    for name in names:
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name][0]) is None:
            raise ConfigError(f"--logger {name} needs {EXTRAS[name][1]}, which is not installed here. Install it "
                              f"with: pip install -e \".[{name}]\"")


def default_mlflow_uri(logdir: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else an SQLite store beside the runs."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(logdir / 'mlflow.db').absolute()}"


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def saved_ids(run_dir: Path | None) -> dict[str, str]:
    """The MLflow and W&B run ids of an earlier process of this run (a resume), by logger."""
    try:
        return json.loads((run_dir / IDS_FILE).read_text()) if run_dir is not None else {}
    except (OSError, ValueError):
        return {}


def build_loggers(names: Sequence[str], *, logdir: Path, run_dir: Path | None, mlflow_uri: str | None) -> list[Logger]:
    """The run's loggers, in the order asked; `run_dir` None: Lightning's own version folder (torchrun, SLURM)."""
    save_dir = run_dir.parent if run_dir is not None else logdir
    version = run_dir.name if run_dir is not None else None
    ids = saved_ids(run_dir)
    loggers: list[Logger] = []
    for name in names:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=str(save_dir), name="", version=version,
                                             default_hp_metric=False))
        elif name == "csv":
            loggers.append(CSVLogger(save_dir=str(run_dir or logdir), name="csv", version=""))
        elif name == "mlflow":
            loggers.append(MLFlowLogger(experiment_name=PROJECT, run_name=version,
                                        tracking_uri=(None if is_masked(mlflow_uri) else mlflow_uri)
                                        or default_mlflow_uri(logdir),
                                        artifact_location=str((logdir / "mlflow-artifacts").absolute()),
                                        run_id=ids.get("mlflow")))
        elif name == "wandb":
            mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
            loggers.append(WandbLogger(project=PROJECT, name=version, save_dir=str(run_dir or logdir),
                                       id=ids.get("wandb"), resume="allow", mode=mode))
    return loggers


class LoggerIds(RunFolderCallback):
    """Keeps the MLflow and W&B run ids in `<run>/loggers.json` when fitting starts, so a resume continues them."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.run_dir is None:
            return
        ids = {}
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                ids["mlflow"] = logger.run_id
            elif isinstance(logger, WandbLogger):
                ids["wandb"] = logger.experiment.id
        if ids:
            write_text_atomic(self.run_dir / IDS_FILE, json.dumps(ids) + "\n")


def image_sinks(trainer: pl.Trainer) -> list[ImageSink]:
    """Where a figure goes besides its PNG file: every logger of the run that takes images (the CSV logger takes
    none)."""
    sinks: list[ImageSink] = []
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            sinks.append(lambda tag, pixels, step, writer=logger.experiment: writer.add_image(
                tag, pixels, step, dataformats="HWC"))
        elif isinstance(logger, MLFlowLogger):
            sinks.append(lambda tag, pixels, step, mlflow=logger: mlflow.experiment.log_image(
                mlflow.run_id, pixels, artifact_file=f"figures/{tag}/step_{step:06d}.png"))
        elif isinstance(logger, WandbLogger):
            sinks.append(lambda tag, pixels, step, wandb=logger: wandb.log_image(key=tag, images=[pixels], step=step))
    return sinks


def close_loggers(trainer: pl.Trainer, finished: bool) -> None:
    """End the W&B run of a fit that is over, so its files are complete and the next run in this process (a
    notebook, a sweep's trial) starts its own; Lightning leaves it open until the process exits."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish(exit_code=0 if finished else 1)


def log_results(trainer: pl.Trainer, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """The run's final results beside its configuration, in every logger: TensorBoard's HPARAMS view, MLflow's and
    W&B's summary metrics."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics)
        elif isinstance(logger, (MLFlowLogger, WandbLogger)):
            logger.log_metrics(metrics)
        logger.finalize("success")
