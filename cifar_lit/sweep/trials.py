"""One trial of a sweep: a normal run (`cifar_lit.fit`) in the sweep's own process, with the trial's parameters in
place, in `<logdir>/sweeps/<study>/trial_NNN/`, whose result is the trial's value.

Pruning: the validation error (the accuracy, for an accuracy study, which is maximized) is reported after each
epoch, and Optuna's pruner stops a trial that cannot win; for time_to_target, a trial whose training time passes the
best feasible trial's is stopped at once. A stopped trial ends as a run stopped early: its checkpoints are kept, it is
tested, and its folder's trial.json and summary.json say it was pruned.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, Timer

from cifar_lit.reliability.files import write_text_atomic
from cifar_lit.reporting.summary import SUMMARY_NAME
from cifar_lit.run.options import Options
from cifar_lit.run.train import RunResult, fit
from cifar_lit.sweep.space import SearchSpace

TRIAL_FILE = "trial.json"


class SweepStopped(Exception):
    """A signal stopped the running trial (its run saved last.ckpt): the sweep ends after recording it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


class TrialFailed(Exception):
    """The trial's run ended without a value (no validation, say): the trial fails, the sweep goes on."""


class TrialPruning(Callback):
    """Reports each epoch's validation result to the trial and stops the run when the pruner says so; for
    time_to_target, also once its training seconds pass `time_limit` (the best feasible trial's), on the run's own
    Lightning Timer, the clock its seconds to the target are read from."""

    def __init__(self, trial: optuna.Trial, objective: str, time_limit: float | None) -> None:
        self.trial, self.objective, self.time_limit = trial, objective, time_limit
        self.pruned: str | None = None
        self.seconds = 0.0  # spent reporting to the study: the sweep's cost inside the run

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.time_limit is None or self.pruned:
            return
        timer = next((callback for callback in trainer.callbacks if isinstance(callback, Timer)), None)
        trained = timer.time_elapsed("train") if timer is not None else 0.0
        if trained > self.time_limit:
            self.stop(trainer, f"its {trained:.1f} s of training passed the best trial's {self.time_limit:.1f} s")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned or "val/acc" not in trainer.callback_metrics:
            return
        started = time.perf_counter()
        accuracy = float(trainer.callback_metrics["val/acc"])
        epoch = trainer.current_epoch
        self.trial.report(accuracy if self.objective == "accuracy" else 1.0 - accuracy, step=epoch)
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if not last and self.trial.should_prune():  # after the last epoch there is nothing left to save
            self.stop(trainer, f"the pruner stopped it after epoch {epoch + 1} (val/acc {accuracy:.4f})")
        self.seconds += time.perf_counter() - started

    def stop(self, trainer: pl.Trainer, why: str) -> None:
        self.pruned = why
        trainer.should_stop = True


@dataclass(frozen=True, kw_only=True)
class TrialOutcome:
    """What a trial came to: its run's result, its value for the study, whether it is feasible (for time_to_target:
    it reached the target) and why it was pruned; the seconds `fit` took and the pruning callback's share of them."""

    result: RunResult
    value: float | None
    feasible: bool
    pruned: str | None
    fit_seconds: float
    report_seconds: float


def trial_value(result: RunResult, objective: str) -> tuple[float | None, bool]:
    """(the value for the study, whether the trial is feasible). time_to_target: the seconds of training to the target,
    or, for a trial that did not reach it, its whole training time (infeasible); accuracy: the best val accuracy."""
    if objective == "accuracy":
        return result.best_val_acc, result.best_val_acc is not None
    if result.target_reached and result.seconds_to_target is not None:
        return result.seconds_to_target, True
    return result.train_seconds, False


def record_trial(run_dir: Path | None, record: dict[str, Any]) -> None:
    """The trial in its run folder (trial.json) and in its summary.json, as the study's database has it."""
    if run_dir is None or not run_dir.is_dir():
        return
    write_text_atomic(run_dir / TRIAL_FILE, json.dumps(record, indent=2) + "\n")
    summary_path = run_dir / SUMMARY_NAME
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        summary["trial"] = record
        write_text_atomic(summary_path, json.dumps(summary, indent=2) + "\n")


def run_trial(trial: optuna.Trial, *, base: Options, space: SearchSpace, study_dir: Path, command: str,
              time_limit: float | None) -> TrialOutcome:
    """The trial's run: its parameters on top of `base`, in `study_dir/trial_NNN`."""
    params = {parameter.name: parameter.suggest(trial) for parameter in space.parameters}
    trial.set_user_attr("worker", worker())  # the dashboard then shows which machine runs which trial
    options = base.replace(**params, logdir=str(study_dir), run_name=f"trial_{trial.number:03d}")
    pruning = TrialPruning(trial, space.objective, time_limit)
    started = time.perf_counter()
    result = fit(options, callbacks=[pruning], command=f"{command} (trial {trial.number})")
    fit_seconds = time.perf_counter() - started
    value, feasible = trial_value(result, space.objective)
    state = ("stopped" if result.outcome == "stopped" else "pruned" if pruning.pruned
             else "complete" if result.outcome == "finished" else "failed")
    record_trial(result.run_dir, {"study": trial.study.study_name, "number": trial.number, "params": params,
                                  "objective": space.objective, "value": value, "feasible": feasible,
                                  "state": state, "pruned": pruning.pruned, "stop_reason": result.stop_reason,
                                  "worker": worker()})
    return TrialOutcome(result=result, value=value, feasible=feasible, pruned=pruning.pruned,
                        fit_seconds=fit_seconds, report_seconds=pruning.seconds)


def worker() -> str:
    """host:pid of this process, the worker running a trial."""
    return f"{socket.gethostname()}:{os.getpid()}"
