"""Per-epoch history of the run: metrics.csv in the run folder, throughput scalars, and the curve PNGs."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from cifar_lit.callbacks.run_folder import RunFolderCallback
from cifar_lit.files import write_text_atomic
from cifar_lit.plots import curves_figure, save_figure

HISTORY_FIELDS = (
    "epoch", "step", "train_acc", "train_loss", "val_acc", "val_loss", "val_acc_tta", "lr", "epoch_seconds",
    "train_seconds", "images_per_second",
)
METRIC_KEYS = {
    "train_acc": "train/acc", "train_loss": "train/loss", "val_acc": "val/acc", "val_loss": "val/loss",
    "val_acc_tta": "val/acc_tta",
}


def read_history_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv written by EpochHistory, numbers parsed, blanks as None."""
    with open(path, newline="") as handle:
        return [
            {key: (float(value) if value not in ("", None) else None) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochHistory(RunFolderCallback):
    """Records accuracy, loss, learning rate, epoch time and images/s after every training epoch.

    The rows live in the checkpoint (so a resumed run keeps its whole history), are rewritten to
    `<run>/metrics.csv` every epoch, logged to TensorBoard as `time/epoch_seconds` and `time/images_per_second`,
    and drawn as `accuracy.png` and `loss.png` in the run folder when fitting ends.
    """

    def __init__(self, run_dir: Path | None = None) -> None:
        super().__init__(run_dir)
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = 0.0
        self._train_end: float | None = None
        self._images = 0
        self.train_started_at: float | None = None
        self.train_ended_at: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_started_at = time.time()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module.device)
        self.train_ended_at = time.time()

    def steady_images_per_second(self) -> float | None:
        """Median training throughput over the epochs after the first (which pays for cuDNN autotuning)."""
        rates = [row["images_per_second"] for row in self.rows if row.get("images_per_second")]
        steady = rates[1:] or rates
        return float(sorted(steady)[len(steady) // 2]) if steady else None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module.device)
        self._epoch_start = time.perf_counter()
        self._train_end = None
        self._images = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._images += len(batch[1])

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            _sync(pl_module.device)
            self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module.device)
        now = time.perf_counter()
        train_seconds = (self._train_end or now) - self._epoch_start
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}
        for field, key in METRIC_KEYS.items():
            row[field] = float(metrics[key]) if key in metrics else None
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        row["epoch_seconds"] = now - self._epoch_start
        row["train_seconds"] = train_seconds
        row["images_per_second"] = self._images * trainer.world_size / train_seconds if train_seconds > 0 else None
        self.rows.append(row)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {"time/epoch_seconds": row["epoch_seconds"], "time/images_per_second": row["images_per_second"]},
                    step=trainer.global_step,
                )
            self.write_csv(self.run_dir / "metrics.csv")

    def write_csv(self, path: Path) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, buffer.getvalue())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            self.save_curves(self.run_dir)

    def save_curves(self, folder: Path) -> list[Path]:
        epochs = [row["epoch"] for row in self.rows]
        written = []
        for key, label, percent in (("acc", "accuracy", True), ("loss", "loss", False)):
            series = {}
            for stage in ("train", "val"):
                points = [(e, row[f"{stage}_{key}"]) for e, row in zip(epochs, self.rows)
                          if row.get(f"{stage}_{key}") is not None]
                if points:
                    series[stage] = tuple(zip(*points))
            figure = curves_figure(series, label, f"{label.capitalize()} per epoch", percent=percent)
            written.append(save_figure(figure, folder / ("accuracy.png" if key == "acc" else "loss.png")))
        return written

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
