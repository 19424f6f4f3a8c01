"""The Trainer a config asks for: hardware and precision, the callbacks by role, the logger and the checkpoint IO."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, Timer
from pytorch_lightning.callbacks.weight_averaging import WeightAveraging
from pytorch_lightning.plugins.precision import MixedPrecision
from torch.optim.swa_utils import get_ema_multi_avg_fn

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.hardware.plan import HardwarePlan
from cifar_lit.hardware.timing import cudnn_autotune
from cifar_lit.phases import PhaseClock, PhaseTimer
from cifar_lit.reliability.checkpoint_callbacks import FinalCheckpoint, PhasedCheckpoint, StepCheckpoint
from cifar_lit.reliability.checkpoints import CHECKPOINT_FOLDER, LAST_NAME, AtomicCheckpointIO, OrderedAsyncCheckpointIO
from cifar_lit.reliability.non_finite import NonFiniteLossGuard, SkippedSteps
from cifar_lit.reliability.signals import GracefulStop, SignalGuard
from cifar_lit.reporting.figures import ConfusionFigures
from cifar_lit.reporting.grids import PredictionGrids
from cifar_lit.reporting.history import EpochHistory
from cifar_lit.reporting.loggers import LoggerIds, build_loggers
from cifar_lit.reporting.model_summary import ModelSummaryFile
from cifar_lit.reporting.previews import AugmentationPreview
from cifar_lit.reporting.summary import RunSummary
from cifar_lit.run.config import ConfigRecord
from cifar_lit.run.log_cadence import LogEveryEpoch
from cifar_lit.run.options import Options, RunOptions
from cifar_lit.run.progress import LossProgressBar, TrainingForecast
from cifar_lit.run.stop_at_target import StopAtTarget, Target
from cifar_lit.training.compile_warmup import CompileWarmup


@dataclass(kw_only=True)
class RunCallbacks:
    """The run's callbacks, one field per role; None where this run does without one (fast-dev-run writes nothing,
    no progress bar, no EMA...). `before` and `after` are extra callbacks (tests and benchmarks add watchers) that
    run before and after the run's own."""

    phases: PhaseTimer
    timer: Timer
    stop: StopAtTarget
    guard: NonFiniteLossGuard
    cadence: LogEveryEpoch
    skipped: SkippedSteps = field(default_factory=SkippedSteps)
    progress: LossProgressBar | None = None
    forecast: TrainingForecast = field(default_factory=TrainingForecast)
    ema: WeightAveraging | None = None
    record: ConfigRecord | None = None
    lr: LearningRateMonitor | None = None
    history: EpochHistory | None = None
    grids: PredictionGrids | None = None
    figures: ConfusionFigures | None = None
    best: PhasedCheckpoint | None = None
    last: PhasedCheckpoint | FinalCheckpoint | None = None
    last_steps: StepCheckpoint | None = None
    graceful: GracefulStop | None = None
    summary: RunSummary | None = None
    model_summary: ModelSummaryFile | None = None
    logger_ids: LoggerIds | None = None
    preview: AugmentationPreview | None = None
    warmup: CompileWarmup = field(default_factory=CompileWarmup)  # last: it compiles once the others have started
    before: list[Callback] = field(default_factory=list)
    after: list[Callback] = field(default_factory=list)

    def as_list(self) -> list[Callback]:
        """In the order Lightning calls them (it moves checkpoint callbacks to the end itself)."""
        own = [getattr(self, role.name) for role in fields(self) if role.name not in ("before", "after")]
        return [*self.before, *(callback for callback in own if callback is not None), *self.after]


