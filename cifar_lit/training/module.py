"""The LightningModule: ResNet18, its loss, accuracy per stage, and the optimizer with its per-step schedule."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from cifar_lit.lightning_compat import saved_after_last_batch, training_steps
from cifar_lit.models import build_model
from cifar_lit.reliability.checkpoints import load_checkpoint
from cifar_lit.reliability.option_types import from_values
from cifar_lit.training.compile_warmup import compile_options
from cifar_lit.training.metrics import EvaluationSums, RunningMean, evaluate_batch, training_sums
from cifar_lit.training.optim import build_scheduler, build_sgd, scaled_lr
from cifar_lit.training.options import ModelOptions

log = logging.getLogger(__name__)


TOP5_ABOVE_CLASSES = 10  # top-5 accuracy is reported for data sets with more classes than this


class CIFARClassifier(pl.LightningModule):
    """A CIFAR network (the ResNet18 by default) for any number of classes, trained with nesterov SGD and a
    per-step LR schedule. `options` is the recipe (`ModelOptions`); `num_classes` comes from the data.

    Its hyperparameters are the recipe's fields, flat, with `num_classes`: what Lightning logs and checkpoints keep,
    as every earlier run's checkpoint holds them (`from_hyperparameters` reads them back).
    """

    def __init__(self, options: ModelOptions | None = None, num_classes: int = 10) -> None:
        super().__init__()
        self.options = options = options if options is not None else ModelOptions()
        self.save_hyperparameters({"num_classes": num_classes, **asdict(options)})
        self.num_classes = num_classes
        self.model = build_model(options.model, num_classes, options.width)
        self.train_criterion = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)
        # Training: running accuracy and loss, one addition each per step (training.metrics). Their sums go into
        # checkpoints, so an epoch resumed from a mid-epoch checkpoint reports what an uninterrupted one would.
        self.train_acc = RunningMean()
        self.train_loss = RunningMean()
        self.train_acc.persistent(True)
        self.train_loss.persistent(True)
        self._fresh_train_metrics = False
        self._train_metrics_logged_in: int | None = None  # the epoch in which they were last handed to Lightning
        # Validation and test: everything an evaluation reports, from one vector of sums per batch.
        self.val_sums = EvaluationSums(num_classes)
        self.test_sums = EvaluationSums(num_classes)
        # The last evaluation of each stage (accuracy, loss, per-class accuracy, confusion matrix), on the device:
        # the figure callbacks copy it to the host only when they draw.
        self.evaluation: dict[str, dict[str, torch.Tensor]] = {}
        self._compiled = False
        self.resumed_schedule_steps: int | None = None

    @classmethod
    def from_hyperparameters(cls, hparams: Mapping[str, Any], **changes: Any) -> CIFARClassifier:
        """The module a checkpoint's hyperparameters describe (those of older runs too: what they lack has its
        default), with `changes` to the recipe (e.g. compile=False to evaluate)."""
        options = dataclasses.replace(from_values(ModelOptions, hparams), **changes)
        return cls(options, num_classes=int(hparams.get("num_classes", 10)))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, map_location: Any = None,  # type: ignore[override]
                             **changes: Any) -> CIFARClassifier:
        """The trained module of a checkpoint, loaded safely (weights only). Lightning's own would build the module
        from its constructor's arguments, and the recipe's fields are saved flat, not as one."""
        checkpoint = load_checkpoint(Path(checkpoint_path), resuming=False)
        module = cls.from_hyperparameters(checkpoint.get("hyper_parameters") or {}, **changes)
        module.load_state_dict(checkpoint["state_dict"])
        return module.to(map_location) if map_location is not None else module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    # ------------------------------------------------------------------------------------------------- set-up

    def configure_model(self) -> None:
        if self.options.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.options.compile and not self._compiled:
            options = compile_options(self.options.compile_mode)
            self.train_forward = torch.compile(self.train_forward, **options)
            self.eval_forward = torch.compile(self.eval_forward, **options)
            self._compiled = True

    # ------------------------------------------------------------------------------------------------- steps

    def train_forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network, loss and the step's metric sums: one graph when compiled."""
        logits = self.model(images)
        loss = self.train_criterion(logits, labels)
        return loss, training_sums(logits, labels, loss)

    def eval_forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network (twice with flip TTA) and the batch's evaluation sums: one graph when compiled."""
        return evaluate_batch(self.model, images, labels, num_classes=self.num_classes, flip_tta=self.options.flip_tta)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss, sums = self.train_forward(images, labels)
        self.train_acc.update(sums[0:2])
        self.train_loss.update(sums[2:4])
        if self._train_metrics_logged_in != self.current_epoch:
            # Lightning reads a logged metric object when the epoch ends, so handing it over once per epoch is
            # enough; every call walks and moves the metric's state, most of the loop's cost per step.
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
            self._train_metrics_logged_in = self.current_epoch
        if self._logging_step():
            # Not on the progress bar: Lightning turns progress-bar values into numbers after every step, a host
            # sync each time (cifar_lit.run.progress shows the loss without one).
            self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        return loss

    def _logging_step(self) -> bool:
        """Whether the loggers write step-level scalars after this step: the loss is handed to Lightning only
        then, so the other steps spend nothing on it."""
        return (self.trainer.global_step + 1) % self.trainer.log_every_n_steps == 0

    def _evaluation_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        """Validation and test alike: the batch's evaluation sums into the stage's metric; predictions for the
        image-grid callback."""
        images, labels = batch
        sums, predictions = self.eval_forward(images, labels)
        getattr(self, f"{stage}_sums").update(sums)
        return {"preds": predictions}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluation_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluation_step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> tuple[torch.Tensor, ...]:
        """Class probabilities of a batch of network inputs; what rides along with them (indices, errors) is handed
        back as it came."""
        images, *rest = batch
        return (self(images).float().softmax(dim=1), *rest)

    def _log_evaluation(self, stage: str) -> None:
        """Log `<stage>/acc`, `<stage>/loss` (and `<stage>/acc_tta`; `<stage>/acc_top5` above ten classes) and keep
        the whole evaluation for figures."""
        metric = getattr(self, f"{stage}_sums")
        results = metric.compute()  # summed over all processes
        metric.reset()
        self.log(f"{stage}/acc", results["acc"], prog_bar=stage == "val")
        self.log(f"{stage}/loss", results["loss"])
        if self.options.flip_tta:
            self.log(f"{stage}/acc_tta", results["acc_tta"])
        if self.num_classes > TOP5_ABOVE_CLASSES:
            self.log(f"{stage}/acc_top5", results["acc_top5"])
        self.evaluation[stage] = results

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    # --------------------------------------------------------------------------------------------- optimization

    def peak_lr(self) -> float:
        """`lr`, scaled by the global batch (`batch_size` x processes) / `lr_reference_batch_size` when that is set."""
        recipe = self.options
        if recipe.lr == "auto":  # preflight's LR range test puts its suggestion in place before a module trains
            raise ValueError("lr='auto' is settled by the LR range test (train.py --lr auto) before training")
        processes = self.trainer.world_size if self._trainer is not None else 1
        return scaled_lr(recipe.lr, recipe.batch_size * processes, recipe.lr_reference_batch_size)

    def total_training_steps(self) -> int:
        """Optimizer steps in the whole run, counted from the DataModule's loader length. No hook argument gives it:
        Lightning's own count, `trainer.estimated_stepping_batches`, starts the training loader before a checkpoint
        is restored (`lightning_compat.training_steps`)."""
        return training_steps(self.trainer, self.trainer.datamodule.train_batches_per_epoch())

    def build_optimizer(self, total_steps: int) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
        """The recipe's SGD and its per-step schedule over `total_steps`: what Lightning steps, and what the bare loop
        (cifar_lit.bench.bare_loop) steps itself."""
        recipe = self.options
        optimizer = build_sgd(self.model, lr=self.peak_lr(), momentum=recipe.momentum, nesterov=recipe.nesterov,
                              weight_decay=recipe.weight_decay, norm_bias_weight_decay=recipe.norm_bias_weight_decay,
                              norm_bias_lr_scale=recipe.norm_bias_lr_scale, fused=recipe.fused_sgd)
        scheduler = build_scheduler(optimizer, recipe.schedule, total_steps=total_steps,
                                    warmup_fraction=recipe.warmup_fraction, start_factor=recipe.lr_start_factor,
                                    end_factor=recipe.lr_end_factor)
        return optimizer, scheduler

    def configure_optimizers(self) -> dict[str, Any]:
        total_steps = self.total_training_steps()
        optimizer, scheduler = self.build_optimizer(total_steps)
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
