"""The LR range test (Smith, 2017): `train.py --find-lr` sweeps the learning rate up over a short throwaway run and
suggests the one-cycle peak; `--lr auto` does it first and then trains with the suggestion.

Lightning's Tuner.lr_find runs the sweep on a Trainer of its own (no logger, no checkpoints, its temporary
checkpoint in a temporary folder), so no run folder is touched and nothing is left behind. What is added to it:
- the suggestion is the steepest descent of the smoothed loss against log(LR), up to the loss's minimum (past it
  the loss has diverged): Lightning 2.6.6 takes the gradient against the LR itself, which on an exponential sweep
  leans towards the low end (Lightning issue #21141);
- the loss is smoothed here from the raw losses: Lightning's own smoothing corrects its bias with the step count
  after the optimizer step, one too many, which halves the first points and draws a false rise at the start;
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
SMOOTHING = 0.98  # of the loss curve, as Lightning's
FOLDER = "lr_find"


def smoothed(losses: np.ndarray, beta: float = SMOOTHING) -> np.ndarray:
    """Exponential moving average with its start-up bias corrected (Adam's correction: point i divided by
    1 - beta**(i + 1)); non-finite losses stay non-finite and do not enter the average."""
    out, average, seen = np.full(len(losses), np.nan), 0.0, 0
    for index, loss in enumerate(np.asarray(losses, dtype=float)):
        if np.isfinite(loss):
            average, seen = beta * average + (1 - beta) * loss, seen + 1
            out[index] = average / (1 - beta**seen)
    return out


def steepest_descent_lr(lrs: np.ndarray, losses: np.ndarray, skip_begin: int = SKIP_BEGIN,
                        skip_end: int = SKIP_END) -> float | None:
    """The LR where the (smoothed) loss falls fastest per unit of log(LR), up to where the loss is lowest; None when
    the sweep has too few finite points."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    end = len(lrs) - skip_end if skip_end else len(lrs)
    lrs, losses = lrs[skip_begin:end], losses[skip_begin:end]
    finite = np.isfinite(losses) & (lrs > 0)
    lrs, losses = lrs[finite], losses[finite]
    if len(lrs) < 3:
        return None
    lowest = int(np.argmin(losses))
    if lowest >= 2:
        lrs, losses = lrs[: lowest + 1], losses[: lowest + 1]
    slope = np.gradient(losses, np.log(lrs))
    return float(lrs[int(np.argmin(slope))])


def keep_group_ratios(groups: list[dict[str, Any]], ratios: list[float]) -> None:
    """Every parameter group's LR set to the first group's times its ratio to it (Lightning's sweep sets every group
    to the same LR)."""
    for group, ratio in zip(groups, ratios, strict=True):
        group["lr"] = groups[0]["lr"] * ratio


class SweepClassifier(CIFARClassifier):
    """The network of the sweep. Its own hooks, because Lightning's lr_find replaces the Trainer's callbacks with
    its own for the sweep: before each step the groups keep their LR ratios, after it the raw loss is kept (the sweep
    reads every loss anyway) and the groups' LRs with it."""

    def __init__(self, group_ratios: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group_ratios = group_ratios
        self.sweep_losses: list[float] = []
        self.sweep_group_lrs: list[list[float]] = []

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        keep_group_ratios(self.trainer.optimizers[0].param_groups, self.group_ratios)
        self.sweep_group_lrs.append([group["lr"] for group in self.trainer.optimizers[0].param_groups])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.sweep_losses.append(float(loss) if loss is not None else float("nan"))


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    suggested_lr: float | None  # the real LR for this run's global batch
    suggested_flag_lr: float | None  # what --lr means: per lr_reference_batch_size images
    lightning_suggestion: float | None
    global_batch: int
    lr_reference_batch_size: int | None
    steps: int
    folder: str
    group_lrs: list[list[float]]  # per step: each parameter group's LR (conv/linear weights, norm/bias)
    device: str  # what the sweep ran on, named as every record names it (provenance.device_description)

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "method": "steepest descent of the smoothed loss against log(LR), "
                                          f"skipping {SKIP_BEGIN} points at the start and {SKIP_END} at the end",
                "smoothing": f"exponential moving average, beta {SMOOTHING}, start-up bias corrected",
                "versions": versions()}


def run_range_test(config: dict[str, Any], hardware: HardwarePlan, datamodule: pl.LightningDataModule,
                   num_classes: int, out: Path) -> RangeTest:
    """Sweep on a fresh network (eager, one device), write lr_find.png and lr_find.json into `out`."""
    # The sweep sets the LR itself (1.0 is a placeholder for `--lr auto`); it runs eager, on one device.
    kwargs = {**class_kwargs(CIFARClassifier, config), "lr": 1.0, "compile": False, "compile_warmup": False}
    model = SweepClassifier([1.0, config["norm_bias_lr_scale"]], num_classes=num_classes, **kwargs)
    precision, plugins = precision_settings(hardware)
    steps = config["lr_find_steps"]
    with tempfile.TemporaryDirectory(prefix="cifar_lit_lr_find_") as scratch:
        trainer = pl.Trainer(
            accelerator=hardware.accelerator, devices=1, precision=precision, plugins=plugins, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=scratch, max_epochs=config["max_epochs"],
        )
        finder = Tuner(trainer).lr_find(model, datamodule=datamodule, min_lr=MIN_LR, max_lr=MAX_LR,
                                        num_training=steps, early_stop_threshold=4.0, update_attr=False)
    lrs = np.asarray(finder.results["lr"], dtype=float)
    raw = np.asarray(model.sweep_losses[: len(lrs)], dtype=float)
    losses = smoothed(raw)
    suggested = steepest_descent_lr(lrs, losses)
    global_batch = config["batch_size"]  # one device in the sweep, and what --lr is scaled by per device count
    reference = config["lr_reference_batch_size"]
    flag_lr = None if suggested is None else suggested * (reference / global_batch if reference else 1.0)
    result = RangeTest(lrs.tolist(), losses.tolist(), raw.tolist(), suggested, flag_lr, finder.suggestion(),
                       global_batch, reference, len(lrs), str(out), model.sweep_group_lrs[: len(lrs)],
                       device_description(hardware.device.torch_device))
    out.mkdir(parents=True, exist_ok=True)
    title = f"LR range test: {len(lrs)} steps at batch {global_batch}"
    save_figure(lr_find_figure(lrs, losses, suggested, title, result.lightning_suggestion), out / "lr_find.png")
    write_text_atomic(out / "lr_find.json", json.dumps(result.as_record(), indent=2) + "\n")
    return result
