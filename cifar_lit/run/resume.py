"""What `--resume` means for a run: which checkpoint, which run folder, the options it continues with, and whether
anything is left to do.

The options come from one place, what the run was trained with (`trained_options`: its config.yaml, or the copy its
checkpoint carries when config.yaml is gone), with what this command line may change on top (`resumed_options`, by
the declared lists below). Everything here happens before a Trainer exists, so a bad checkpoint or a contradicting
flag is refused before any file is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pytorch_lightning.callbacks import Callback

from cifar_lit.lightning_compat import epochs_completed
from cifar_lit.models import BASE_WIDTH, DEFAULT_MODEL
from cifar_lit.reliability.checkpoints import (
    callback_state,
    check_compatible,
    datamodule_state,
    find_last_checkpoint,
    load_checkpoint,
    run_dir_of,
)
from cifar_lit.reliability.errors import CheckpointError, ConfigError, DataError
from cifar_lit.reporting.summary import SUMMARY_NAME
from cifar_lit.run.config import check_options, flag
from cifar_lit.run.options import Options, option_names
from cifar_lit.run.stop_at_target import REACHED_TOLERANCE, StopAtTarget, resolve_target

log = logging.getLogger("cifar_lit")

# Every option is in exactly one of these four lists (tests/test_resume_options.py checks it), so a new option is
# placed on purpose.
# What a resume takes from this command, never from the run it continues.
FROM_THIS_COMMAND = ("resume", "dry_run", "print_config", "find_lr", "fast_dev_run", "run_name")
# The training state depends on these: another value would train another network or continue the data order at the
# wrong place, so a resume that gives one is refused.
MUST_MATCH = {"model": "the network itself", "width": "the network's shape",
              "batch_size": "where the data order continues"}
TRAINED_BEFORE_THE_OPTION = {"model": DEFAULT_MODEL, "width": BASE_WIDTH}  # what a checkpoint that names none had
# These live in the optimizer and LR-scheduler state the checkpoint restores: a new value cannot apply, and is
# ignored with a warning (config.yaml keeps the value that trains).
IN_OPTIMIZER_STATE = ("lr", "lr_reference_batch_size", "momentum", "nesterov", "weight_decay",
                      "norm_bias_weight_decay", "norm_bias_lr_scale")
# What this command line may change on resume: where and how long it trains, on which hardware, what it writes.
MAY_CHANGE_ON_RESUME = (
    # how long, and the target
    "max_epochs", "limit_train_batches", "target_acc",
    # the hardware and the numerics
    "gpus", "accelerator", "devices", "num_nodes", "strategy", "sync_batchnorm", "precision", "deterministic",
    "channels_last", "fused_sgd", "compile", "compile_mode", "compile_warmup", "compile_cache", "data_on_device",
    "shard_train_data", "num_workers", "data_path", "eval_batch_size",
    # where the data and the runs are
    "data_dir", "dataset", "cifar100_labels", "resize", "download", "verify_checksums", "cache_dir", "logdir",
    # the rest of the recipe, applied from the resumed step on
    "seed", "label_smoothing", "schedule", "warmup_fraction", "lr_start_factor", "lr_end_factor", "flip_tta",
    "crop_padding", "flip", "cutout", "val_split", "normalization", "ema_decay",
    # what is written and shown
    "ckpt_every_n_epochs", "ckpt_every_n_steps", "best_weights_only", "log_every_n_steps", "progress_bar",
    "sanity_val_steps", "figures", "logger", "mlflow_uri", "grid_images", "grid_every_n_epochs", "gradcam_layer",
    "lr_find_steps",
    # more Trainer arguments: what this command gives is laid over what the run had
    "trainer",
)


@dataclass(kw_only=True)
class ResumePlan:
    """A checkpoint to resume from, with the run folder it belongs to and the options to resume with."""

    checkpoint_path: Path
    checkpoint: dict[str, Any]
    run_dir: Path | None
    options: Options
    nothing_to_do: str | None  # the message when the run's training is already complete

    @property
    def test_only(self) -> bool:
        """Training is complete but the run was never tested and summarised (a signal cut the test or the report):
        resuming runs the test and writes the summary."""
        return self.nothing_to_do is not None and self.run_dir is not None and not summary_is_current(
            self.run_dir / SUMMARY_NAME, self.checkpoint)


def summary_is_current(path: Path, checkpoint: dict[str, Any]) -> bool:
    """Whether `path` is a complete summary of the training state `checkpoint` holds (same number of steps)."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return summary.get("global_steps") == checkpoint.get("global_step") and summary.get("test_acc") is not None


