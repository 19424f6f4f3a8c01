"""Stop training the moment the monitored accuracy reaches the target, and say when."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping, Timer
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from cifar_lit.lightning_compat import forget_threshold_stop, threshold_reached

CIFAR10_TARGET = 0.85  # the product's goal; other data sets have none unless --target-acc gives one


@dataclass(frozen=True)
class Target:
    """The accuracy a run stops at (None: none, the whole schedule runs) and where that comes from."""

    value: float | None
    source: str

    def describe(self, max_epochs: int) -> str:
        if self.value is None:
            return (f"Target: none ({self.source}), so the run trains its whole schedule of {max_epochs} epoch(s); "
                    "pass --target-acc to stop at an accuracy.")
        return f"Target: val/acc {self.value} ({self.source})."


def resolve_target(target_acc: float | None, dataset: str | None) -> Target:
    """--target-acc when given; otherwise CIFAR-10's 85% on CIFAR-10, and no target on any other data set."""
    if target_acc is not None:
        return Target(target_acc, "--target-acc")
    if dataset in (None, "cifar10"):
        return Target(CIFAR10_TARGET, "CIFAR-10's 85%")
    return Target(None, "no --target-acc for a data set other than CIFAR-10")


# EarlyStopping stops only when the metric is strictly above its threshold. Accuracy is a multiple of 1/N for N
# evaluated images (N = 10,000 here), so a threshold this far below the target turns "above" into "reached".
REACHED_TOLERANCE = 1e-6


class StopAtTarget(EarlyStopping):
    """Lightning's EarlyStopping with only its threshold rule: stop once `monitor` >= `target` (never when the
    target is None).

    Adds what the threshold rule lacks: the epoch (1-based) and the seconds of training (Lightning's Timer,
    which carries over resumes) at which the target was reached, printed once and kept in the checkpoint, so a
    resumed run knows it is already done.
    """

    def __init__(self, target: float | None, timer: Timer, monitor: str = "val/acc") -> None:
        super().__init__(
            monitor=monitor,
            mode="max",
            stopping_threshold=None if target is None else target - REACHED_TOLERANCE,
            patience=sys.maxsize,
            verbose=False,
        )
        self.target = target
        self.timer = timer
        self.reached_epoch: int | None = None
        self.reached_seconds: float | None = None
        self.reached_value: float | None = None

    def _record_if_reached(self, trainer: pl.Trainer) -> None:
        if self.reached_epoch is not None or not threshold_reached(self):
            return
        self.reached_epoch = trainer.current_epoch + 1
        self.reached_seconds = self.timer.time_elapsed("train")
        self.reached_value = float(trainer.callback_metrics[self.monitor])
        message = (f"Target reached: {self.monitor} = {self.reached_value:.4f} >= {self.target} at epoch "
                   f"{self.reached_epoch}, after {self.reached_seconds:.1f} s of training.")
        bar = trainer.progress_bar_callback
        if bar is not None:
            bar.print(message)  # on a line of its own, above the bar (a log line would end up on the bar's line)
        else:
            rank_zero_info(message)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._record_if_reached(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._record_if_reached(trainer)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            target=self.target,
            reached_epoch=self.reached_epoch,
            reached_seconds=self.reached_seconds,
            reached_value=self.reached_value,
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        value = state_dict.get("reached_value")
        if value is not None and self.target is not None and value >= self.target - REACHED_TOLERANCE:
            self.reached_epoch = state_dict.get("reached_epoch")
            self.reached_seconds = state_dict.get("reached_seconds")
            self.reached_value = value
        else:  # a raised target: what the earlier run reached no longer counts
            forget_threshold_stop(self)
