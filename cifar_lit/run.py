"""train.py's work: check everything the user gave, train until the target, test the best checkpoint, record the run.

Every user mistake surfaces as a UserError before a run folder is created; `main` prints it as one paragraph and
exits with status 2. A run stopped by SIGTERM/Ctrl-C exits 128 + the signal number after saving last.ckpt, and a
non-finite loss exits 3 without writing any checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, Timer, TQDMProgressBar
from pytorch_lightning.callbacks.weight_averaging import WeightAveraging
from pytorch_lightning.loggers import TensorBoardLogger
from torch.optim.swa_utils import get_ema_multi_avg_fn

from cifar_lit.callbacks.figures import ConfusionFigures
from cifar_lit.callbacks.history import EpochHistory
from cifar_lit.callbacks.image_grids import PredictionGrids
from cifar_lit.callbacks.run_folder import ConfigRecord
from cifar_lit.callbacks.safety import (
    GracefulStop,
    NonFiniteLoss,
    NonFiniteLossGuard,
    StepCheckpoint,
    StopRequested,
)
from cifar_lit.callbacks.stop_at_target import REACHED_TOLERANCE, StopAtTarget
from cifar_lit.checkpoints import (
    CHECKPOINT_FOLDER,
    LAST_NAME,
    AtomicCheckpointIO,
    OrderedAsyncCheckpointIO,
    callback_state,
    check_compatible,
    find_last_checkpoint,
    load_checkpoint,
    run_dir_of,
)
from cifar_lit.config import class_kwargs, parse_config
from cifar_lit.data.datamodule import CIFAR10DataModule
from cifar_lit.errors import ConfigError, UserError
from cifar_lit.files import write_text_atomic
from cifar_lit.lightning_compat import epochs_completed, is_lightning_sigterm
from cifar_lit.models.resnet import RESNET18_WIDTH
from cifar_lit.module import CIFARClassifier
from cifar_lit.provenance import command_line, device_description, git_commit, versions

log = logging.getLogger("cifar_lit")
RUN_DIR_ENV = "CIFAR_LIT_RUN_DIR"  # inherited by DDP worker processes that Lightning starts, so all share one folder
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3


# ------------------------------------------------------------------------------------------------ hardware, folders


def resolve_hardware(config: dict[str, Any]) -> tuple[str, int | str, str]:
    """(accelerator, devices, precision) from --gpus or --accelerator/--devices, and --precision or its default."""
    accelerator, devices = config["accelerator"], config["devices"]
    gpus = config["gpus"]
    if gpus is not None:
        if gpus > 0 and torch.cuda.device_count() < gpus:
            raise ConfigError(
                f"--gpus {gpus} asks for {gpus} GPU(s), but PyTorch sees {torch.cuda.device_count()}. Use --gpus 0 "
                "to train on the CPU, or run where the GPUs are visible (check CUDA_VISIBLE_DEVICES)."
            )
        accelerator, devices = ("cpu", 1) if gpus == 0 else ("gpu", gpus)
    elif accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    on_gpu = accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    precision = config["precision"] or ("bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true")
    return accelerator, devices, precision


def next_version_dir(logdir: Path) -> Path:
    """The first free version_N folder, created now so no other run takes it."""
    logdir.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.split("_")[1]) for p in logdir.glob("version_*") if p.name.split("_")[1].isdigit()]
    number = max(taken, default=-1) + 1
    while True:
        candidate = logdir / f"version_{number}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"Cannot write to the log folder {folder} ({error.strerror or error}). Choose a writable folder with "
            "--logdir, or fix its permissions / free some disk space."
        ) from None


# ------------------------------------------------------------------------------------------------------- resume


OPTIMIZER_STATE_KEYS = ("lr", "lr_reference_batch_size", "momentum", "nesterov", "weight_decay",
                        "norm_bias_weight_decay", "norm_bias_lr_scale")


def ignored_on_resume(checkpoint: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Options whose new values resuming cannot apply: they live in the restored optimizer and scheduler state."""
    saved = checkpoint.get("hyper_parameters") or {}
    return [key for key in OPTIMIZER_STATE_KEYS if key in saved and saved[key] != config[key]]


