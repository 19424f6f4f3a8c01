"""One run, as named steps: settle the options (and a resume), plan the hardware, prepare the data, the LR and the
network (`run/preflight.py`), then fit, test and record in the run folder.

`fit` is the Python entry (`cifar_lit.fit`): it returns a `RunResult`. `main` is train.py: it turns the result, or
the user mistake or signal that ended the run before it had a folder, into the exit status, in one place
(`exit_status`): 0 when the run ended as asked, 2 for a user error (one `error:` paragraph), 3 for a non-finite loss,
128 + the signal number for a signal (after last.ckpt is saved).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback

from cifar_lit import phases
from cifar_lit.hardware.memory import out_of_memory_as_error
from cifar_lit.hardware.timing import release_memory, reset_peak_memory
from cifar_lit.lightning_compat import (
    agree_on_stop_every_step,
    epochs_completed,
    hide_unactionable_messages,
    is_lightning_sigterm,
    keep_own_signal_handlers,
    release_callbacks,
    signal_other_processes,
)
from cifar_lit.phases import PhaseClock
from cifar_lit.reliability.checkpoints import CHECKPOINT_FOLDER, LAST_NAME
from cifar_lit.reliability.disk import out_of_space_as_error
from cifar_lit.reliability.errors import UserError
from cifar_lit.reliability.non_finite import NonFiniteLoss
from cifar_lit.reliability.run_folder import choose_run_dir, holding, remove_if_unused
from cifar_lit.reliability.signals import Interrupted, SignalGuard, StopRequested
from cifar_lit.reporting.loggers import close_loggers
from cifar_lit.reporting.provenance import command_line, git_commit
from cifar_lit.reporting.summary import closing_line
from cifar_lit.run import messages
from cifar_lit.run.config import check_options, parse_options
from cifar_lit.run.lr_range_test import FOLDER as LR_FIND_FOLDER
from cifar_lit.run.options import Options
from cifar_lit.run.preflight import (
    Prepared,
    check_loggers,
    check_network,
    choose_lr,
    dry_run_report,
    plan,
    prepare_data,
    settle,
)
from cifar_lit.run.resume import restore_callback_states
from cifar_lit.run.trainer import RunCallbacks, build_callbacks, build_trainer
from cifar_lit.training.compile_cache import compile_cache
from cifar_lit.training.module import CIFARClassifier

log = logging.getLogger("cifar_lit")

# How a run ended. "finished": trained and tested (or only tested: a resume of a finished, untested run);
# "nothing_to_do": a resume with nothing left; "dry_run", "config_printed", "lr_found", "fast_dev_run": what those
# flags ask;
# "stopped": a signal, after last.ckpt was saved; "non_finite_loss": the loss became NaN or infinite.
Outcome = Literal["finished", "nothing_to_do", "dry_run", "config_printed", "lr_found", "fast_dev_run", "stopped",
                  "non_finite_loss"]
EXIT_STATUS = {"finished": 0, "nothing_to_do": 0, "dry_run": 0, "config_printed": 0, "lr_found": 0,
               "fast_dev_run": 0, "non_finite_loss": 3}
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = EXIT_STATUS["non_finite_loss"]


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a run came to: its folder, accuracies, the seconds of training to the target, the epochs it trained,
    and whether it was stopped before its end and why (`stop_reason`: the signal, or the non-finite loss). With
    --find-lr, `suggested_lr` is the range test's suggestion for --lr and `run_dir` its folder."""

    outcome: Outcome
    run_dir: Path | None = None
    best_val_acc: float | None = None
    test_acc: float | None = None
    target_acc: float | None = None
    target_reached: bool = False
    seconds_to_target: float | None = None
    train_seconds: float | None = None
    epochs: int | None = None
    global_steps: int | None = None
    stop_reason: str | None = None
    signum: int | None = None
    suggested_lr: float | None = None

    @property
    def stopped(self) -> bool:
        return self.outcome in ("stopped", "non_finite_loss")


def exit_status(result: RunResult) -> int:
    """train.py's exit status for a run that ended with `result` (user errors and early signals: `main`)."""
    return 128 + result.signum if result.outcome == "stopped" and result.signum else EXIT_STATUS[result.outcome]


