"""What `--resume` means for a run: which checkpoint, which run folder and config, and whether anything is left to do.

Everything here happens before a Trainer exists, so a bad checkpoint is refused (CheckpointError) before any file
is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import Callback

from cifar_lit.lightning_compat import epochs_completed
from cifar_lit.models.resnet import RESNET18_WIDTH
from cifar_lit.reliability.checkpoints import (
    callback_state,
    check_compatible,
    datamodule_state,
    find_last_checkpoint,
    load_checkpoint,
    run_dir_of,
)
from cifar_lit.reliability.errors import CheckpointError
from cifar_lit.reporting.summary import SUMMARY_NAME
from cifar_lit.run.config import parse_config
from cifar_lit.run.stop_at_target import REACHED_TOLERANCE, StopAtTarget, resolve_target
from cifar_lit.training.module import CIFARClassifier

log = logging.getLogger("cifar_lit")

# Options that live in the optimizer and LR-scheduler state a checkpoint restores: new values cannot apply.
OPTIMIZER_STATE_KEYS = ("lr", "lr_reference_batch_size", "momentum", "nesterov", "weight_decay",
                        "norm_bias_weight_decay", "norm_bias_lr_scale")


@dataclass
class ResumePlan:
    """A checkpoint to resume from, with the run folder it belongs to and the config to resume with."""

    checkpoint_path: Path
    checkpoint: dict[str, Any]
    run_dir: Path | None
    config: dict[str, Any]
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


def ignored_on_resume(checkpoint: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Options whose new values resuming cannot apply: they live in the restored optimizer and scheduler state."""
    saved = checkpoint.get("hyper_parameters") or {}
    return [key for key in OPTIMIZER_STATE_KEYS if key in saved and saved[key] != config[key]]


def nothing_left_to_do(checkpoint: dict[str, Any], config: dict[str, Any], path: Path) -> str | None:
    """A message when resuming `checkpoint` would not train at all (target already reached, or no epochs left)."""
    stop = callback_state(checkpoint, StopAtTarget.__name__) or {}
    reached = stop.get("reached_value")
    target = resolve_target(config["target_acc"], datamodule_state(checkpoint).get("dataset", "cifar10")).value
    if reached is not None and target is not None and reached >= target - REACHED_TOLERANCE:
        return (
            f"Nothing to do: the run of {path} already reached val/acc {reached:.4f} >= {target} at "
            f"epoch {stop.get('reached_epoch')}. Raise --target-acc (and --max-epochs if needed) to train further."
        )
    done = epochs_completed(checkpoint)
    if done >= config["max_epochs"]:
        return (
            f"Nothing to do: the run of {path} already trained {done} epoch(s), --max-epochs is "
            f"{config['max_epochs']}. Raise --max-epochs to train further."
        )
    return None


def plan_resume(config: dict[str, Any], argv: Sequence[str]) -> ResumePlan:
    """The resume plan for `config["resume"]` ('last' or a path): the checkpoint is loaded safely and checked to be
    this project's network, and the run's own config.yaml is read back under the command-line flags."""
    logdir = Path(config["logdir"])
    path = find_last_checkpoint(logdir) if config["resume"] == "last" else Path(config["resume"])
    checkpoint = load_checkpoint(path)
    check_compatible(checkpoint, path, CIFARClassifier.network_state, RESNET18_WIDTH)
    if "optimizer_states" not in checkpoint:
        raise CheckpointError(
            f"{path} holds the network's weights only (a best-*.ckpt of a run with --best-weights-only), not the "
            "optimizer and loop state training needs. Resume from that run's last.ckpt; use this file with "
            "evaluate.py."
        )
    run_dir = run_dir_of(path)
    saved_config = run_dir / "config.yaml" if run_dir else None
    if saved_config is not None and saved_config.is_file():
        config = parse_config(["--config", str(saved_config), *argv])
    for name in ignored_on_resume(checkpoint, config):
        log.warning("--%s is ignored when resuming: the optimizer state in the checkpoint keeps %s=%s.",
                    name.replace("_", "-"), name, checkpoint["hyper_parameters"][name])
    return ResumePlan(path, checkpoint, run_dir, config, nothing_left_to_do(checkpoint, config, path))