def nothing_left_to_do(checkpoint: dict[str, Any], config: dict[str, Any], path: Path) -> str | None:
    """A message when resuming `checkpoint` would not train at all (target already reached, or no epochs left)."""
    stop = callback_state(checkpoint, StopAtTarget.__name__) or {}
    reached = stop.get("reached_value")
    if reached is not None and reached >= config["target_acc"] - REACHED_TOLERANCE:
        return (
            f"Nothing to do: the run of {path} already reached val/acc {reached:.4f} >= {config['target_acc']} at "
            f"epoch {stop.get('reached_epoch')}. Raise --target-acc (and --max-epochs if needed) to train further."
        )
    done = epochs_completed(checkpoint)
    if done >= config["max_epochs"]:
        return (
            f"Nothing to do: the run of {path} already trained {done} epoch(s), --max-epochs is "
            f"{config['max_epochs']}. Raise --max-epochs to train further."
        )
    return None


# ----------------------------------------------------------------------------------------------------- building


def build_callbacks(config: dict[str, Any], run_dir: Path | None, datamodule: CIFAR10DataModule) -> dict[str, Any]:
    """The run's callbacks by role (the summary reads some of them back).

    `run_dir` is None when the run folder is only known once Lightning has set up the processes (torchrun, SLURM):
    the folder-writing callbacks then find it in `setup`.
    """
    timer = Timer(duration=None, verbose=False)
    guard = NonFiniteLossGuard(
        check_every_n_steps=1 if config["progress_bar"] else config["log_every_n_steps"],
        checkpoint_every_n_steps=config["ckpt_every_n_steps"],
    )
    callbacks: dict[str, Any] = {
        "timer": timer,
        "stop": StopAtTarget(config["target_acc"], timer),
        "guard": guard,
    }
    if config["progress_bar"]:
        callbacks["progress"] = TQDMProgressBar(refresh_rate=10)
    if config["ema_decay"]:
        callbacks["ema"] = WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(config["ema_decay"]))
    if config["fast_dev_run"]:
        return callbacks
    checkpoint_dir = run_dir / CHECKPOINT_FOLDER if run_dir is not None else None  # None: Lightning's, the same
    callbacks["record"] = ConfigRecord(config, run_dir)
    callbacks["lr"] = LearningRateMonitor(logging_interval="step")
    callbacks["history"] = EpochHistory(run_dir)
    callbacks["grids"] = PredictionGrids(datamodule.class_names, config["grid_images"], config["grid_every_n_epochs"],
                                         run_dir)
    callbacks["figures"] = ConfusionFigures(datamodule.class_names, config["grid_every_n_epochs"], run_dir)
    callbacks["best"] = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
        monitor="val/acc", mode="max", save_top_k=1,
    )
    # last.ckpt after every epoch. Not ModelCheckpoint(save_last=True): since Lightning 2.6 that refreshes
    # last.ckpt only in epochs that also saved a new best, so it would lag behind after a worse epoch.
    latest = dict(dirpath=checkpoint_dir, filename=LAST_NAME.removesuffix(".ckpt"), monitor=None, save_top_k=1,
                  enable_version_counter=False)
    callbacks["last"] = ModelCheckpoint(**latest, every_n_epochs=1)
    if config["ckpt_every_n_steps"]:
        callbacks["last_steps"] = StepCheckpoint(**latest, every_n_train_steps=config["ckpt_every_n_steps"])
    callbacks["graceful"] = GracefulStop(guard, run_dir)
    return callbacks


def build_trainer(config: dict[str, Any], callbacks: dict[str, Any], run_dir: Path | None) -> pl.Trainer:
    accelerator, devices, precision = resolve_hardware(config)
    logger: Any = False
    if not config["fast_dev_run"]:
        save_dir = run_dir.parent if run_dir is not None else Path(config["logdir"])
        logger = TensorBoardLogger(save_dir=str(save_dir), name="", version=run_dir.name if run_dir else None,
                                   default_hp_metric=False)
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=config["num_nodes"],
        strategy=config["strategy"],
        precision=precision,
        max_epochs=config["max_epochs"],
        limit_train_batches=config["limit_train_batches"],
        logger=logger,
        callbacks=list(callbacks.values()),
        deterministic=config["deterministic"],
        benchmark=not config["deterministic"],
        log_every_n_steps=config["log_every_n_steps"],
        enable_progress_bar=config["progress_bar"],
        enable_checkpointing=not config["fast_dev_run"],
        sync_batchnorm=config["sync_batchnorm"],
        use_distributed_sampler=False,  # the DataModule shards every split itself, without padding
        num_sanity_val_steps=config["sanity_val_steps"],
        fast_dev_run=config["fast_dev_run"],
        plugins=[OrderedAsyncCheckpointIO(AtomicCheckpointIO())],
        default_root_dir=config["logdir"],
    )