def fit(options: Options | Sequence[str] = (), *, callbacks: Sequence[Callback] = (),
        started: float | None = None, command: str | None = None) -> RunResult:
    """Train as `python train.py` does and return what came of it.

    `options`: typed `Options` (`Options.of(max_epochs=2, width=16)`) or a train.py command line. `callbacks`: more
    Lightning callbacks, run before the run's own. A user mistake raises a UserError (ConfigError, DataError, ...)
    before anything is written; a signal during training stops the run after saving last.ckpt, and the result says
    so; a signal before the run has a folder raises Interrupted. `started`: when the process began (train.py passes
    the time before its imports), for the phase clock. `command`: what summary.json names as the run's command
    (default: the train.py command line, or `cifar_lit.fit(...)` for typed options).
    """
    with process_state(started) as (clock, signals):
        commit = git_commit()  # the code that runs is the code checked out now, whatever is edited during training
        if isinstance(options, Options):
            check_options(options)
            asked, command = options, command or "cifar_lit.fit(...)"
        else:
            asked, command = parse_options(options), command or command_line(list(options), "train.py")
        # The steps before the run folder (run/preflight.py); each refuses a user mistake before anything is written.
        settled, resume = settle(asked)
        if resume is not None and resume.nothing_to_do and not resume.test_only:
            print(resume.nothing_to_do)
            return RunResult(outcome="nothing_to_do", run_dir=resume.run_dir,
                             epochs=epochs_completed(resume.checkpoint), global_steps=resume.checkpoint["global_step"])
        check_loggers(settled)
        hardware = plan(settled)
        if settled.run.dry_run:
            print(dry_run_report(hardware, settled, resume.run_dir if resume else None))
            return RunResult(outcome="dry_run")
        options = settled.with_plan(hardware)
        if options.run.print_config:
            print(yaml.safe_dump(options.record(), sort_keys=False), end="")
            return RunResult(outcome="config_printed")
        datamodule = prepare_data(options, hardware, resume)
        options, range_test = choose_lr(options, hardware, datamodule)
        if options.run.find_lr:
            return RunResult(outcome="lr_found", run_dir=Path(range_test.folder),
                             suggested_lr=range_test.suggested_flag_lr)
        model = CIFARClassifier(options.model, num_classes=len(datamodule.class_names))
        target = check_network(model, options, datamodule)
        run = Prepared(options=options, hardware=hardware, datamodule=datamodule, model=model, target=target,
                       resume=resume, range_test=range_test)
        return fit_in_run_folder(run, command=command, commit=commit, clock=clock, signals=signals,
                                 extra=list(callbacks))


@contextlib.contextmanager
def process_state(started: float | None) -> Iterator[tuple[PhaseClock, SignalGuard]]:
    """What a run sets up in its process and gives back when it ends: the SIGTERM/Ctrl-C handler, the phase clock,
    log lines on standard error, and the memory it held (a notebook, the benchmark or a sweep trains on)."""
    signals = SignalGuard()
    signals.install()
    clock = PhaseClock(started)
    phases.activate(clock)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    hide_unactionable_messages()
    try:
        yield clock, signals
    finally:
        signals.uninstall()
        phases.activate(None)
        release_memory()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning leaves the process group to the process's exit, where gloo's threads can abort a rank that
            # finished first ("terminate called without an active exception"), and torchrun then fails the run.
            torch.distributed.destroy_process_group()


def fit_in_run_folder(run: Prepared, *, command: str, commit: str | None, clock: PhaseClock, signals: SignalGuard,
                      extra: list[Callback]) -> RunResult:
    """Choose (or reuse) the run folder, hold it, and fit, test and record there; a failure before the first
    checkpoint leaves no folder behind."""
    options, hardware = run.options, run.hardware
    run_dir, created = choose_run_dir(options.run.fast_dev_run, options.run.logdir, run.resume.run_dir
                                      if run.resume else None, options.run.run_name)
    callbacks = build_callbacks(run.options, run_dir=run_dir, datamodule=run.datamodule, command=command,
                                commit=commit, clock=clock, signals=signals, hardware=hardware, target=run.target)
    callbacks.before.extend(extra)
    reset_peak_memory()
    if run.range_test is not None and run_dir is not None:  # the sweep's plot and record go with the run
        shutil.move(run.range_test.folder, run_dir / LR_FIND_FOLDER)
        run.range_test.folder = str(run_dir / LR_FIND_FOLDER)
    if run.range_test is not None and callbacks.summary is not None:
        callbacks.summary.notes["lr_range_test"] = run.range_test.as_record()
    trainer = None
    try:
        with holding(run_dir, created):
            trainer = build_trainer(options.run, hardware, callbacks, run_dir)
            keep_own_signal_handlers(trainer, signals.install)
            if trainer.world_size > 1:
                agree_on_stop_every_step(trainer, lambda: signals.signum is not None)
            model, data = options.model, options.data
            caching = compile_cache(options.run.compile_cache) if model.compile else contextlib.nullcontext()
            out_of_memory = out_of_memory_as_error(hardware.device, hardware.memory, batch_size=model.batch_size,
                                                   eval_batch_size=data.eval_batch_size,
                                                   data_on_device=data.data_on_device)
            with caching, out_of_space_as_error(run_dir or options.run.logdir), out_of_memory:
                result = fit_and_test(trainer, run, callbacks, signals)
            close_loggers(trainer, finished=result.outcome == "finished")
            return result
    except NonFiniteLoss as bad:
        if trainer is not None:
            close_loggers(trainer, finished=False)
        folder = callbacks.graceful.run_dir if callbacks.graceful else run_dir
        remove_if_unused(run_dir, created)
        print(messages.non_finite_loss(bad, folder), file=sys.stderr)
        kept = folder if folder is not None and Path(folder).is_dir() else None
        return RunResult(outcome="non_finite_loss", run_dir=kept, epochs=bad.epoch, global_steps=bad.step,
                         stop_reason=f"the training loss became NaN or infinite at step {bad.step}")
    except (UserError, Interrupted) as stop:
        if trainer is not None:
            close_loggers(trainer, finished=False)
        if isinstance(stop, Interrupted):
            stop.run_dir = callbacks.graceful.run_dir if callbacks.graceful else run_dir
            if trainer is not None and trainer.world_size > 1:
                signal_other_processes(trainer, stop.signum)
        remove_if_unused(run_dir, created)
        raise
    finally:
        if trainer is not None:
            release_callbacks(trainer)  # a caller's callback may outlive the run; the network must not


