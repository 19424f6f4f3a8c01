"""summary.json: what a run achieved, on what, with which code and command, written after its final test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint, Timer

from cifar_lit.hardware.plan import HardwarePlan
from cifar_lit.hardware.timing import peak_memory_mb
from cifar_lit.phases import PhaseClock, phase
from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reliability.non_finite import SkippedSteps
from cifar_lit.reliability.run_folder import RunFolderCallback
from cifar_lit.reporting.history import EpochHistory
from cifar_lit.reporting.loggers import log_results
from cifar_lit.reporting.provenance import device_description, versions
from cifar_lit.training.compile_warmup import CompileWarmup

TEST_KEYS = {"test_acc": "test/acc", "test_loss": "test/loss", "test_acc_tta": "test/acc_tta",
             "test_acc_top5": "test/acc_top5"}
HPARAM_METRICS = ("test_acc", "best_val_acc", "target_epoch", "target_seconds", "train_seconds", "epochs_run")


SUMMARY_NAME = "summary.json"


class TargetRecord(Protocol):
    """What the summary reads of the stop-at-target callback (cifar_lit.run.stop_at_target, in a room above)."""

    reached_epoch: int | None
    reached_seconds: float | None

class RunSummary(RunFolderCallback):
    """Collects what fitting achieved when it ends (before testing loads the best checkpoint) and, after the
    final test, writes `<run>/summary.json` and fills TensorBoard's HPARAMS tab with the config beside the results.

    The summary is kept in `summary` for the caller's closing line (rank zero only).
    """

    def __init__(self, *, config: dict[str, Any], command: str, commit: str | None, clock: PhaseClock, timer: Timer,
                 stop: TargetRecord, best: ModelCheckpoint, history: EpochHistory, warmup: CompileWarmup,
                 skipped: SkippedSteps, hardware: HardwarePlan, target: tuple[float | None, str],
                 class_names: tuple[str, ...], run_dir: Path | None = None) -> None:
        super().__init__(run_dir)
        self.config, self.command, self.commit, self.clock = config, command, commit, clock
        self.timer, self.stop, self.best, self.history, self.warmup = timer, stop, best, history, warmup
        self.skipped, self.hardware = skipped, hardware
        self.target, self.target_source = target
        self.class_names = tuple(class_names)
        self.facts: dict[str, Any] = {}
        self.notes: dict[str, Any] = {}  # what the run did before fitting (e.g. the LR range test of --lr auto)
        self.summary: dict[str, Any] | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.collect(trainer, pl_module, trainer.current_epoch, trainer.global_step)

    def collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epochs_run: int, global_steps: int) -> None:
        """What the summary says of training, from the callbacks' state: at the end of fit, or restored from
        last.ckpt when a finished run is only tested (cifar_lit.run.train)."""
        device = trainer.strategy.root_device
        best_score = self.best.best_model_score
        self.facts = {
            "best_val_acc": float(best_score) if best_score is not None else None,
            "target_reached": self.stop.reached_epoch is not None,
            "target_epoch": self.stop.reached_epoch,
            "target_seconds": self.stop.reached_seconds,
            "epochs_run": epochs_run,
            "global_steps": global_steps,
            "train_seconds": self.timer.time_elapsed("train"),
            "warmup_seconds": self.warmup.seconds,
            "compile_cache": self.warmup.cache,
            "skipped_steps": self.skipped.count(),
            "val_acc_per_epoch": [row.get("val_acc") for row in self.history.rows],
            "images_per_second": self.history.steady_images_per_second(),
            "peak_gpu_memory_mb": peak_memory_mb(device),
            "train_started_at": self.history.train_started_at,
            "train_ended_at": self.history.train_ended_at,
            "best_checkpoint": self.best.best_model_path or None,
        }

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.run_dir is not None:
            with phase("reports"):
                self._write(trainer)

    def _write(self, trainer: pl.Trainer) -> None:
        metrics = trainer.callback_metrics
        tested = {key: float(metrics[name]) if name in metrics else None for key, name in TEST_KEYS.items()}
        facts = dict(self.facts)
        process_phases = self.clock.elapsed()
        run_phases = self.clock.cumulative(process_phases)  # one reading: a run of one process adds up exactly
        summary = {
            "best_val_acc": facts.pop("best_val_acc", None),
            **tested,
            "target_acc": self.target,
            "target_source": self.target_source,
            **facts,
            "total_seconds": sum(run_phases.values()),
            "phase_seconds": run_phases,
            "process": {"total_seconds": sum(process_phases.values()), "phase_seconds": process_phases},
            "device": device_description(trainer.strategy.root_device),
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
            "model": trainer.lightning_module.options.model,
            "width": trainer.lightning_module.options.width,
            "dataset": getattr(getattr(trainer.datamodule, "dataset", None), "kind", None),
            "num_classes": len(self.class_names),
            "class_names": list(self.class_names),
            "hardware_plan": self.hardware.as_dict(),
            "versions": versions(),
            "git_commit": self.commit,
            "command": self.command,
            "run_dir": str(self.run_dir),
            "config": self.config,
            **self.notes,
        }
        write_text_atomic(self.run_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        self._log_hparams_view(trainer, summary)
        self.summary = summary

    def _log_hparams_view(self, trainer: pl.Trainer, summary: dict[str, Any]) -> None:
        params = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
                  for key, value in self.config.items()}
        metrics = {f"hp/{key}": float(summary[key]) for key in HPARAM_METRICS if summary.get(key) is not None}
        log_results(trainer, params, metrics)


def closing_line(summary: dict[str, Any]) -> str:
    """The one line train.py prints when a run is done, from the summary it wrote."""
    target, epochs = summary.get("target_acc"), summary["epochs_run"]
    if target is None:
        outcome = f"no target: trained the whole schedule ({epochs} epoch(s))"
    elif summary["target_reached"]:
        outcome = (f"target {target:.0%} reached at epoch {summary['target_epoch']} after "
                   f"{summary['target_seconds']:.1f} s of training")
    else:
        outcome = f"target {target:.0%} not reached in {epochs} epoch(s)"
    test = f"{summary['test_acc']:.2%}" if summary["test_acc"] is not None else "n/a"
    return f"Done: test accuracy {test} (best checkpoint); {outcome}. Run folder: {summary['run_dir']}"
