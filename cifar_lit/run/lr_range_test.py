"""The LR range test (Smith, 2017): `train.py --find-lr` sweeps the learning rate up over a short throwaway run and
suggests the one-cycle peak; `--lr auto` does it first and then trains with the suggestion.

Lightning's Tuner.lr_find runs the sweep on a Trainer of its own (no logger, no checkpoints, its temporary
checkpoint in a temporary folder), so no run folder is touched and nothing is left behind. What is added to it:
- the sweep runs the steps asked for, re-reading the training set as often as that takes, whatever --max-epochs
  says (the throwaway Trainer gets the epochs the steps need);
- the loss is smoothed by a centred average over a quarter of a decade of LR: Lightning's exponential average (and
  fastai's) lags by about 50 steps at its beta of 0.98, which on a 100-step sweep shifts the curve half a decade to
  the right and put the suggestion on the loss's minimum;
- the suggestion is the steepest descent of that curve against log(LR), searched below the LR of its minimum (past
  it the loss rises); Lightning 2.6.6 takes the gradient against the LR itself, which on an exponential sweep leans
  towards the low end (Lightning issue #21141);
- no suggestion when the loss never fell below what guessing scores (predicting the class frequencies of the
  training labels, label smoothing included): pure noise, too few steps, or a broken set-up;
- the norm/bias parameter group keeps its own LR ratio (`norm_bias_lr_scale`) while Lightning's sweep sets every
  group to the same rate;
- the swept LR is this run's real LR for its global batch, and the printed suggestion is converted back to what
  `--lr` means (per `lr_reference_batch_size` images).
Results: `lr_find.png` (loss against LR, log scale, the suggestion marked) and `lr_find.json`, in the run's folder
(`--lr auto`) or in `<logdir>/lr_find_N/` (`--find-lr`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.hardware.plan import HardwarePlan
from cifar_lit.reliability.errors import UserError
from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reliability.run_folder import next_version_dir
from cifar_lit.reporting.plots import lr_find_figure, save_figure
from cifar_lit.reporting.provenance import device_description, versions
from cifar_lit.run.options import Options
from cifar_lit.run.trainer import precision_settings
from cifar_lit.training.module import CIFARClassifier
from cifar_lit.training.options import ModelOptions

log = logging.getLogger("cifar_lit")

MIN_LR, MAX_LR = 1e-4, 10.0  # the sweep's range, in real LR for the run's global batch
SMOOTHING_DECADES = 0.25  # half-width of the centred average, in decades of LR
DIVERGED = 4.0  # Lightning stops the sweep when the loss exceeds this many times its lowest
MIN_FALL = 0.05  # the lowest smoothed loss must lie this share below guessing's loss to count as learning
FOLDER = "lr_find"


def centred_average(losses: np.ndarray, half: int) -> np.ndarray:
    """Each point the mean of the finite losses within `half` points on either side (fewer at the ends): no lag."""
    losses = np.asarray(losses, dtype=float)
    out = np.full(len(losses), np.nan)
    for index in range(len(losses)):
        window = losses[max(0, index - half) : index + half + 1]
        window = window[np.isfinite(window)]
        if len(window) and np.isfinite(losses[index]):
            out[index] = window.mean()
    return out


def half_window(lrs: np.ndarray) -> int:
    """Points in SMOOTHING_DECADES of an exponential sweep (at least one)."""
    decades = math.log10(lrs[-1] / lrs[0]) if len(lrs) > 1 else 1.0
    return max(1, round(SMOOTHING_DECADES * (len(lrs) - 1) / max(decades, 1e-9)))


def guessing_loss(labels: np.ndarray, num_classes: int, label_smoothing: float) -> float:
    """The training loss of a network that ignores its input and predicts the class frequencies: the entropy of
    the (label-smoothed) average target. A sweep that never gets below it has learnt nothing about the images."""
    frequencies = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes) / max(1, len(labels))
    target = (1.0 - label_smoothing) * frequencies + label_smoothing / num_classes
    target = target[target > 0]
    return float(-(target * np.log(target)).sum())


def steepest_descent_lr(lrs: np.ndarray, losses: np.ndarray, skip: int) -> float | None:
    """The LR where the (smoothed) loss falls fastest per unit of log(LR), below the LR of its lowest point and
    `skip` points in from the start (where the centred average is one-sided); None when the loss is lowest there."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    finite = np.isfinite(losses) & (lrs > 0)
    lrs, losses = lrs[finite], losses[finite]
    if len(lrs) < 2 * skip + 3:
        return None
    lowest = int(np.argmin(losses))
    if lowest <= skip + 1:
        return None
    slope = np.gradient(losses, np.log(lrs))
    return float(lrs[skip + int(np.argmin(slope[skip:lowest]))])