def stopped(signum: int, run_dir: Path | None, trainer: pl.Trainer) -> RunResult:
    return RunResult(outcome="stopped", run_dir=Path(run_dir) if run_dir is not None else None,
                     epochs=trainer.current_epoch, global_steps=trainer.global_step, signum=signum,
                     stop_reason=f"signal {signal.Signals(signum).name}")


def fit_and_test(trainer: pl.Trainer, run: Prepared, callbacks: RunCallbacks, signals: SignalGuard) -> RunResult:
    """Fit (or, for a finished run that was never tested, restore it), then test the best checkpoint; the summary
    is written at the test's end."""
    graceful, summary, model, datamodule, resume = (callbacks.graceful, callbacks.summary, run.model,
                                                     run.datamodule, run.resume)
    if resume is not None and resume.test_only:
        restore_callback_states(trainer.callbacks, resume.checkpoint)
        callbacks.phases.carry_restored()
        summary.collect(trainer, model, epochs_completed(resume.checkpoint), resume.checkpoint["global_step"])
    else:
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume.checkpoint_path if resume else None,
                        weights_only=True)
        except NonFiniteLoss:
            raise
        except BaseException as stop:
            if not (isinstance(stop, StopRequested) or is_lightning_sigterm(stop)):
                raise
            saved = graceful.saved if graceful is not None else None
            signum = graceful.signum if graceful is not None and graceful.signum else signal.SIGTERM
            print(messages.stopped_in_training(signum, epoch=trainer.current_epoch + 1, step=trainer.global_step,
                                               saved=saved,
                                               logdir=run.options.run.logdir), file=sys.stderr)
            return stopped(signum, graceful.run_dir if graceful is not None else None, trainer)
        finally:
            signals.deferring = False  # held until fit returns, so last.ckpt's final write is never cut
        if run.options.run.fast_dev_run:
            trainer.test(model, datamodule=datamodule)
            print("fast-dev-run finished: one batch of training, validation and test ran; nothing was written.")
            return RunResult(outcome="fast_dev_run", epochs=trainer.current_epoch, global_steps=trainer.global_step)
        if graceful is not None and graceful.signum is not None and trainer.world_size == 1:
            last = Path(graceful.run_dir) / CHECKPOINT_FOLDER / LAST_NAME
            print(messages.stopped_before_the_test(graceful.signum, last, trainer.current_epoch,
                                                   trainer.global_step), file=sys.stderr)
            return stopped(graceful.signum, graceful.run_dir, trainer)
    callbacks.phases.clock.switch("test")
    trainer.test(model, datamodule=datamodule, ckpt_path=summary.facts["best_checkpoint"], weights_only=True)
    done = summary.summary
    if done is None:  # ranks other than zero write no summary
        return RunResult(outcome="finished", epochs=trainer.current_epoch, global_steps=trainer.global_step)
    print(closing_line(done))
    return RunResult(outcome="finished", run_dir=Path(done["run_dir"]), best_val_acc=done["best_val_acc"],
                     test_acc=done["test_acc"], target_acc=done["target_acc"], target_reached=done["target_reached"],
                     seconds_to_target=done["target_seconds"], train_seconds=done["train_seconds"],
                     epochs=done["epochs_run"], global_steps=done["global_steps"])


def main(argv: Sequence[str] | None = None, started: float | None = None) -> int:
    """train.py: the run of the command line `argv` (default: sys.argv), and its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return exit_status(fit(argv, started=started))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Interrupted as stop:
        print(messages.interrupted(stop, argv), file=sys.stderr)
        return 128 + stop.signum
