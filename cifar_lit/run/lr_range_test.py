"""The LR range test (Smith, 2017): `train.py --find-lr` sweeps the learning rate up over a short throwaway run and
suggests the one-cycle peak; `--lr auto` does it first and then trains with the suggestion.

Lightning's Tuner.lr_find runs the sweep on a Trainer of its own (no logger, no checkpoints, its temporary
checkpoint in a temporary folder), so no run folder is touched and nothing is left behind. What is added to it:
- the suggestion is the steepest descent of the smoothed loss against log(LR): Lightning 2.6.6 takes the gradient
  against the LR itself, which on an exponential sweep leans towards the low end (Lightning issue #21141);
- the norm/bias parameter group keeps its own LR ratio (`norm_bias_lr_scale`) while Lightning's sweep sets every
  group to the same rate;
- the swept LR is this run's real LR for its global batch, and the printed suggestion is converted back to what
  `--lr` means (per `lr_reference_batch_size` images).
Results: `<logdir>/lr_find/lr_find.png` (loss against LR, log scale, the suggestion marked) and `lr_find.json`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner

from cifar_lit.hardware.plan import HardwarePlan
from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reporting.plots import lr_find_figure, save_figure
from cifar_lit.reporting.provenance import device_description, versions
from cifar_lit.run.config import class_kwargs
from cifar_lit.run.trainer import precision_settings
from cifar_lit.training.module import CIFARClassifier

log = logging.getLogger("cifar_lit")

MIN_LR, MAX_LR = 1e-4, 10.0  # the sweep's range, in real LR for the run's global batch
SKIP_BEGIN, SKIP_END = 10, 1  # points left out of the slope at each end, as Lightning's own suggestion does
FOLDER = "lr_find"


def steepest_descent_lr(lrs: np.ndarray, losses: np.ndarray, skip_begin: int = SKIP_BEGIN,
                        skip_end: int = SKIP_END) -> float | None:
    """The LR where the loss falls fastest per unit of log(LR); None when the sweep has too few finite points."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    end = len(lrs) - skip_end if skip_end else len(lrs)
    lrs, losses = lrs[skip_begin:end], losses[skip_begin:end]
    finite = np.isfinite(losses) & (lrs > 0)
    if finite.sum() < 3:
        return None
    slope = np.gradient(losses[finite], np.log(lrs[finite]))
    return float(lrs[finite][int(np.argmin(slope))])


class KeepGroupRatios(pl.Callback):
    """Before each sweep step, sets every parameter group's LR to the first group's times its ratio to it."""

    def __init__(self, ratios: list[float]) -> None:
        self.ratios = ratios

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        groups = trainer.optimizers[0].param_groups
        for group, ratio in zip(groups, self.ratios, strict=True):
            group["lr"] = groups[0]["lr"] * ratio


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]
    suggested_lr: float | None  # the real LR for this run's global batch
    suggested_flag_lr: float | None  # what --lr means: per lr_reference_batch_size images
    lightning_suggestion: float | None
    global_batch: int
    lr_reference_batch_size: int | None
    steps: int
    folder: str

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "method": "steepest descent of the smoothed loss against log(LR), "
                                          f"skipping {SKIP_BEGIN} points at the start and {SKIP_END} at the end",
                "device": device_description(), "versions": versions()}


def run_range_test(config: dict[str, Any], hardware: HardwarePlan, datamodule: pl.LightningDataModule,
                   num_classes: int, out: Path) -> RangeTest:
    """Sweep on a fresh network (eager, one device), write lr_find.png and lr_find.json into `out`."""
    # The sweep sets the LR itself (1.0 is a placeholder for `--lr auto`); it runs eager, on one device.
    kwargs = {**class_kwargs(CIFARClassifier, config), "lr": 1.0, "compile": False, "compile_warmup": False}
    model = CIFARClassifier(num_classes=num_classes, **kwargs)
    precision, plugins = precision_settings(hardware)
    steps = config["lr_find_steps"]
    with tempfile.TemporaryDirectory(prefix="cifar_lit_lr_find_") as scratch:
        trainer = pl.Trainer(
            accelerator=hardware.accelerator, devices=1, precision=precision, plugins=plugins, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=scratch, max_epochs=config["max_epochs"],
            callbacks=[KeepGroupRatios([1.0, config["norm_bias_lr_scale"]])],
        )
        finder = Tuner(trainer).lr_find(model, datamodule=datamodule, min_lr=MIN_LR, max_lr=MAX_LR,
                                        num_training=steps, early_stop_threshold=4.0, update_attr=False)
    lrs, losses = np.asarray(finder.results["lr"], dtype=float), np.asarray(finder.results["loss"], dtype=float)
    suggested = steepest_descent_lr(lrs, losses)
    global_batch = config["batch_size"]  # one device in the sweep, and what --lr is scaled by per device count
    reference = config["lr_reference_batch_size"]
    flag_lr = None if suggested is None else suggested * (reference / global_batch if reference else 1.0)
    result = RangeTest(lrs.tolist(), losses.tolist(), suggested, flag_lr, finder.suggestion(), global_batch,
                       reference, len(lrs), str(out))
    out.mkdir(parents=True, exist_ok=True)
    title = f"LR range test: {len(lrs)} steps at batch {global_batch}"
    save_figure(lr_find_figure(lrs, losses, suggested, title, result.lightning_suggestion), out / "lr_find.png")
    write_text_atomic(out / "lr_find.json", json.dumps(result.as_record(), indent=2) + "\n")
    return result
