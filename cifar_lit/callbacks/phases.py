"""Moves the process's phase clock (cifar_lit.phases) along with Lightning's loops, and carries the run's phase
seconds across resumes."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from cifar_lit.phases import PHASES, PhaseClock


class PhaseTimer(Callback):
    """train while the training loop runs, validation during validation passes (the sanity check too), checkpoints
    once training has ended (the background writer is drained then), test during the final test and reports after
    it. The other phases are marked by the code that does their work (data, warm-up, checkpoint writes, figures).

    Its checkpoint state is the run's phase seconds so far, so a resumed run's summary counts every process.
    """

    def __init__(self, clock: PhaseClock) -> None:
        self.clock = clock
        self._before_sanity_check = "startup"
        self._restored: dict[str, float] | None = None

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._before_sanity_check = self.clock.switch("validation")

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.switch(self._before_sanity_check)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.switch("train")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.clock.switch("validation")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.clock.switch("train")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.switch("checkpoints")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.switch("test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.switch("reports")

    def state_dict(self) -> dict[str, Any]:
        return {"phase_seconds": self.clock.cumulative()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning 2.6 restores callbacks in `test(ckpt_path=...)` too; only a resumed fit carries seconds over.
        saved = state_dict.get("phase_seconds") or {}
        self._restored = {name: float(saved.get(name, 0.0)) for name in PHASES}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.carry_restored()

    def carry_restored(self) -> None:
        """Count the restored seconds of earlier processes as this run's (a resumed fit, or a finished run that
        is only tested)."""
        if self._restored is not None:
            self.clock.carried = self._restored
