"""The LightningModule: ResNet18, its loss, accuracy per stage, and the optimizer with its per-step schedule."""

from __future__ import annotations

import logging
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from cifar_lit.lightning_compat import saved_after_last_batch, training_steps
from cifar_lit.models import resnet18
from cifar_lit.models.resnet import RESNET18_WIDTH
from cifar_lit.option_types import (
    ClosedUnitInterval,
    Fraction,
    FractionBelowOne,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
)
from cifar_lit.optim import build_scheduler, build_sgd
from cifar_lit.warmup import run_every_shape

log = logging.getLogger(__name__)
STAGES = ("train", "val", "test")


class CIFARClassifier(pl.LightningModule):
    """ResNet18 for CIFAR-10, trained with nesterov SGD and a per-step LR schedule.

    Args:
        num_classes: output classes.
        width: channels of the network's first stage (doubled in each later one). 64 is the ResNet18 this project
            trains, 11,173,962 parameters; narrower networks of the same shape are for quick tests.
        lr: peak learning rate for `lr_reference_batch_size` images per optimizer step.
        lr_reference_batch_size: the peak LR is scaled linearly with the global batch (batch size per device x
            devices x nodes) relative to this many images (Goyal et al., 2017); null uses `lr` as it is.
        momentum: SGD momentum.
        nesterov: use Nesterov momentum.
        weight_decay: L2 penalty on convolution and linear weights.
        norm_bias_weight_decay: L2 penalty on batch-norm parameters and biases (usually 0).
        norm_bias_lr_scale: their learning rate relative to the other weights.
        label_smoothing: cross-entropy label smoothing in training (evaluation reports plain cross-entropy).
        schedule: "onecycle", "linear", "cosine" or "constant" (see `cifar_lit.optim.lr_factor`).
        warmup_fraction: share of all steps spent warming up.
        lr_start_factor: LR at the first step, as a fraction of the peak.
        lr_end_factor: LR at the last step, as a fraction of the peak.
        flip_tta: also evaluate on mirrored images and report that accuracy as `val/acc_tta`, `test/acc_tta`.
        channels_last: keep weights NHWC-strided (faster convolutions on tensor cores).
        compile: compile the network with torch.compile.
        compile_warmup: with `compile`, first run every batch shape once so the compile time is paid (and reported
            as warm-up) before training and its clock start.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: PositiveInt = RESNET18_WIDTH,
        lr: PositiveFloat = 0.2,
        lr_reference_batch_size: PositiveInt | None = 256,
        momentum: FractionBelowOne = 0.9,
        nesterov: bool = True,
        weight_decay: NonNegativeFloat = 5e-4,
        norm_bias_weight_decay: NonNegativeFloat = 0.0,
        norm_bias_lr_scale: NonNegativeFloat = 1.0,
        label_smoothing: FractionBelowOne = 0.1,
        schedule: Literal["onecycle", "linear", "cosine", "constant"] = "onecycle",
        warmup_fraction: FractionBelowOne = 0.25,
        lr_start_factor: Fraction = 0.04,
        lr_end_factor: ClosedUnitInterval = 0.0,
        flip_tta: bool = False,
        channels_last: bool = True,
        compile: bool = False,
        compile_warmup: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = resnet18(num_classes=num_classes, width=width)
        self.train_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        for stage in STAGES:
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro", validate_args=False))
            # no NaN check inside the metric (its `.any()` would stall the GPU queue every step): the
            # NonFiniteLossGuard callback watches the loss without a host sync.
            setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
        # The running sums of the training metrics go into checkpoints, so an epoch resumed from a mid-epoch
        # checkpoint reports the same train/acc and train/loss as an uninterrupted one.
        self.train_acc.persistent(True)
        self.train_loss.persistent(True)
        self._fresh_train_metrics = False
        self.val_acc_tta = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc_tta = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.confusion: dict[str, torch.Tensor] = {}
        self.warmup_seconds = 0.0
        self._compiled = False
        self.resumed_schedule_steps: int | None = None

    @staticmethod
    def network_state(width: int) -> dict[str, torch.Tensor]:
        """The state dict of a fresh module with a network of `width`: the shapes a checkpoint must match."""
        return CIFARClassifier(width=width).state_dict()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    # ------------------------------------------------------------------------------------------------- set-up

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.hparams.compile and not self._compiled:
            self.model.compile()
            self._compiled = True

    def on_fit_start(self) -> None:
        if self.hparams.compile and self.hparams.compile_warmup:
            self.warm_up()

    def warm_up(self) -> None:
        """Compile every batch shape of the fit now, so training (and its clock) starts with compiled code."""
        datamodule = self.trainer.datamodule
        self.warmup_seconds = run_every_shape(
            self.model,
            datamodule.hparams.batch_size,
            datamodule.eval_batch_sizes(),
            self.train_criterion,
            self.trainer.precision_plugin.forward_context,
            channels_last=self.hparams.channels_last,
            flip_tta=self.hparams.flip_tta,
        )
        log.info("Compile warm-up took %.1f s", self.warmup_seconds)

    # ------------------------------------------------------------------------------------------------- steps

    def _shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        if stage == "train":
            loss = self.train_criterion(logits, labels)
        else:
            loss = F.cross_entropy(logits, labels)
        preds = logits.argmax(dim=1)
        accuracy = getattr(self, f"{stage}_acc")
        mean_loss = getattr(self, f"{stage}_loss")
        accuracy.update(preds, labels)
        # the weight is made on the device: a Python number would be copied from the host, a blocking copy
        mean_loss.update(loss.detach(), weight=torch.full_like(loss.detach(), labels.numel()))
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage != "test")
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True)
        if stage != "train":
            getattr(self, f"{stage}_confusion").update(preds, labels)
            if self.hparams.flip_tta:
                tta_logits = (logits.float().softmax(1) + self(images.flip(-1)).float().softmax(1))
                tta = getattr(self, f"{stage}_acc_tta")
                tta.update(tta_logits.argmax(dim=1), labels)
                self.log(f"{stage}/acc_tta", tta, on_step=False, on_epoch=True)
        return {"loss": loss, "preds": preds}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._shared_step(batch, "train")
        self.log("train/loss_step", out["loss"], on_step=True, on_epoch=False, prog_bar=True)
        return out["loss"]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._shared_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._shared_step(batch, "test")

    def _keep_confusion(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_confusion")
        self.confusion[stage] = metric.compute().cpu()
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._keep_confusion("val")

    def on_test_epoch_end(self) -> None:
        self._keep_confusion("test")

    # --------------------------------------------------------------------------------------------- optimization

    def peak_lr(self) -> float:
        """`lr`, scaled by global batch / `lr_reference_batch_size` when that is set."""
        reference = self.hparams.lr_reference_batch_size
        if not reference or self._trainer is None or self.trainer.datamodule is None:
            return self.hparams.lr
        global_batch = self.trainer.datamodule.hparams.batch_size * self.trainer.world_size
        return self.hparams.lr * global_batch / reference

    def total_training_steps(self) -> int:
        """Optimizer steps in the whole run, counted from the DataModule's loader length (see
        `lightning_compat.training_steps` for why not `trainer.estimated_stepping_batches`)."""
        return training_steps(self.trainer, self.trainer.datamodule.train_batches_per_epoch())

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = build_sgd(
            self.model,
            lr=self.peak_lr(),
            momentum=hp.momentum,
            nesterov=hp.nesterov,
            weight_decay=hp.weight_decay,
            norm_bias_weight_decay=hp.norm_bias_weight_decay,
            norm_bias_lr_scale=hp.norm_bias_lr_scale,
        )
        total_steps = self.total_training_steps()
        scheduler = build_scheduler(
            optimizer,
            hp.schedule,
            total_steps=total_steps,
            warmup_fraction=hp.warmup_fraction,
            start_factor=hp.lr_start_factor,
            end_factor=hp.lr_end_factor,
        )
        self.schedule_total_steps = total_steps
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["schedule_total_steps"] = getattr(self, "schedule_total_steps", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resumed_schedule_steps = checkpoint.get("schedule_total_steps")
        # Saved after an epoch's last batch: the next epoch starts its training metrics from zero.
        self._fresh_train_metrics = saved_after_last_batch(checkpoint)

    def on_train_start(self) -> None:
        if self._fresh_train_metrics:
            self.train_acc.reset()
            self.train_loss.reset()
        previous = self.resumed_schedule_steps
        current = getattr(self, "schedule_total_steps", None)
        if previous is not None and current is not None and previous != current:
            log.warning(
                "The LR schedule is rebuilt over %d steps (the checkpoint's run planned %d): training continues "
                "from step %d on the new curve.", current, previous, self.trainer.global_step,
            )