def restore_callback_states(callbacks: list[Callback], checkpoint: dict[str, Any]) -> None:
    """Give each callback its state from `checkpoint`, as a resumed fit would (Callback.state_key is public API)."""
    states = checkpoint.get("callbacks") or {}
    for callback in callbacks:
        if callback.state_key in states:
            callback.load_state_dict(states[callback.state_key])


def nothing_left_to_do(checkpoint: dict[str, Any], target_acc: float | None, max_epochs: int,
                       path: Path) -> str | None:
    """A message when resuming `checkpoint` would not train at all (target already reached, or no epochs left)."""
    stop = callback_state(checkpoint, StopAtTarget.__name__) or {}
    reached = stop.get("reached_value")
    target = resolve_target(target_acc, datamodule_state(checkpoint).get("dataset", "cifar10")).value
    if reached is not None and target is not None and reached >= target - REACHED_TOLERANCE:
        return (
            f"Nothing to do: the run of {path} already reached val/acc {reached:.4f} >= {target} at "
            f"epoch {stop.get('reached_epoch')}. Raise --target-acc (and --max-epochs if needed) to train further."
        )
    done = epochs_completed(checkpoint)
    if done >= max_epochs:
        return (
            f"Nothing to do: the run of {path} already trained {done} epoch(s), --max-epochs is {max_epochs}. "
            "Raise --max-epochs to train further."
        )
    return None