def build_callbacks(options: Options, *, run_dir: Path | None, datamodule: ImageDataModule, command: str,
                    commit: str | None, clock: PhaseClock, signals: SignalGuard, hardware: HardwarePlan,
                    target: Target) -> RunCallbacks:
    """The run's callbacks by role.

    `run_dir` is None when the run folder is only known once Lightning has set up the processes (torchrun, SLURM):
    the folder-writing callbacks then find it in `setup`.
    """
    run = options.run
    timer = Timer(duration=None, verbose=False)
    guard = NonFiniteLossGuard(checkpoint_every_n_steps=run.ckpt_every_n_steps)
    callbacks = RunCallbacks(phases=PhaseTimer(clock), timer=timer, stop=StopAtTarget(target.value, timer),
                             guard=guard, cadence=LogEveryEpoch())
    if run.progress_bar:
        # Every step where steps take seconds (a CPU, a Mac); every 10th on a CUDA GPU, where a step takes
        # milliseconds and redrawing the bar would cost more than the step.
        callbacks.progress = LossProgressBar(refresh_rate=10 if hardware.accelerator == "cuda" else 1)
    if run.ema_decay:
        callbacks.ema = WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(run.ema_decay))
    if run.fast_dev_run:
        return callbacks
    checkpoint_dir = run_dir / CHECKPOINT_FOLDER if run_dir is not None else None  # None: Lightning's, the same
    callbacks.record = ConfigRecord(options.record(), run_dir)
    callbacks.lr = LearningRateMonitor(logging_interval="step")
    callbacks.history = EpochHistory(run_dir, curves=run.figures)
    if run.figures:
        callbacks.grids = PredictionGrids(datamodule.class_names, max_images=run.grid_images,
                                          every_n_epochs=run.grid_every_n_epochs, run_dir=run_dir,
                                          gradcam_layer=run.gradcam_layer)
        callbacks.figures = ConfusionFigures(datamodule.class_names, run.grid_every_n_epochs, run_dir)
        callbacks.preview = AugmentationPreview()
    callbacks.best = PhasedCheckpoint(
        dirpath=checkpoint_dir, filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
        monitor="val/acc", mode="max", save_top_k=1, save_weights_only=run.best_weights_only,
    )
    # last.ckpt after every N epochs. Not ModelCheckpoint(save_last=True): since Lightning 2.6 that refreshes
    # last.ckpt only in epochs that also saved a new best, so it would lag behind after a worse epoch.
    latest = dict(dirpath=checkpoint_dir, filename=LAST_NAME.removesuffix(".ckpt"), monitor=None, save_top_k=1,
                  enable_version_counter=False)
    if run.ckpt_every_n_epochs:
        callbacks.last = PhasedCheckpoint(**latest, every_n_epochs=run.ckpt_every_n_epochs)
    else:
        callbacks.last = FinalCheckpoint(guard.check, run_dir)
    if run.ckpt_every_n_steps:
        callbacks.last_steps = StepCheckpoint(**latest, every_n_train_steps=run.ckpt_every_n_steps)
    callbacks.graceful = GracefulStop(guard, run_dir, signals)
    callbacks.model_summary = ModelSummaryFile(run_dir)
    callbacks.logger_ids = LoggerIds(run_dir)
    callbacks.summary = RunSummary(
        config=options.record(), command=command, commit=commit, clock=clock, timer=timer, stop=callbacks.stop,
        best=callbacks.best, history=callbacks.history, warmup=callbacks.warmup, skipped=callbacks.skipped,
        hardware=hardware, target=(target.value, target.source), class_names=datamodule.class_names, run_dir=run_dir)
    return callbacks


def loss_scaler(device_type: str) -> torch.amp.GradScaler:
    """The GradScaler of a 16-mixed run (torch's defaults: initial scale 2**16, halved on a skipped step)."""
    return torch.amp.GradScaler(device_type)


def precision_settings(hardware: HardwarePlan) -> tuple[str | None, list[Any]]:
    """(Trainer's `precision`, precision plugins) for the plan's precision."""
    if hardware.precision == "16-mixed":
        # Lightning's own 16-mixed is refused on the CPU (it swaps in bf16); built here, the fp16 path with loss
        # scaling is the same on every device, and the tests run it on the CPU.
        return None, [MixedPrecision("16-mixed", hardware.accelerator, scaler=loss_scaler(hardware.accelerator))]
    return hardware.precision, []


def build_trainer(run: RunOptions, hardware: HardwarePlan, callbacks: RunCallbacks, run_dir: Path | None
                  ) -> pl.Trainer:
    logger: Any = False
    if not run.fast_dev_run:
        logger = build_loggers(run.logger, logdir=Path(run.logdir), run_dir=run_dir, mlflow_uri=run.mlflow_uri)
    precision, plugins = precision_settings(hardware)
    plugins.append(OrderedAsyncCheckpointIO(AtomicCheckpointIO()))
    return pl.Trainer(
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=run.num_nodes,
        strategy=run.strategy,
        precision=precision,
        max_epochs=run.max_epochs,
        limit_train_batches=run.limit_train_batches,
        logger=logger,
        callbacks=callbacks.as_list(),
        deterministic=run.deterministic,
        benchmark=cudnn_autotune(run.deterministic),
        log_every_n_steps=run.log_every_n_steps,
        enable_progress_bar=run.progress_bar,
        enable_checkpointing=not run.fast_dev_run,
        sync_batchnorm=run.sync_batchnorm,
        use_distributed_sampler=False,  # the DataModule shards every split itself, without padding
        # Validation inside fit runs under no_grad; the test must too, or compiled code would be compiled again
        # for inference tensors.
        inference_mode=False,
        num_sanity_val_steps=run.sanity_val_steps,
        fast_dev_run=run.fast_dev_run,
        plugins=plugins,
        default_root_dir=run.logdir,
        **run.trainer,  # --trainer.NAME: none is one the run sets (run/options.py: TRAINER_OWNED, TRAINER_BUILT)
    )
