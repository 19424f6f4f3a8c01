"""Grids of misclassified and correctly classified images, and the same images with their Grad-CAM maps, in
TensorBoard and as PNGs in the run folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from cifar_lit.phases import phase
from cifar_lit.reliability.run_folder import RunFolderCallback
from cifar_lit.reporting.gradcam import DEFAULT_LAYER, maps_for_predictions, resolve_layer
from cifar_lit.reporting.loggers import image_sinks
from cifar_lit.reporting.plots import (
    gradcam_grid_figure,
    prediction_grid_figure,
    publish_figure,
    spread_over_classes,
)

KINDS = ("misclassified", "correct")


class PredictionGrids(RunFolderCallback):
    """After validation (every `every_n_epochs`) and after testing, logs up to `max_images` misclassified and as many
    correctly classified images, de-normalized and captioned "true / pred", under the image tags
    `<stage>/misclassified` and `<stage>/correct`, and (with `gradcam_layer`) the same images with their class
    activation maps, `<stage>/gradcam_misclassified` and `<stage>/gradcam_correct`. The test grids are also saved as
    misclassified.png, correct.png, gradcam_misclassified.png and gradcam_correct.png in the run folder. Works with
    fewer than `max_images` of either kind; rank zero only; its time counts as the reports phase."""

    def __init__(self, class_names: Sequence[str], *, max_images: int = 30, every_n_epochs: int = 1,
                 run_dir: Path | None = None, gradcam_layer: str | None = DEFAULT_LAYER) -> None:
        super().__init__(run_dir)
        self.class_names = tuple(class_names)
        self.max_images = max_images
        self.every_n_epochs = every_n_epochs
        self.gradcam_layer = gradcam_layer
        self._collected: dict[str, list[tuple[torch.Tensor, ...]]] = {}
        self._active = False

    def _start(self, active: bool) -> None:
        self._active = active and self.max_images > 0
        self._collected = {kind: [] for kind in KINDS}
        self._per_class = {kind: np.zeros(len(self.class_names), dtype=int) for kind in KINDS}

    def _count(self, kind: str) -> int:
        return sum(len(part[1]) for part in self._collected[kind])

    def _collect(self, trainer: pl.Trainer, outputs: Any, batch: Any) -> None:
        if not self._active or not isinstance(outputs, dict) or "preds" not in outputs:
            return
        images, labels = batch
        preds = outputs["preds"]
        labels_np, wrong = labels.cpu().numpy(), (preds != labels).cpu().numpy()
        for kind, mask in (("misclassified", wrong), ("correct", ~wrong)):
            room = self.max_images - self._count(kind)
            if room > 0:
                # evaluation data is often sorted by class: take a few of each class, not the first batch's
                quota = -(-self.max_images // len(self.class_names))
                chosen = spread_over_classes(labels_np, mask, room, classes=len(self.class_names),
                                             already=self._per_class[kind], quota=quota)
                if len(chosen):
                    index = torch.as_tensor(chosen, device=images.device)
                    pictures = trainer.datamodule.denormalize(images[index])
                    self._collected[kind].append((pictures.cpu(), labels[index].cpu(), preds[index].cpu(),
                                                  images[index].detach().clone()))

    def _gathered(self, kind: str) -> tuple[np.ndarray, list[int], list[int], torch.Tensor | None]:
        parts = self._collected[kind]
        if not parts:
            return np.zeros((0, 32, 32, 3), dtype=np.float32), [], [], None
        images = torch.cat([p[0] for p in parts]).permute(0, 2, 3, 1).float().numpy()
        inputs = torch.cat([p[3] for p in parts])
        return images, torch.cat([p[1] for p in parts]).tolist(), torch.cat([p[2] for p in parts]).tolist(), inputs

    def _publish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, save_png: bool) -> None:
        if self._active:
            with phase("reports"):
                self._draw(trainer, pl_module, stage, save_png)
        self._active = False
        self._collected = {}

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, save_png: bool) -> None:
        sinks = image_sinks(trainer)
        when = "best checkpoint" if stage == "test" else f"epoch {trainer.current_epoch + 1}"
        for kind in KINDS:
            images, true, pred, inputs = self._gathered(kind)
            title = f"{kind.capitalize()} {stage} images ({len(true)} shown), {when}"
            figures = {kind: prediction_grid_figure(images, true, pred, class_names=self.class_names, title=title)}
            layer = resolve_layer(pl_module.model, self.gradcam_layer)
            if layer and inputs is not None:
                cams = maps_for_predictions(pl_module.model, inputs, torch.tensor(true), torch.tensor(pred),
                                            layer=layer)
                figures[f"gradcam_{kind}"] = gradcam_grid_figure(
                    images, cams["maps_predicted"].numpy(), cams["maps_true"].numpy(), true_labels=true,
                    predicted_labels=pred, confidences=cams["confidence"].tolist(), class_names=self.class_names,
                    title=f"Grad-CAM ({layer}): {title}")
            for name, figure in figures.items():
                publish_figure(sinks, f"{stage}/{name}", trainer.global_step, figure,
                               path=self.run_dir / f"{name}.png" if save_png else None)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        self._start(trainer.is_global_zero and not trainer.sanity_checking and due)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(trainer, outputs, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish(trainer, pl_module, "val", save_png=False)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer.is_global_zero)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(trainer, outputs, batch)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish(trainer, pl_module, "test", save_png=True)