# ------------------------------------------------------------------------------------------------------ summary


def fit_facts(callbacks: dict[str, Any], trainer: pl.Trainer, model: CIFARClassifier, commit: str | None
              ) -> dict[str, Any]:
    """What fitting achieved, read before testing: testing a checkpoint restores the callbacks' state from it."""
    stop: StopAtTarget = callbacks["stop"]
    best: ModelCheckpoint = callbacks["best"]
    history: EpochHistory = callbacks["history"]
    device = trainer.strategy.root_device
    return {
        "best_val_acc": float(best.best_model_score) if best.best_model_score is not None else None,
        "target_reached": stop.reached_epoch is not None,
        "target_epoch": stop.reached_epoch,
        "target_seconds": stop.reached_seconds,
        "epochs_run": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "train_seconds": callbacks["timer"].time_elapsed("train"),
        "warmup_seconds": model.warmup_seconds,
        "val_acc_per_epoch": [row.get("val_acc") for row in history.rows],
        "images_per_second": history.steady_images_per_second(),
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "train_started_at": history.train_started_at,
        "train_ended_at": history.train_ended_at,
        "best_checkpoint": best.best_model_path or None,
        "git_commit": commit,
    }


def write_summary(run_dir: Path, config: dict[str, Any], argv: Sequence[str], facts: dict[str, Any],
                  trainer: pl.Trainer, test_metrics: dict[str, float], started: float) -> dict[str, Any]:
    summary = {
        "best_val_acc": facts["best_val_acc"],
        "test_acc": test_metrics.get("test/acc"),
        "test_loss": test_metrics.get("test/loss"),
        "test_acc_tta": test_metrics.get("test/acc_tta"),
        "target_acc": config["target_acc"],
        **{key: value for key, value in facts.items() if key not in ("best_val_acc", "git_commit")},
        "total_seconds": time.perf_counter() - started,
        "device": device_description(trainer.strategy.root_device),
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
        "versions": versions(),
        "git_commit": facts["git_commit"],
        "command": command_line(list(argv), "train.py"),
        "run_dir": str(run_dir),
        "config": config,
    }
    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log_hparams_view(trainer, config, summary)
    return summary


def log_hparams_view(trainer: pl.Trainer, config: dict[str, Any], summary: dict[str, Any]) -> None:
    """Fill TensorBoard's HPARAMS tab: the resolved config beside the final numbers, to compare runs."""
    params = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
              for key, value in config.items()}
    metrics = {f"hp/{key}": float(summary[key]) for key in
               ("test_acc", "best_val_acc", "target_epoch", "target_seconds", "train_seconds", "epochs_run")
               if summary.get(key) is not None}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics)
            logger.finalize("success")


def report(summary: dict[str, Any]) -> str:
    if summary["target_reached"]:
        target = (f"target {summary['target_acc']:.0%} reached at epoch {summary['target_epoch']} after "
                  f"{summary['target_seconds']:.1f} s of training")
    else:
        target = f"target {summary['target_acc']:.0%} not reached in {summary['epochs_run']} epoch(s)"
    test = f"{summary['test_acc']:.2%}" if summary["test_acc"] is not None else "n/a"
    return f"Done: test accuracy {test} (best checkpoint); {target}. Run folder: {summary['run_dir']}"


# --------------------------------------------------------------------------------------------------------- main