def keep_group_ratios(groups: list[dict[str, Any]], ratios: list[float]) -> None:
    """Every parameter group's LR set to the first group's times its ratio to it (Lightning's sweep sets every group
    to the same LR)."""
    for group, ratio in zip(groups, ratios, strict=True):
        group["lr"] = groups[0]["lr"] * ratio


class SweepClassifier(CIFARClassifier):
    """The network of the sweep. Its own hooks, because Lightning's lr_find replaces the Trainer's callbacks with
    its own for the sweep: before each step the groups keep their LR ratios, after it the raw loss is kept (the sweep
    reads every loss anyway) and the groups' LRs with it."""

    def __init__(self, options: ModelOptions, num_classes: int, group_ratios: list[float]) -> None:
        super().__init__(options, num_classes)
        self.group_ratios = group_ratios
        self.sweep_losses: list[float] = []
        self.sweep_group_lrs: list[list[float]] = []

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        keep_group_ratios(self.trainer.optimizers[0].param_groups, self.group_ratios)
        self.sweep_group_lrs.append([group["lr"] for group in self.trainer.optimizers[0].param_groups])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.sweep_losses.append(float(loss) if loss is not None else float("nan"))


@dataclass(kw_only=True)
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed (centred average)
    raw_losses: list[float]
    suggested_lr: float | None  # the real LR for this run's global batch
    suggested_flag_lr: float | None  # what --lr means: per lr_reference_batch_size images
    lightning_suggestion: float | None
    global_batch: int
    lr_reference_batch_size: int | None
    steps: int  # steps the sweep ran
    steps_asked: int
    guessing_loss: float
    lowest_loss: float | None
    lowest_loss_lr: float | None
    problem: str | None  # why there is no suggestion, in words for the user
    stopped: str | None  # why the sweep ended before its last step (the loss diverged), in words
    folder: str
    group_lrs: list[list[float]]  # per step: each parameter group's LR (conv/linear weights, norm/bias)
    device: str  # what the sweep ran on, named as every record names it (provenance.device_description)

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "method": "steepest descent of the smoothed loss against log(LR), below the LR of "
                                          "its lowest point",
                "smoothing": f"centred moving average over {SMOOTHING_DECADES} decade of LR on either side",
                "versions": versions()}


def judge(lrs: np.ndarray, raw: np.ndarray, guess: float, steps_asked: int) -> dict[str, Any]:
    """The smoothed curve, the suggestion and, without one, the reason in words."""
    half = half_window(lrs) if len(lrs) else 1
    losses = centred_average(raw, half)
    finite = np.isfinite(losses)
    lowest = int(np.nanargmin(losses)) if finite.any() else None
    lowest_loss = float(losses[lowest]) if lowest is not None else None
    stopped = None
    if len(lrs) < steps_asked:
        where = f" at LR {lrs[-1]:.3g}" if len(lrs) else ""
        stopped = (f"the sweep stopped after {len(lrs)} of {steps_asked} steps: the loss rose above {DIVERGED:g}x "
                   f"its lowest{where} (it diverged)")
    suggested, problem = None, None
    if lowest_loss is None or lowest_loss > (1.0 - MIN_FALL) * guess:
        problem = (f"the training loss never fell below what guessing scores ({guess:.3f}: predicting the class "
                   f"frequencies; its lowest was {lowest_loss if lowest_loss is None else round(lowest_loss, 3)}), "
                   "so the sweep learnt nothing to suggest an LR from. The data may be noise or mislabelled, or the "
                   "sweep too short")
    else:
        suggested = steepest_descent_lr(lrs, losses, half)
        if suggested is None:
            problem = "the loss was lowest at the very start of the sweep, so there is no descent to suggest an LR from"
    return {"losses": losses, "suggested": suggested, "problem": problem, "stopped": stopped,
            "lowest_loss": lowest_loss, "lowest_loss_lr": float(lrs[lowest]) if lowest is not None else None}


