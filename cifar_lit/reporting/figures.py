"""Confusion matrix and per-class accuracy as TensorBoard figures, and as PNGs in the run folder after testing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from cifar_lit.phases import phase
from cifar_lit.reliability.run_folder import RunFolderCallback
from cifar_lit.reporting.loggers import image_sinks
from cifar_lit.reporting.plots import confusion_matrix_figure, per_class_accuracy_figure, publish_figure


class ConfusionFigures(RunFolderCallback):
    """After validation (every `every_n_epochs`, 0: never) and after testing: `<stage>/confusion_matrix` and
    `<stage>/per_class_accuracy` images in TensorBoard; the test pair also as confusion_matrix.png and
    per_class_accuracy.png in the run folder. Reads the evaluation the LightningModule keeps per stage (on the
    device) and copies it to the host only when a figure is due."""

    def __init__(self, class_names: Sequence[str], every_n_epochs: int = 1, run_dir: Path | None = None) -> None:
        super().__init__(run_dir)
        self.class_names = tuple(class_names)
        self.every_n_epochs = every_n_epochs

    def _publish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, save_png: bool) -> None:
        evaluation = getattr(pl_module, "evaluation", {}).get(stage)
        if evaluation is None or not trainer.is_global_zero:
            return
        with phase("reports"):
            self._draw(trainer, evaluation, stage, save_png)

    def _draw(self, trainer: pl.Trainer, evaluation: dict[str, Any], stage: str, save_png: bool) -> None:
        matrix = evaluation["confusion"].cpu().numpy()
        per_class = evaluation["per_class"].cpu().numpy()
        when = "best checkpoint" if stage == "test" else f"epoch {trainer.current_epoch + 1}"
        figures = {
            "confusion_matrix": confusion_matrix_figure(matrix, self.class_names,
                                                        f"Confusion matrix, {stage} set ({when})"),
            "per_class_accuracy": per_class_accuracy_figure(per_class, self.class_names,
                                                            f"Accuracy per class, {stage} set ({when})"),
        }
        sinks = image_sinks(trainer)
        for name, figure in figures.items():
            publish_figure(sinks, f"{stage}/{name}", trainer.global_step, figure,
                           path=self.run_dir / f"{name}.png" if save_png else None)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if due and not trainer.sanity_checking:
            self._publish(trainer, pl_module, "val", save_png=False)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish(trainer, pl_module, "test", save_png=True)
