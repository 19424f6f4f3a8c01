"""train.py's work, as named steps: parse the options, plan the hardware, prepare the data, the LR and the network
(`run/preflight.py`), then fit, test and record in the run folder.

Every user mistake surfaces as a UserError before a run folder is created; `main` prints it as one paragraph and
exits with status 2. A run stopped by SIGTERM/Ctrl-C exits 128 + the signal number after saving last.ckpt, and a
non-finite loss exits 3 without writing any checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch

from cifar_lit import phases
from cifar_lit.hardware.memory import out_of_memory_as_error
from cifar_lit.lightning_compat import (
    agree_on_stop_every_step,
    epochs_completed,
    hide_unactionable_messages,
    is_lightning_sigterm,
    keep_own_signal_handlers,
    signal_other_processes,
)
from cifar_lit.phases import PhaseClock
from cifar_lit.reliability.checkpoints import CHECKPOINT_FOLDER, LAST_NAME
from cifar_lit.reliability.disk import out_of_space_as_error
from cifar_lit.reliability.errors import UserError
from cifar_lit.reliability.non_finite import NonFiniteLoss
from cifar_lit.reliability.run_folder import choose_run_dir, holding, remove_if_unused
from cifar_lit.reliability.signals import Interrupted, SignalGuard, StopRequested
from cifar_lit.reporting.provenance import command_line, git_commit
from cifar_lit.reporting.summary import closing_line
from cifar_lit.run import messages
from cifar_lit.run.lr_range_test import FOLDER as LR_FIND_FOLDER
from cifar_lit.run.preflight import Prepared, dry_run_report, parse, plan, prepare
from cifar_lit.run.resume import restore_callback_states
from cifar_lit.run.trainer import RunCallbacks, build_callbacks, build_trainer
from cifar_lit.training.compile_cache import compile_cache

log = logging.getLogger("cifar_lit")
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3


def train(argv: Sequence[str], clock: PhaseClock, signals: SignalGuard) -> int:
    commit = git_commit()  # the code that runs is the code checked out now, whatever is edited during training
    options, resume = parse(argv)
    if resume is not None and resume.nothing_to_do and not resume.test_only:
        print(resume.nothing_to_do)
        return 0
    hardware = plan(options)
    if options.run.dry_run:
        print(dry_run_report(hardware, options, resume.run_dir if resume else None))
        return 0
    prepared = prepare(options, hardware, resume)
    if prepared is None:  # --find-lr: the range test was the whole job
        return 0
    return fit_in_run_folder(prepared, command_line(list(argv), "train.py"), commit, clock, signals)


def fit_in_run_folder(run: Prepared, command: str, commit: str | None, clock: PhaseClock,
                      signals: SignalGuard) -> int:
    """Choose (or reuse) the run folder, hold it, and fit, test and record there; a failure before the first
    checkpoint leaves no folder behind."""
    options, hardware = run.options, run.hardware
    run_dir, created = choose_run_dir(options.run.fast_dev_run, options.run.logdir, run.resume.run_dir
                                      if run.resume else None)
    callbacks = build_callbacks(run.recorded, run_dir, run.datamodule, command, commit, clock, signals, hardware,
                                run.target)
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
            out_of_memory = out_of_memory_as_error(hardware.device, hardware.memory, model.batch_size,
                                                   data.eval_batch_size, data.data_on_device)
            with caching, out_of_space_as_error(run_dir or options.run.logdir), out_of_memory:
                return fit_and_test(trainer, run, callbacks, signals)
    except NonFiniteLoss as bad:
        folder = callbacks.graceful.run_dir if callbacks.graceful else run_dir
        remove_if_unused(run_dir, created)
        print(messages.non_finite_loss(bad, folder), file=sys.stderr)
        return EXIT_NON_FINITE
    except (UserError, Interrupted) as stop:
        if isinstance(stop, Interrupted):
            stop.run_dir = callbacks.graceful.run_dir if callbacks.graceful else run_dir
            if trainer is not None and trainer.world_size > 1:
                signal_other_processes(trainer, stop.signum)
        remove_if_unused(run_dir, created)
        raise


def fit_and_test(trainer: pl.Trainer, run: Prepared, callbacks: RunCallbacks, signals: SignalGuard) -> int:
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
            print(messages.stopped_in_training(signum, trainer.current_epoch + 1, trainer.global_step, saved,
                                               run.options.run.logdir), file=sys.stderr)
            return 128 + signum
        finally:
            signals.deferring = False  # held until fit returns, so last.ckpt's final write is never cut
        if run.options.run.fast_dev_run:
            trainer.test(model, datamodule=datamodule)
            print("fast-dev-run finished: one batch of training, validation and test ran; nothing was written.")
            return 0
        if graceful is not None and graceful.signum is not None and trainer.world_size == 1:
            last = Path(graceful.run_dir) / CHECKPOINT_FOLDER / LAST_NAME
            print(messages.stopped_before_the_test(graceful.signum, last, trainer.current_epoch,
                                                   trainer.global_step), file=sys.stderr)
            return 128 + graceful.signum
    callbacks.phases.clock.switch("test")
    trainer.test(model, datamodule=datamodule, ckpt_path=summary.facts["best_checkpoint"], weights_only=True)
    if summary.summary is not None:
        print(closing_line(summary.summary))
    return 0


def main(argv: Sequence[str] | None = None, started: float | None = None) -> int:
    """`started`: when the process began (train.py passes the time before its imports); default now."""
    signals = SignalGuard()
    signals.install()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        clock = PhaseClock(started)
        phases.activate(clock)
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        hide_unactionable_messages()
        return train(argv, clock, signals)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Interrupted as stop:
        print(messages.interrupted(stop, argv), file=sys.stderr)
        return 128 + stop.signum
    finally:
        signals.uninstall()
        phases.activate(None)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning leaves the process group to the process's exit, where gloo's threads can abort a rank that
            # finished first ("terminate called without an active exception"), and torchrun then fails the run.
            torch.distributed.destroy_process_group()