def saved_configuration(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The configuration a checkpoint carries (ConfigRecord's state), or for older checkpoints its model and data
    hyperparameters."""
    carried = (callback_state(checkpoint, "ConfigRecord") or {}).get("config")
    if isinstance(carried, dict):
        return dict(carried)
    return {**(checkpoint.get("datamodule_hyper_parameters") or {}), **(checkpoint.get("hyper_parameters") or {})}


def trained_options(checkpoint: dict[str, Any], run_dir: Path | None, path: Path) -> Options:
    """The options the run was trained with: its config.yaml, or the configuration its checkpoint carries when the
    checkpoint lies outside its run folder or config.yaml is gone. Checked as a command line is."""
    saved_config = run_dir / "config.yaml" if run_dir is not None else None
    if saved_config is not None and saved_config.is_file():
        values, source = yaml.safe_load(saved_config.read_text()) or {}, str(saved_config)
    else:
        values, source = saved_configuration(checkpoint), f"the configuration {path} carries"
        log.info("%s has no config.yaml beside it: resuming with the configuration the checkpoint carries.", path)
    if not isinstance(values, dict):
        raise ConfigError(f"{source} is not a mapping of options. Restore it from the run's checkpoint or delete it "
                          "(the checkpoint carries its own copy).")
    known = {*option_names(), "config"}  # a key an older version had and this one lacks is left out
    options = Options.from_dict({key: value for key, value in values.items() if key in known})
    check_options(options)
    return options


def trained_value(checkpoint: dict[str, Any], trained: Options, key: str) -> Any:
    """The value of a MUST_MATCH option the checkpoint's weights were trained with."""
    hparams = checkpoint.get("hyper_parameters") or {}
    return hparams.get(key, saved_configuration(checkpoint).get(key, TRAINED_BEFORE_THE_OPTION.get(key,
                                                                                               trained.value(key))))


def check_matches_checkpoint(checkpoint: dict[str, Any], options: Options, path: Path) -> None:
    """Refuse options that contradict the checkpoint's training state, before anything is written."""
    for key, why in MUST_MATCH.items():
        trained = trained_value(checkpoint, options, key)
        if trained is not None and options.value(key) != trained:
            raise ConfigError(
                f"{flag(key)} {options.value(key)} does not match {path}, trained with {key}={trained} ({why} "
                f"depends on it). Leave {flag(key)} out to resume as it was trained, or start a new run without "
                "--resume."
            )


def resumed_options(trained: Options, asked: Options, checkpoint: dict[str, Any], path: Path) -> Options:
    """The trained options with what this command line (`asked`) may change: MAY_CHANGE_ON_RESUME as it gives them,
    FROM_THIS_COMMAND always; an optimizer-state option it changes is ignored with a warning. A resume never
    downloads unless asked: it finds its data, or says so."""
    hparams = checkpoint.get("hyper_parameters") or {}
    changes = {key: asked.value(key) for key in FROM_THIS_COMMAND}
    changes.update({key: asked.value(key) for key in asked.given if key in MAY_CHANGE_ON_RESUME or key in MUST_MATCH})
    for key in asked.given & set(IN_OPTIMIZER_STATE):
        if key in hparams and hparams[key] != asked.value(key):
            log.warning("%s is ignored when resuming: the optimizer state in the checkpoint keeps %s=%s.", flag(key),
                        key, hparams[key])
    if "trainer" in asked.given:
        changes["trainer"] = {**trained.run.trainer, **asked.run.trainer}
    if "download" not in asked.given:
        changes["download"] = False
    options = dataclasses.replace(trained.replace(**changes), given=asked.given, flags=asked.flags)
    check_matches_checkpoint(checkpoint, options, path)
    return options


def check_resumed_data(checkpoint: dict[str, Any], *, classes: tuple[str, ...], sizes: dict[str, int],
                       fingerprints: dict[str, str], path: Path, data_dir: Path) -> None:
    """Refuse data that is not what the checkpoint was trained on (other classes, other images), before anything
    in the run folder is touched."""
    saved = datamodule_state(checkpoint)
    trained_classes = tuple(saved.get("class_names") or ())
    if trained_classes and trained_classes != tuple(classes):
        raise DataError(f"The data in {data_dir} has the classes {', '.join(classes)}, and {path} was trained on "
                        f"{', '.join(trained_classes)}. Resume with --data-dir of the data it was trained on.")
    for split, size in (saved.get("sizes") or {}).items():
        now, was = sizes.get(split), saved.get("fingerprints", {}).get(split)
        if now != size or (was is not None and fingerprints.get(split) != was):
            raise DataError(
                f"The {split} images in {data_dir} changed since {path} was written ({size} images then, {now} now"
                f"{'' if now != size else ', other content'}): the run's data order and validation would not "
                "continue where they stopped. Restore the data folder as it was, or start a new run without "
                "--resume."
            )


def plan_resume(asked: Options) -> ResumePlan:
    """The resume plan for `--resume` ('last' or a path): the checkpoint is loaded safely and checked to be this
    project's network, and the options are what it was trained with, as this command line may change them."""
    logdir, resume = Path(asked.run.logdir), asked.run.resume
    path = find_last_checkpoint(logdir) if resume == "last" else Path(resume)
    checkpoint = load_checkpoint(path)
    check_compatible(checkpoint, path)
    if "optimizer_states" not in checkpoint:
        raise CheckpointError(
            f"{path} holds the network's weights only (a best-*.ckpt of a run with --best-weights-only), not the "
            "optimizer and loop state training needs. Resume from that run's last.ckpt; use this file with "
            "evaluate.py."
        )
    run_dir = run_dir_of(path)
    trained = trained_options(checkpoint, run_dir, path)
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        trained = trained.replace(logdir=asked.run.logdir)  # out of its folder: a new run folder under this logdir
    options = resumed_options(trained, asked, checkpoint, path)
    nothing = nothing_left_to_do(checkpoint, options.run.target_acc, options.run.max_epochs, path)
    return ResumePlan(checkpoint_path=path, checkpoint=checkpoint, run_dir=run_dir, options=options,
                      nothing_to_do=nothing)
