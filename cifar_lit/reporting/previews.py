"""What augmentation does to a batch: once per run, the first training images as stored beside the same images as
the network receives them, through the real on-device augmentation path (tensor path only)."""

from __future__ import annotations

import pytorch_lightning as pl

from cifar_lit.phases import phase
from cifar_lit.reporting.loggers import image_sinks
from cifar_lit.reporting.plots import augmentation_figure, publish_figure

PREVIEW_IMAGES = 16
TAG = "train/augmented"


class AugmentationPreview(pl.Callback):
    """Logs `train/augmented` to TensorBoard when a run starts training from step 0 (rank zero, reports phase)."""

    def __init__(self, count: int = PREVIEW_IMAGES) -> None:
        self.count = count

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        sinks = image_sinks(trainer)
        if not sinks or trainer.global_step != 0 or not trainer.is_global_zero or \
                datamodule.options.data_path != "tensor":
            return
        # Under the training loop's own grad mode: the compiled augmentation is guarded on it (no_grad here would
        # compile it again); its uint8 input needs no gradient anyway.
        with phase("reports"):
            stored, augmented, labels = datamodule.preview_batch(self.count)
            seen = datamodule.denormalize(augmented).permute(0, 2, 3, 1).float().cpu().numpy()
            figure = augmentation_figure(stored.float().div(255).cpu().numpy(), seen, labels.tolist(),
                                         class_names=datamodule.class_names,
                                         title="Training images as stored (top) and as the network receives them")
            publish_figure(sinks, TAG, trainer.global_step, figure)
