"""model_summary.txt: the network's layers, output shapes, parameters and mult-adds (torchinfo), per run and per
report. Lightning's own ModelSummary counts parameters but no mult-adds, so torchinfo gives it with less code."""

from __future__ import annotations

import re
from pathlib import Path

import pytorch_lightning as pl
import torch
from torchinfo import summary

from cifar_lit.models import build_model
from cifar_lit.phases import phase
from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reliability.run_folder import RunFolderCallback

SUMMARY_FILE = "model_summary.txt"
# torchinfo 1.8 labels the mult-adds total with its enum's name ("Units.MEGABYTES") instead of a unit.
UNIT_NAMES = {"Units.NONE": "", "Units.KILOBYTES": "K", "Units.MEGABYTES": "M", "Units.GIGABYTES": "G",
              "Units.TERABYTES": "T"}


def model_summary_text(model: str, width: int, num_classes: int, depth: int = 3) -> str:
    """The table for the network `model` of `width` and `num_classes` (a fresh copy on the CPU, in eval mode: the
    architecture is what is summarised, and the trained network's batch-norm statistics are never touched)."""
    network = build_model(model, num_classes, width).eval()
    stats = summary(network, input_size=(1, 3, 32, 32), col_names=("output_size", "num_params", "mult_adds"),
                    depth=depth, verbose=0, device=torch.device("cpu"), row_settings=("var_names",))
    table = re.sub("|".join(re.escape(name) for name in UNIT_NAMES), lambda m: UNIT_NAMES[m.group(0)], str(stats))
    header = (f"{model}, width {width}, {num_classes} classes: {stats.total_params:,} parameters, "
              f"{stats.total_mult_adds / 1e6:,.1f} M mult-adds per 32x32 image\n\n")
    return header + table + "\n"


def write_model_summary(folder: Path, model: str, width: int, num_classes: int) -> Path:
    return write_text_atomic(Path(folder) / SUMMARY_FILE, model_summary_text(model, width, num_classes))


class ModelSummaryFile(RunFolderCallback):
    """Writes model_summary.txt into the run folder when fitting starts (rank zero; the reports phase)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.run_dir is not None:
            with phase("reports"):
                recipe = pl_module.options
                write_model_summary(self.run_dir, recipe.model, recipe.width, pl_module.num_classes)
