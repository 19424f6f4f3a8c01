"""train.py's work: check everything the user gave, train until the target, test the best checkpoint, record the run.

Every user mistake surfaces as a UserError before a run folder is created; `main` prints it as one paragraph and
exits with status 2. A run stopped by SIGTERM/Ctrl-C exits 128 + the signal number after saving last.ckpt, and a
non-finite loss exits 3 without writing any checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from cifar_lit import phases
from cifar_lit.callbacks.safety import GracefulStop, NonFiniteLoss, StopRequested
from cifar_lit.callbacks.summary import closing_line
from cifar_lit.checkpoints import CHECKPOINT_FOLDER, LAST_NAME
from cifar_lit.compile_cache import compile_cache
from cifar_lit.config import class_kwargs, parse_config
from cifar_lit.data.datamodule import CIFAR10DataModule
from cifar_lit.errors import UserError
from cifar_lit.lightning_compat import is_lightning_sigterm
from cifar_lit.module import CIFARClassifier
from cifar_lit.phases import PhaseClock
from cifar_lit.provenance import command_line, git_commit
from cifar_lit.resume import plan_resume
from cifar_lit.run_dir import RUN_DIR_ENV, check_writable, choose_run_dir, remove_if_unused
from cifar_lit.trainer import build_callbacks, build_trainer, resolve_hardware

log = logging.getLogger("cifar_lit")
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3


def train(argv: Sequence[str], clock: PhaseClock) -> int:
    commit = git_commit()  # the code that runs is the code checked out now, whatever is edited during training
    config = parse_config(argv)
    plan = plan_resume(config, argv) if config["resume"] else None
    if plan is not None:
        config = plan.config
        if plan.nothing_to_do:
            print(plan.nothing_to_do)
            return 0
        log.info("Resuming from %s", plan.checkpoint_path)

    pl.seed_everything(config["seed"], workers=True, verbose=False)
    datamodule = CIFAR10DataModule(**class_kwargs(CIFAR10DataModule, config))
    datamodule.prepare_data()  # data problems surface here, before any run folder exists
    datamodule.setup("fit")
    resolve_hardware(config)  # refuses --gpus N without N GPUs before any run folder exists
    model = CIFARClassifier(**class_kwargs(CIFARClassifier, config))

    if config["compile"]:
        check_writable(Path(config["compile_cache"]).expanduser(), "the compile cache folder", "--compile-cache")
    run_dir, created = choose_run_dir(config, plan.run_dir if plan else None)
    command = command_line(list(argv), "train.py")
    callbacks = build_callbacks(config, run_dir, datamodule, command, commit, clock)
    previous_env = os.environ.get(RUN_DIR_ENV)
    try:
        trainer = build_trainer(config, callbacks, run_dir)
        if run_dir is not None:
            os.environ[RUN_DIR_ENV] = str(run_dir)
        with compile_cache(config["compile_cache"]) if config["compile"] else contextlib.nullcontext():
            return fit_and_test(trainer, model, datamodule, callbacks, config, plan.checkpoint_path if plan else None)
    except UserError:
        remove_if_unused(run_dir, created)
        raise
    finally:
        if previous_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous_env


def fit_and_test(trainer: pl.Trainer, model: CIFARClassifier, datamodule: CIFAR10DataModule,
                 callbacks: dict[str, Any], config: dict[str, Any], checkpoint_path: Any) -> int:
    graceful: GracefulStop | None = callbacks.get("graceful")
    handlers_before = {signum: signal.getsignal(signum) for signum in GracefulStop.SIGNALS}
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint_path, weights_only=True)
    except NonFiniteLoss as bad:
        run_dir = callbacks["history"].run_dir if "history" in callbacks else None
        last = run_dir / CHECKPOINT_FOLDER / LAST_NAME if run_dir else None
        kept = f"the last good checkpoint is {last}" if last and last.is_file() else "no checkpoint was written yet"
        print(
            f"error: the training loss became NaN or infinite at step {bad.step} (epoch {bad.epoch + 1}); training "
            f"stopped there and nothing was saved after it: {kept}. Lower --lr or use --precision 32-true, then "
            "resume from that checkpoint.",
            file=sys.stderr,
        )
        return EXIT_NON_FINITE
    except BaseException as stop:
        if not (isinstance(stop, StopRequested) or is_lightning_sigterm(stop)):
            raise
        signum = graceful.signum if graceful is not None and graceful.signum else signal.SIGTERM
        saved = graceful.saved if graceful is not None else None
        where = f"at epoch {trainer.current_epoch + 1}, step {trainer.global_step}"
        print(
            f"Stopped by signal {signum} {where}; saved {saved}. "
            f"Resume with: python train.py --resume last --logdir {config['logdir']}",
            file=sys.stderr,
        )
        return 128 + signum
    finally:
        for signum, handler in handlers_before.items():
            signal.signal(signum, handler)
    if config["fast_dev_run"]:
        trainer.test(model, datamodule=datamodule)
        print("fast-dev-run finished: one batch of training, validation and test ran; nothing was written.")
        return 0
    summary = callbacks["summary"]
    callbacks["phases"].clock.switch("test")
    trainer.test(model, datamodule=datamodule, ckpt_path=summary.facts["best_checkpoint"], weights_only=True)
    if summary.summary is not None:
        print(closing_line(summary.summary))
    if graceful is not None and graceful.signum is not None:
        # the signal came during the last validation: training had finished, so the test and summary were done
        print(f"Signal {graceful.signum} arrived after the last training step; the run finished and was tested.",
              file=sys.stderr)
        return 128 + graceful.signum
    return 0


def main(argv: Sequence[str] | None = None, started: float | None = None) -> int:
    """`started`: when the process began (train.py passes the time before its imports); default now."""
    clock = PhaseClock(started)
    phases.activate(clock)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return train(list(sys.argv[1:] if argv is None else argv), clock)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        phases.activate(None)
