"""Everything a run settles before its folder exists, as the steps `run/train.py: fit` names: the options (and a
resume), the hardware plan, the data, the learning rate, the checks on the network. Each step refuses a user mistake
with a UserError, so nothing has been written when one is found."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.sources import expected_class_count, expected_device_bytes
from cifar_lit.hardware.plan import HardwarePlan, plan_hardware
from cifar_lit.reliability.disk import bytes_needed, check_free_space
from cifar_lit.reliability.errors import ConfigError
from cifar_lit.reliability.run_folder import check_writable, launched_as_several_processes, next_free_version
from cifar_lit.reliability.secrets import is_masked
from cifar_lit.reporting.gradcam import network_layer, resolve_layer
from cifar_lit.reporting.loggers import check_loggers as available_loggers
from cifar_lit.run.lr_range_test import RangeTest, suggest_lr
from cifar_lit.run.options import Options
from cifar_lit.run.resume import ResumePlan, check_resumed_data, plan_resume
from cifar_lit.run.stop_at_target import Target, resolve_target
from cifar_lit.training.module import CIFARClassifier

log = logging.getLogger("cifar_lit")
LONG_WARMUP_EPOCHS = 20  # a warm-up longer than this usually means --max-epochs was meant for another schedule


@dataclass(kw_only=True)
class Prepared:
    """A run ready to fit: its options (the plan's decisions and the chosen LR in place: what config.yaml records),
    the plan, the data, the network and its target, and the resume it continues (None for a new run)."""

    options: Options
    hardware: HardwarePlan
    datamodule: ImageDataModule
    model: CIFARClassifier
    target: Target
    resume: ResumePlan | None
    range_test: RangeTest | None


def is_first_process() -> bool:
    """Rank zero of the first machine (or the only process): the one that logs the plan."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0" and \
        os.environ.get("RANK", "0") == "0"


def settle(asked: Options) -> tuple[Options, ResumePlan | None]:
    """The options to run with: as asked, or for a `--resume` what the resumed run was trained with as this command
    may change it; the data folder made absolute, so that config.yaml names the same folder from wherever a resume or
    evaluate.py runs."""
    resume = plan_resume(asked) if asked.run.resume else None
    options = resume.options if resume is not None else asked
    if resume is not None and (not resume.nothing_to_do or resume.test_only):
        log.info("Resuming from %s%s", resume.checkpoint_path, ": training is complete, so only the test runs "
                 "and the summary is written" if resume.test_only else "")
    return options.replace(data_dir=str(Path(options.data.data_dir).expanduser().absolute())), resume


def plan(options: Options) -> HardwarePlan:
    """The hardware plan, logged first by rank zero. It refuses what this machine cannot give (a missing GPU, a torch
    without kernels for it, --compile where Inductor cannot work) before any download or run folder."""
    data = options.data
    classes = expected_class_count(Path(data.data_dir), data.dataset, data.cifar100_labels)
    hardware = plan_hardware(options.hardware_request(classes), expected_device_bytes(data.data_dir, data.crop_padding))
    if is_first_process() and not options.run.dry_run:
        for line in hardware.lines():
            log.info(line)
        warning = hardware.memory_warning(options.model.batch_size)
        if warning:
            log.warning(warning)
    return hardware


def dry_run_report(hardware: HardwarePlan, options: Options, resumed_run_dir: Path | None) -> str:
    """What `--dry-run` prints: the hardware plan and the run folder, with nothing read, compiled or written."""
    logdir = Path(options.run.logdir)
    if options.run.fast_dev_run:
        folder = "none (--fast-dev-run writes nothing)"
    elif resumed_run_dir is not None:
        folder = f"{resumed_run_dir} (the resumed run's)"
    elif launched_as_several_processes():
        folder = f"the next version_N under {logdir}, chosen by rank zero at start"
    else:
        folder = f"{next_free_version(logdir)} (not created now)"
    warning = hardware.memory_warning(options.model.batch_size)
    return "\n".join(["Dry run: nothing was read, downloaded, compiled or written.", *hardware.lines(),
                      *([warning] if warning else []), f"Run folder: {folder}"])


def prepare_data(options: Options, hardware: HardwarePlan, resume: ResumePlan | None) -> ImageDataModule:
    """The DataModule, its data read and checked: problems surface here, before any run folder exists."""
    pl.seed_everything(options.run.seed, workers=True, verbose=False)
    datamodule = ImageDataModule(options.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    check_steps(datamodule, hardware, options)
    if resume is not None:
        sizes, fingerprints = datamodule.data_identity()
        check_resumed_data(resume.checkpoint, classes=datamodule.class_names, sizes=sizes, fingerprints=fingerprints,
                           path=resume.checkpoint_path, data_dir=datamodule.data_dir)
    return datamodule


def check_steps(datamodule: ImageDataModule, hardware: HardwarePlan, options: Options) -> None:
    """Refuse a run that would not train a single step (a batch larger than each process's share of the data)."""
    if not isinstance(hardware.devices, int) or options.data.data_path != "tensor":
        return
    world = hardware.devices * options.run.num_nodes
    if datamodule.steps_per_epoch_for(world) == 0:
        share = len(datamodule.splits["train"]) // world
        raise ConfigError(
            f"--batch-size {options.data.batch_size} is larger than the {share} training images each of the {world} "
            f"process(es) gets (only full batches are trained), so no step would run. Use --batch-size {share} or "
            "less, or more training images."
        )


def choose_lr(options: Options, hardware: HardwarePlan, datamodule: ImageDataModule
              ) -> tuple[Options, RangeTest | None]:
    """With --find-lr or --lr auto, the LR range test; --lr auto then trains with its suggestion (recorded in
    config.yaml as the number it was)."""
    if not (options.run.find_lr or options.model.lr == "auto"):
        return options, None
    range_test = suggest_lr(options, hardware, datamodule)
    return options.replace(lr=float(f"{range_test.suggested_flag_lr:.3g}")), range_test


def check_loggers(options: Options) -> None:
    """The loggers asked for can be built (their extra installed), and an MLflow address whose password a file
    masked is given again, not guessed."""
    run = options.run
    available_loggers(run.logger)
    if "mlflow" in run.logger and is_masked(run.mlflow_uri) and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(f"The run logged to MLflow at {run.mlflow_uri}, whose password is not kept in files. Give "
                          "--mlflow-uri again (or set MLFLOW_TRACKING_URI) to log to the same server.")


def check_network(model: CIFARClassifier, options: Options, datamodule: ImageDataModule) -> Target:
    """The run's target; a Grad-CAM layer without maps and a disk without room for the run's checkpoints are refused
    now, not after training."""
    run = options.run
    if resolve_layer(model.model, run.gradcam_layer):
        network_layer(model.model, run.gradcam_layer)
    target = resolve_target(run.target_acc, datamodule.dataset.kind if datamodule.dataset else None)
    if is_first_process():
        log.info(target.describe(run.max_epochs))
        warm_epochs = options.model.warmup_fraction * run.max_epochs
        if target.value is not None and warm_epochs > LONG_WARMUP_EPOCHS:
            log.warning("The LR warms up over %.0f epochs (--warmup-fraction %s of --max-epochs %d): the run may reach "
                        "its target long before the LR peaks. Lower --max-epochs or --warmup-fraction.", warm_epochs,
                        options.model.warmup_fraction, run.max_epochs)
    if not run.fast_dev_run:
        check_free_space(Path(run.logdir), bytes_needed(model, run.best_weights_only, bool(run.ema_decay)))
    if options.model.compile:
        check_writable(Path(run.compile_cache).expanduser(), "the compile cache folder", "--compile-cache")
    return target
