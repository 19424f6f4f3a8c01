"""What `--resume` means for a run: which checkpoint, which run folder and config, and whether anything is left to do.

Everything here happens before a Trainer exists, so a bad checkpoint is refused (CheckpointError) before any file
is written.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
from cifar_lit.run.config import Options, all_options, parse_options
from cifar_lit.run.stop_at_target import REACHED_TOLERANCE, StopAtTarget, resolve_target

log = logging.getLogger("cifar_lit")

# Options that live in the optimizer and LR-scheduler state a checkpoint restores: new values cannot apply.
OPTIMIZER_STATE_KEYS = ("lr", "lr_reference_batch_size", "momentum", "nesterov", "weight_decay",
                        "norm_bias_weight_decay", "norm_bias_lr_scale")


@dataclass
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


def ignored_on_resume(checkpoint: dict[str, Any], options: Options) -> list[str]:
    """Options whose new values resuming cannot apply: they live in the restored optimizer and scheduler state."""
    saved, now = checkpoint.get("hyper_parameters") or {}, asdict(options.model)
    return [key for key in OPTIMIZER_STATE_KEYS if key in saved and saved[key] != now[key]]


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


# What a resume takes from the flags of this process, never from the checkpoint's configuration.
NOT_CARRIED = ("resume", "config", "logdir", "dry_run", "find_lr", "fast_dev_run")
# Options a checkpoint's training state depends on: a resume with other values would train another network or
# continue the data order at the wrong place.
MUST_MATCH = {"model": "the network itself", "width": "the network's shape",
              "batch_size": "where the data order continues"}
TRAINED_BEFORE_THE_OPTION = {"model": DEFAULT_MODEL, "width": BASE_WIDTH}  # what a checkpoint that names none had


def saved_configuration(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The configuration a checkpoint was trained with: the one it carries (ConfigRecord's state), or for older
    checkpoints its model and data hyperparameters."""
    carried = (callback_state(checkpoint, "ConfigRecord") or {}).get("config")
    if isinstance(carried, dict):
        return dict(carried)
    return {**(checkpoint.get("datamodule_hyper_parameters") or {}), **(checkpoint.get("hyper_parameters") or {})}


def options_from_checkpoint(checkpoint: dict[str, Any], path: Path, argv: Sequence[str]) -> Options:
    """The options of a checkpoint that lies outside its run folder (no config.yaml beside it): the ones it was
    trained with, under this command line's flags; it then trains on in a new run folder."""
    known = {name for name, *_ in all_options()}
    saved = {key: value for key, value in saved_configuration(checkpoint).items()
             if key in known and key not in NOT_CARRIED}
    with tempfile.TemporaryDirectory(prefix="cifar_lit_resume_") as folder:
        carried = Path(folder) / "config.yaml"
        carried.write_text(yaml.safe_dump(saved, sort_keys=False))
        options = parse_options(["--config", str(carried), *argv])
    options.config = []
    log.info("%s has no config.yaml beside it: resuming with the configuration the checkpoint carries, in a new "
             "run folder under %s.", path, options.run.logdir)
    return options


def check_matches_checkpoint(checkpoint: dict[str, Any], options: Options, path: Path) -> None:
    """Refuse a resume whose options contradict the checkpoint's training state, before anything is written."""
    saved, now = saved_configuration(checkpoint), options.as_dict()
    hparams = checkpoint.get("hyper_parameters") or {}
    for key, why in MUST_MATCH.items():
        trained = hparams.get(key, saved.get(key, TRAINED_BEFORE_THE_OPTION.get(key)))
        if trained is not None and now[key] != trained:
            raise ConfigError(
                f"--{key.replace('_', '-')} {now[key]} does not match {path}, trained with {key}={trained} "
                f"({why} depends on it). Leave --{key.replace('_', '-')} out to resume as it was trained, or start a "
                "new run without --resume."
            )


def check_resumed_data(checkpoint: dict[str, Any], classes: tuple[str, ...], sizes: dict[str, int],
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


def plan_resume(options: Options, argv: Sequence[str]) -> ResumePlan:
    """The resume plan for `--resume` ('last' or a path): the checkpoint is loaded safely and checked to be this
    project's network, and the run's own config.yaml is read back under the command-line flags."""
    logdir, resume = Path(options.run.logdir), options.run.resume
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
    saved_config = run_dir / "config.yaml" if run_dir else None
    if saved_config is not None and saved_config.is_file():
        options = parse_options(["--config", str(saved_config), *argv])
    else:
        options = options_from_checkpoint(checkpoint, path, argv)
    check_matches_checkpoint(checkpoint, options, path)
    if "download" not in options.given:
        options = options.replace(download=False)  # a resume finds its data, or says so; it never fetches unasked
    for name in ignored_on_resume(checkpoint, options):
        log.warning("--%s is ignored when resuming: the optimizer state in the checkpoint keeps %s=%s.",
                    name.replace("_", "-"), name, checkpoint["hyper_parameters"][name])
    nothing = nothing_left_to_do(checkpoint, options.run.target_acc, options.run.max_epochs, path)
    return ResumePlan(path, checkpoint, run_dir, options, nothing)