def run_range_test(options: Options, hardware: HardwarePlan, datamodule: ImageDataModule, out: Path) -> RangeTest:
    """Sweep on a fresh network (eager, one device), write lr_find.png and lr_find.json into `out`."""
    # The sweep sets the LR itself (1.0 is a placeholder for `--lr auto`); it runs eager, on one device.
    num_classes = len(datamodule.class_names)
    recipe = dataclasses.replace(options.model, lr=1.0, compile=False, compile_warmup=False)
    model = SweepClassifier(recipe, num_classes, [1.0, options.model.norm_bias_lr_scale])
    precision, plugins = precision_settings(hardware)
    steps = options.run.lr_find_steps
    # As many epochs as the steps need: the sweep re-reads a small training set instead of stopping short.
    epochs = -(-steps // max(1, datamodule.train_batches_per_epoch()))
    with tempfile.TemporaryDirectory(prefix="cifar_lit_lr_find_") as scratch:
        trainer = pl.Trainer(
            accelerator=hardware.accelerator, devices=1, precision=precision, plugins=plugins, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=scratch, max_epochs=epochs,
        )
        finder = Tuner(trainer).lr_find(model, datamodule=datamodule, min_lr=MIN_LR, max_lr=MAX_LR,
                                        num_training=steps, early_stop_threshold=DIVERGED, update_attr=False)
    lrs = np.asarray(finder.results["lr"], dtype=float)
    raw = np.asarray(model.sweep_losses[: len(lrs)], dtype=float)
    guess = guessing_loss(datamodule.splits["train"].labels, num_classes, options.model.label_smoothing)
    verdict = judge(lrs, raw, guess, steps)
    suggested = verdict["suggested"]
    global_batch = options.model.batch_size  # one device in the sweep, and what --lr is scaled by per device count
    reference = options.model.lr_reference_batch_size
    flag_lr = None if suggested is None else suggested * (reference / global_batch if reference else 1.0)
    result = RangeTest(lrs=lrs.tolist(), losses=verdict["losses"].tolist(), raw_losses=raw.tolist(),
                       suggested_lr=suggested, suggested_flag_lr=flag_lr, lightning_suggestion=finder.suggestion(),
                       global_batch=global_batch, lr_reference_batch_size=reference, steps=len(lrs), steps_asked=steps,
                       guessing_loss=guess, lowest_loss=verdict["lowest_loss"],
                       lowest_loss_lr=verdict["lowest_loss_lr"], problem=verdict["problem"],
                       stopped=verdict["stopped"], folder=str(out), group_lrs=model.sweep_group_lrs[: len(lrs)],
                       device=device_description(hardware.device.torch_device))
    out.mkdir(parents=True, exist_ok=True)
    title = f"LR range test: {len(lrs)} steps at batch {global_batch}"
    figure = lr_find_figure(lrs, verdict["losses"], suggested, title=title,
                            lightning_suggested=result.lightning_suggestion, raw_losses=raw, guessing_loss=guess)
    save_figure(figure, out / "lr_find.png")
    record = {key: value for key, value in result.as_record().items() if key != "folder"}  # it is where it lies
    write_text_atomic(out / "lr_find.json", json.dumps(record, indent=2) + "\n")
    return result


def suggest_lr(options: Options, hardware: HardwarePlan, datamodule: ImageDataModule) -> RangeTest:
    """Run the LR range test into a new `<logdir>/lr_find_N/` and print its suggestion; a sweep that gives none
    is a UserError saying why and what to do."""
    out = next_version_dir(Path(options.run.logdir), f"{FOLDER}_")
    result = run_range_test(options, hardware, datamodule, out)
    if result.stopped:
        log.info("LR range test: %s.", result.stopped)
    if result.suggested_flag_lr is None:
        raise UserError(f"The LR range test ({result.steps} steps) gives no suggestion: {result.problem} (see "
                        f"{out / 'lr_find.png'}). Give --lr a number (0.2, the default, is the 85% recipe's), or "
                        "sweep longer with --lr-find-steps.")
    print(f"Suggested --lr: {result.suggested_flag_lr:.3g} (the peak LR per {result.lr_reference_batch_size} "
          f"images; {result.suggested_lr:.3g} at this run's batch of {result.global_batch}). Plot: "
          f"{out / 'lr_find.png'}")
    return result
