"""train.py's work: check everything the user gave, train until the target, test the best checkpoint, record the run.

Every user mistake surfaces as a UserError before a run folder is created; `main` prints it as one paragraph and
exits with status 2. A run stopped by SIGTERM/Ctrl-C exits 128 + the signal number after saving last.ckpt, and a
non-finite loss exits 3 without writing any checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from cifar_lit import phases
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.hardware.memory import out_of_memory_as_error
from cifar_lit.hardware.plan import HardwarePlan, explicit_options, plan_hardware
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
from cifar_lit.reliability.disk import bytes_needed, check_free_space, out_of_space_as_error
from cifar_lit.reliability.errors import ConfigError, UserError
from cifar_lit.reliability.non_finite import NonFiniteLoss
from cifar_lit.reliability.run_folder import (
    RUN_DIR_ENV,
    RunFolderLock,
    check_writable,
    choose_run_dir,
    launched_as_several_processes,
    next_free_version,
    next_version_dir,
    remove_if_unused,
)
from cifar_lit.reliability.signals import Interrupted, SignalGuard, StopRequested
from cifar_lit.reporting.gradcam import network_layer
from cifar_lit.reporting.provenance import command_line, git_commit, shell_command
from cifar_lit.reporting.summary import closing_line
from cifar_lit.run.config import class_kwargs, parse_config
from cifar_lit.run.lr_range_test import FOLDER as LR_FIND_FOLDER
from cifar_lit.run.lr_range_test import RangeTest, run_range_test
from cifar_lit.run.resume import ResumePlan, check_resumed_data, plan_resume, restore_callback_states
from cifar_lit.run.stop_at_target import resolve_target
from cifar_lit.run.trainer import RunCallbacks, build_callbacks, build_trainer
from cifar_lit.training.compile_cache import compile_cache
from cifar_lit.training.module import CIFARClassifier

log = logging.getLogger("cifar_lit")
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3
LONG_WARMUP_EPOCHS = 20  # a warm-up longer than this usually means --max-epochs was meant for another schedule


def train(argv: Sequence[str], clock: PhaseClock, signals: SignalGuard) -> int:
    commit = git_commit()  # the code that runs is the code checked out now, whatever is edited during training
    config = parse_config(argv)
    plan = plan_resume(config, argv) if config["resume"] else None
    if plan is not None:
        config = plan.config
        if plan.nothing_to_do and not plan.test_only:
            print(plan.nothing_to_do)
            return 0
        log.info("Resuming from %s%s", plan.checkpoint_path,
                 ": training is complete, so only the test runs and the summary is written" if plan.test_only else "")

    # Absolute, so that config.yaml names the same folder from wherever a resume or evaluate.py runs.
    config["data_dir"] = str(Path(config["data_dir"]).expanduser().absolute())
    data_bytes = ImageDataModule.expected_device_bytes(config["data_dir"], config["crop_padding"])
    # Refuses what this machine cannot give (a missing GPU, a torch without kernels for it, --compile where Inductor
    # cannot work) before any download or run folder.
    hardware = plan_hardware(config, explicit_options(list(argv)), data_bytes)
    if config["dry_run"]:
        print(dry_run_report(hardware, config, plan.run_dir if plan else None))
        return 0
    if is_first_process():
        for line in hardware.lines():
            log.info(line)
        if hardware.memory_warning(config["batch_size"]):
            log.warning(hardware.memory_warning(config["batch_size"]))
    planned = hardware.apply(config)

    pl.seed_everything(config["seed"], workers=True, verbose=False)
    datamodule = ImageDataModule(**class_kwargs(ImageDataModule, planned))
    datamodule.prepare_data()  # data problems surface here, before any run folder exists
    datamodule.setup("fit")
    check_steps(datamodule, hardware, config)
    if plan is not None:
        check_resumed_data(plan.checkpoint, datamodule.class_names, *datamodule.data_identity(), plan.checkpoint_path,
                           datamodule.data_dir)
    range_test = None
    if config["find_lr"] or config["lr"] == "auto":
        range_test = lr_range_test(planned, hardware, datamodule)
        if config["find_lr"]:
            return 0
        config["lr"] = planned["lr"] = float(f"{range_test.suggested_flag_lr:.3g}")  # recorded in config.yaml
    model = CIFARClassifier(num_classes=len(datamodule.class_names), **class_kwargs(CIFARClassifier, planned))
    if config["gradcam_layer"]:
        network_layer(model.model, config["gradcam_layer"])  # a wrong name is refused now, not after training
    target = resolve_target(config["target_acc"], datamodule.dataset.kind if datamodule.dataset else None)
    if is_first_process():
        log.info(target.describe(config["max_epochs"]))
        warm_epochs = config["warmup_fraction"] * config["max_epochs"]
        if target.value is not None and warm_epochs > LONG_WARMUP_EPOCHS:
            log.warning("The LR warms up over %.0f epochs (--warmup-fraction %s of --max-epochs %d): the run may reach "
                        "its target long before the LR peaks. Lower --max-epochs or --warmup-fraction.", warm_epochs,
                        config["warmup_fraction"], config["max_epochs"])

    if not config["fast_dev_run"]:
        needed = bytes_needed(model, config["best_weights_only"], bool(config["ema_decay"]))
        check_free_space(Path(config["logdir"]), needed)
    if planned["compile"]:
        check_writable(Path(config["compile_cache"]).expanduser(), "the compile cache folder", "--compile-cache")
    run_dir, created = choose_run_dir(config, plan.run_dir if plan else None)
    if range_test is not None and run_dir is not None:
        range_test.folder = str(move_into(Path(range_test.folder), run_dir / LR_FIND_FOLDER))
    command = command_line(list(argv), "train.py")
    callbacks = build_callbacks(config, run_dir, datamodule, command, commit, clock, signals, hardware, target)
    if range_test is not None and callbacks.summary is not None:
        callbacks.summary.notes["lr_range_test"] = range_test.as_record()
    previous_env = os.environ.get(RUN_DIR_ENV)
    trainer = None
    owner = RunFolderLock(run_dir) if run_dir is not None and created_or_resumed_here(created) else None
    try:
        if owner is not None:
            owner.acquire()
        trainer = build_trainer(planned, hardware, callbacks, run_dir)
        keep_own_signal_handlers(trainer, signals.install)
        if trainer.world_size > 1:
            agree_on_stop_every_step(trainer, lambda: signals.signum is not None)
        if run_dir is not None:
            os.environ[RUN_DIR_ENV] = str(run_dir)
        caching = compile_cache(config["compile_cache"]) if planned["compile"] else contextlib.nullcontext()
        out_of_memory = out_of_memory_as_error(hardware.device, hardware.memory, planned)
        with caching, out_of_space_as_error(run_dir or config["logdir"]), out_of_memory:
            return fit_and_test(trainer, model, datamodule, callbacks, planned, plan, signals)
    except NonFiniteLoss as bad:
        folder = callbacks.graceful.run_dir if callbacks.graceful else run_dir
        remove_if_unused(run_dir, created)
        return non_finite_loss(bad, folder)
    except (UserError, Interrupted) as stop:
        if isinstance(stop, Interrupted):
            stop.run_dir = callbacks.graceful.run_dir if callbacks.graceful else run_dir
            if trainer is not None and trainer.world_size > 1:
                signal_other_processes(trainer, stop.signum)
        remove_if_unused(run_dir, created)
        raise
    finally:
        if owner is not None:
            owner.release()
        if previous_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous_env


def fit_and_test(trainer: pl.Trainer, model: CIFARClassifier, datamodule: ImageDataModule,
                 callbacks: RunCallbacks, config: dict[str, Any], plan: ResumePlan | None,
                 signals: SignalGuard) -> int:
    graceful, summary = callbacks.graceful, callbacks.summary
    if plan is not None and plan.test_only:
        restore_callback_states(trainer.callbacks, plan.checkpoint)
        callbacks.phases.carry_restored()
        summary.collect(trainer, model, epochs_completed(plan.checkpoint), plan.checkpoint["global_step"])
    else:
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=plan.checkpoint_path if plan else None,
                        weights_only=True)
        except NonFiniteLoss:
            raise
        except BaseException as stop:
            if not (isinstance(stop, StopRequested) or is_lightning_sigterm(stop)):
                raise
            saved = graceful.saved if graceful is not None else None
            signum = graceful.signum if graceful is not None and graceful.signum else signal.SIGTERM
            resume = [saved] if saved else ["last", "--logdir", config["logdir"]]
            print(f"Stopped by signal {signum} at epoch {trainer.current_epoch + 1}, step {trainer.global_step}; "
                  f"saved {saved}. Resume with: {shell_command('train.py', '--resume', *resume)}", file=sys.stderr)
            return 128 + signum
        finally:
            signals.deferring = False  # held until fit returns, so last.ckpt's final write is never cut
        if config["fast_dev_run"]:
            trainer.test(model, datamodule=datamodule)
            print("fast-dev-run finished: one batch of training, validation and test ran; nothing was written.")
            return 0
        if graceful is not None and graceful.signum is not None and trainer.world_size == 1:
            last = graceful.run_dir / CHECKPOINT_FOLDER / LAST_NAME
            print(f"Stopped by signal {graceful.signum} after the last training step, before the test; {last} holds "
                  f"the finished training (epoch {trainer.current_epoch}, step {trainer.global_step}). Resume with: "
                  f"{shell_command('train.py', '--resume', last)} (it runs the test and writes the summary)",
                  file=sys.stderr)
            return 128 + graceful.signum
    callbacks.phases.clock.switch("test")
    trainer.test(model, datamodule=datamodule, ckpt_path=summary.facts["best_checkpoint"], weights_only=True)
    if summary.summary is not None:
        print(closing_line(summary.summary))
    return 0


def created_or_resumed_here(created: bool) -> bool:
    """Whether this process owns its run folder: it made it, or resumes into it; not a DDP worker that Lightning's
    launcher started (its launcher owns the folder, RUN_DIR_ENV names it)."""
    return created or not os.environ.get(RUN_DIR_ENV)


def check_steps(datamodule: ImageDataModule, hardware: HardwarePlan, config: dict[str, Any]) -> None:
    """Refuse a run that would not train a single step (a batch larger than each process's share of the data)."""
    if not isinstance(hardware.devices, int) or config["data_path"] != "tensor":
        return
    world = hardware.devices * config["num_nodes"]
    if datamodule.steps_per_epoch_for(world) == 0:
        share = len(datamodule.splits["train"]) // world
        raise ConfigError(
            f"--batch-size {config['batch_size']} is larger than the {share} training images each of the {world} "
            f"process(es) gets (only full batches are trained), so no step would run. Use --batch-size {share} or "
            "less, or more training images."
        )


def lr_range_test(planned: dict[str, Any], hardware: HardwarePlan, datamodule: ImageDataModule) -> RangeTest:
    """Run the LR range test into a new `<logdir>/lr_find_N/` and print its suggestion; a sweep that gives none
    is a UserError saying why and what to do."""
    out = next_version_dir(Path(planned["logdir"]), f"{LR_FIND_FOLDER}_")
    result = run_range_test(planned, hardware, datamodule, len(datamodule.class_names), out)
    if result.stopped:
        log.info("LR range test: %s.", result.stopped)
    if result.suggested_flag_lr is None:
        raise UserError(f"The LR range test ({result.steps} steps) gives no suggestion: {result.problem} (see "
                        f"{out / 'lr_find.png'}). Give --lr a number (0.2, the default, is the 85% recipe's), or "
                        "sweep longer with --lr-find-steps.")
    per = planned["lr_reference_batch_size"]
    print(f"Suggested --lr: {result.suggested_flag_lr:.3g} (the peak LR per {per} images; "
          f"{result.suggested_lr:.3g} at this run's batch of {result.global_batch}). Plot: {out / 'lr_find.png'}")
    return result


def move_into(folder: Path, destination: Path) -> Path:
    """`folder` moved to `destination` (the range test's results into the run folder it chose the LR for)."""
    shutil.move(str(folder), str(destination))
    return destination


def is_first_process() -> bool:
    """Rank zero of the first machine (or the only process): the one that logs the plan."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0" and \
        os.environ.get("RANK", "0") == "0"


def dry_run_report(hardware: HardwarePlan, config: dict[str, Any], resumed_run_dir: Path | None) -> str:
    """What `--dry-run` prints: the hardware plan and the run folder, with nothing read, compiled or written."""
    if config["fast_dev_run"]:
        folder = "none (--fast-dev-run writes nothing)"
    elif resumed_run_dir is not None:
        folder = f"{resumed_run_dir} (the resumed run's)"
    elif launched_as_several_processes():
        folder = f"the next version_N under {config['logdir']}, chosen by rank zero at start"
    else:
        folder = f"{next_free_version(Path(config['logdir']))} (not created now)"
    warning = hardware.memory_warning(config["batch_size"])
    return "\n".join(["Dry run: nothing was read, downloaded, compiled or written.", *hardware.lines(),
                      *([warning] if warning else []), f"Run folder: {folder}"])


def non_finite_loss(bad: NonFiniteLoss, run_dir: Path | None) -> int:
    last = run_dir / CHECKPOINT_FOLDER / LAST_NAME if run_dir else None
    if last is not None and last.is_file():
        then = (f"the last good checkpoint is {last}. Start again with a lower --lr (a resume keeps the optimizer's "
                f"LR), or, if half precision overflowed, resume with: "
                f"{shell_command('train.py', '--resume', last, '--precision', '32-true')}")
    else:
        then = ("no checkpoint had been written, so there is nothing to resume and the run folder was removed. Run "
                "again with a lower --lr, or with --precision 32-true")
    print(f"error: the training loss became NaN or infinite at step {bad.step} (epoch {bad.epoch + 1}); training "
          f"stopped there and nothing was saved after it: {then}.", file=sys.stderr)
    return EXIT_NON_FINITE


def interrupted(stop: Interrupted, argv: Sequence[str]) -> str:
    """The line for a signal that stopped the run at once: what is on disk, and the command that carries on."""
    where = f"during {stop.phase}" if stop.phase else "at start-up"
    last = stop.run_dir / CHECKPOINT_FOLDER / LAST_NAME if stop.run_dir is not None else None
    if last is None or not last.is_file():
        return (f"Stopped by signal {stop.signum} {where}, before any training was saved; nothing was written. "
                f"Run again with: {command_line(list(argv), 'train.py')}")
    finished = stop.phase in ("test", "reports")
    state = "holds the finished training" if finished else "holds the last complete save"
    then = " (it runs the test and writes the summary)" if finished else ""
    return (f"Stopped by signal {stop.signum} {where}; {last} {state}. "
            f"Resume with: {shell_command('train.py', '--resume', last)}{then}")


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
        print(interrupted(stop, argv), file=sys.stderr)
        return 128 + stop.signum
    finally:
        signals.uninstall()
        phases.activate(None)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning leaves the process group to the process's exit, where gloo's threads can abort a rank that
            # finished first ("terminate called without an active exception"), and torchrun then fails the run.
            torch.distributed.destroy_process_group()
