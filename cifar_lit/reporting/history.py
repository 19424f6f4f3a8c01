"""Per-epoch history of the run: metrics.csv in the run folder, throughput scalars, and the curve PNGs."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from cifar_lit.hardware.timing import Stopwatch, steady_throughput
from cifar_lit.phases import phase
from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reliability.run_folder import RunFolderCallback
from cifar_lit.reporting.plots import curves_figure, save_figure

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


class EpochHistory(RunFolderCallback):
    """Records accuracy, loss, learning rate, epoch time and images/s after every training epoch.

    The rows live in the checkpoint (so a resumed run keeps its whole history), are rewritten to
    `<run>/metrics.csv` every epoch, logged to TensorBoard as `time/epoch_seconds` and `time/images_per_second`,
    and drawn as `accuracy.png` and `loss.png` in the run folder
    when fitting ends.

    Times: `train_seconds` of an epoch runs from its start to the start of its validation, `epoch_seconds` to its
    end; on a GPU they come from CUDA (or MPS) events, read once the epoch's validation has drained the device. A
    checkpoint taken mid-epoch carries the seconds and images of the epoch so far, so the epoch a resumed run
    finishes reports the time of both processes, never the gap between them.
    """

    def __init__(self, run_dir: Path | None = None, curves: bool = True) -> None:
        super().__init__(run_dir)
        self.curves = curves  # accuracy.png and loss.png when fitting ends
        self.rows: list[dict[str, Any]] = []
        self.train_started_at: float | None = None
        self.train_ended_at: float | None = None
        self._stopwatch: Stopwatch | None = None
        self._epoch: int | None = None  # the epoch whose clock is running
        self._epoch_start: tuple[float, Any] | None = None
        self._train_end: tuple[float, Any] | None = None
        self._images = 0
        self._carried = {"epoch": None, "seconds": 0.0, "images": 0}  # of a mid-epoch checkpoint

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_started_at = time.time()
        self._stopwatch = Stopwatch(pl_module.device)
        self._start_epoch(trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch != trainer.current_epoch:
            self._start_epoch(trainer.current_epoch)

    def _start_epoch(self, epoch: int) -> None:
        assert self._stopwatch is not None
        if self._carried["epoch"] != epoch:
            self._carried = {"epoch": None, "seconds": 0.0, "images": 0}
        self._epoch, self._epoch_start, self._train_end = epoch, self._stopwatch.mark(), None
        self._images = 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_ended_at = time.time()

    def steady_images_per_second(self) -> float | None:
        """The run's training throughput (`timing.steady_throughput` of its epochs)."""
        return steady_throughput([row.get("images_per_second") for row in self.rows])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._images += len(batch[1])

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._stopwatch is not None:
            self._train_end = self._stopwatch.mark()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._stopwatch is not None and self._epoch_start is not None
        end = self._stopwatch.mark()
        carried_seconds, carried_images = self._carried["seconds"], self._carried["images"]
        train_seconds = carried_seconds + Stopwatch.seconds(self._epoch_start, self._train_end or end)
        images = carried_images + self._images
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}
        for field, key in METRIC_KEYS.items():
            row[field] = float(metrics[key]) if key in metrics else None
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        row["epoch_seconds"] = carried_seconds + Stopwatch.seconds(self._epoch_start, end)
        row["train_seconds"] = train_seconds
        row["images_per_second"] = images * trainer.world_size / train_seconds if train_seconds > 0 else None
        self.rows.append(row)
        self._carried = {"epoch": None, "seconds": 0.0, "images": 0}
        self._epoch = None
        if trainer.is_global_zero:
            with phase("reports"):
                self._publish(trainer, row)

    def _publish(self, trainer: pl.Trainer, row: dict[str, Any]) -> None:
        scalars = {"time/epoch_seconds": row["epoch_seconds"], "time/images_per_second": row["images_per_second"]}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        self.write_csv(self.run_dir / "metrics.csv")

    def write_csv(self, path: Path) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, buffer.getvalue())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.rows and self.curves:
            with phase("reports"):
                self.save_curves(self.run_dir)

    def save_curves(self, folder: Path) -> list[Path]:
        epochs = [row["epoch"] for row in self.rows]
        written = []
        for key, label, percent in (("acc", "accuracy", True), ("loss", "loss", False)):
            series = {}
            for stage in ("train", "val"):
                points = [(e, row[f"{stage}_{key}"]) for e, row in zip(epochs, self.rows, strict=True)
                          if row.get(f"{stage}_{key}") is not None]
                if points:
                    series[stage] = tuple(zip(*points, strict=True))
            figure = curves_figure(series, label, f"{label.capitalize()} per epoch", percent=percent)
            written.append(save_figure(figure, folder / ("accuracy.png" if key == "acc" else "loss.png")))
        return written

    def state_dict(self) -> dict[str, Any]:
        """The rows, and for a checkpoint taken mid-epoch the epoch's host seconds and images so far."""
        carried = {"epoch": None, "seconds": 0.0, "images": 0}
        if self._epoch is not None and self._epoch_start is not None:
            carried = {"epoch": self._epoch, "images": self._carried["images"] + self._images,
                       "seconds": self._carried["seconds"] + time.perf_counter() - self._epoch_start[0]}
        return {"rows": self.rows, "partial_epoch": carried}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        self._carried = dict(state_dict.get("partial_epoch") or {"epoch": None, "seconds": 0.0, "images": 0})