def train(argv: Sequence[str], started: float) -> int:
    commit = git_commit()  # the code that runs is the code checked out now, whatever is edited during training
    config = parse_config(argv)
    checkpoint_path: Path | None = None
    run_dir: Path | None = None
    if config["resume"]:
        logdir = Path(config["logdir"])
        checkpoint_path = find_last_checkpoint(logdir) if config["resume"] == "last" else Path(config["resume"])
        checkpoint = load_checkpoint(checkpoint_path)
        check_compatible(checkpoint, checkpoint_path, CIFARClassifier.network_state, RESNET18_WIDTH)
        run_dir = run_dir_of(checkpoint_path)
        saved_config = run_dir / "config.yaml" if run_dir else None
        if saved_config is not None and saved_config.is_file():
            config = parse_config(["--config", str(saved_config), *argv])
        for name in ignored_on_resume(checkpoint, config):
            log.warning("--%s is ignored when resuming: the optimizer state in the checkpoint keeps %s=%s.",
                        name.replace("_", "-"), name, checkpoint["hyper_parameters"][name])
        message = nothing_left_to_do(checkpoint, config, checkpoint_path)
        if message:
            print(message)
            return 0
        log.info("Resuming from %s", checkpoint_path)

    pl.seed_everything(config["seed"], workers=True, verbose=False)
    datamodule = CIFAR10DataModule(**class_kwargs(CIFAR10DataModule, config))
    datamodule.prepare_data()  # data problems surface here, before any run folder exists
    resolve_hardware(config)  # refuses --gpus N without N GPUs before any run folder exists
    model = CIFARClassifier(**class_kwargs(CIFARClassifier, config))

    created_run_dir = False
    if not config["fast_dev_run"]:
        check_writable(Path(config["logdir"]))
        if os.environ.get(RUN_DIR_ENV):
            run_dir = Path(os.environ[RUN_DIR_ENV])
        elif run_dir is None and not launched_as_several_processes():
            run_dir = next_version_dir(Path(config["logdir"]))
            created_run_dir = True
    callbacks = build_callbacks(config, run_dir, datamodule)
    previous_env = os.environ.get(RUN_DIR_ENV)
    try:
        trainer = build_trainer(config, callbacks, run_dir)
        if run_dir is not None:
            os.environ[RUN_DIR_ENV] = str(run_dir)
        return fit_and_test(trainer, model, datamodule, callbacks, config, argv, checkpoint_path, started, commit)
    except UserError:
        if created_run_dir and run_dir is not None and not any((run_dir / CHECKPOINT_FOLDER).glob("*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if previous_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous_env


def launched_as_several_processes() -> bool:
    """torchrun or SLURM started every rank already: no rank may pick a run folder alone."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def fit_and_test(trainer: pl.Trainer, model: CIFARClassifier, datamodule: CIFAR10DataModule,
                 callbacks: dict[str, Any], config: dict[str, Any], argv: Sequence[str],
                 checkpoint_path: Path | None, started: float, commit: str | None) -> int:
    graceful: GracefulStop | None = callbacks.get("graceful")
    handlers_before = {signum: signal.getsignal(signum) for signum in GracefulStop.SIGNALS}
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint_path, weights_only=True)
    except NonFiniteLoss as bad:
        run_dir = callbacks["history"].run_dir if "history" in callbacks else None
        last = run_dir / CHECKPOINT_FOLDER / LAST_NAME if run_dir else None
        kept = f"the last good checkpoint is {last}" if last and last.is_file() else "no checkpoint was written yet"
        print(
            f"error: the training loss became NaN or infinite at step {bad.step} (epoch {bad.epoch + 1}); training "
            f"stopped there and nothing was saved after it: {kept}. Lower --lr or use --precision 32-true, then "
            "resume from that checkpoint.",
            file=sys.stderr,
        )
        return EXIT_NON_FINITE
    except BaseException as stop:
        if not (isinstance(stop, StopRequested) or is_lightning_sigterm(stop)):
            raise
        signum = graceful.signum if graceful is not None and graceful.signum else signal.SIGTERM
        saved = graceful.saved if graceful is not None else None
        where = f"at epoch {trainer.current_epoch + 1}, step {trainer.global_step}"
        print(
            f"Stopped by signal {signum} {where}; saved {saved}. "
            f"Resume with: python train.py --resume last --logdir {config['logdir']}",
            file=sys.stderr,
        )
        return 128 + signum
    finally:
        for signum, handler in handlers_before.items():
            signal.signal(signum, handler)
    run_dir = callbacks["history"].run_dir if "history" in callbacks else None
    if config["fast_dev_run"]:
        trainer.test(model, datamodule=datamodule)
        print("fast-dev-run finished: one batch of training, validation and test ran; nothing was written.")
        return 0
    facts = fit_facts(callbacks, trainer, model, commit)
    results = trainer.test(model, datamodule=datamodule, ckpt_path=facts["best_checkpoint"], weights_only=True)
    test_metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
    if trainer.is_global_zero and run_dir is not None:
        summary = write_summary(run_dir, config, argv, facts, trainer, test_metrics, started)
        print(report(summary))
    if graceful is not None and graceful.signum is not None:
        # the signal came during the last validation: training had finished, so the test and summary were done
        print(f"Signal {graceful.signum} arrived after the last training step; the run finished and was tested.",
              file=sys.stderr)
        return 128 + graceful.signum
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return train(list(sys.argv[1:] if argv is None else argv), started)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
