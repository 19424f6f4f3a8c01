"""Every place cifar_lit relies on a private or version-specific behaviour of PyTorch Lightning, in one file.

Checked against pytorch-lightning 2.6.6. Each function says what it relies on and why the public API is not
enough; `tests/test_lightning_compat.py` has one test per function that fails when an upgrade changes that
behaviour. Upgrading Lightning is then this file and that test run.
"""

from __future__ import annotations

import logging
import types
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from pytorch_lightning.plugins.io import AsyncCheckpointIO
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.utilities.exceptions import SIGTERMException

__all__ = [
    "TorchCheckpointIO",
    "epochs_completed",
    "epochs_trained",
    "forget_threshold_stop",
    "hide_unactionable_messages",
    "is_lightning_sigterm",
    "agree_on_stop_every_step",
    "keep_own_signal_handlers",
    "signal_other_processes",
    "loss_scale",
    "on_last_batch_of_epoch",
    "queue_after_pending_saves",
    "release_callbacks",
    "saved_after_last_batch",
    "threshold_reached",
    "training_steps",
]


# ------------------------------------------------------------------------------------------- loop progress


def epochs_trained(trainer: pl.Trainer) -> int:
    """Epochs whose training part has finished: `fit_loop.epoch_progress.current.processed`.

    Not `trainer.current_epoch`: after resuming from a checkpoint saved at an epoch's end (in
    `on_train_epoch_end`, where ModelCheckpoint saves), Lightning 2.6 builds the next training iterator and runs
    `on_train_start` before it marks the saved epoch completed, so `current_epoch` still names the finished epoch.
    `processed` is increased before `on_train_epoch_end` and is right in every case.
    """
    return trainer.fit_loop.epoch_progress.current.processed


def epochs_completed(checkpoint: dict[str, Any]) -> int:
    """`epochs_trained` of the run that saved `checkpoint`, read from the saved loop state."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", checkpoint.get("epoch", 0)))


def on_last_batch_of_epoch(trainer: pl.Trainer) -> bool:
    """Whether the batch just trained was the epoch's last: its validation and epoch-end checkpoint come next.

    A checkpoint taken in that batch's `on_train_batch_end` resumes past the epoch's last batch but before its
    validation, which Lightning 2.6 then skips; mid-epoch checkpoints therefore wait for a batch that is not the
    last. Lightning has no public flag for this; `batch_progress.is_last_batch` is set before the hook runs.
    """
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def saved_after_last_batch(checkpoint: dict[str, Any]) -> bool:
    """Whether `checkpoint` was saved after its epoch's last training batch (an epoch-end checkpoint).

    Lightning 2.6 resets the epoch's logged metrics only after the epoch-end checkpoint is written, so such a
    checkpoint holds the finished epoch's running sums; the next epoch must start its training metrics from zero.
    """
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    return bool(progress.get("is_last_batch", True))


def training_steps(trainer: pl.Trainer, batches_per_epoch: int) -> int:
    """Optimizer steps in the whole run: what `trainer.estimated_stepping_batches` reports, without touching the
    training loader.

    In Lightning 2.6 `estimated_stepping_batches`, called from `configure_optimizers`, builds the training loader
    and fetches its first batch before a checkpoint's loop and loader state are restored, so a resumed run would
    train on the wrong batches. This is the same arithmetic from a batch count the caller supplies.
    """
    if trainer.max_steps > 0:
        return trainer.max_steps
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches_per_epoch = min(batches_per_epoch, limit)
    elif limit is not None and limit < 1.0:
        batches_per_epoch = int(batches_per_epoch * limit)
    steps_per_epoch = max(1, -(-batches_per_epoch // trainer.accumulate_grad_batches))
    return steps_per_epoch * trainer.max_epochs


# ---------------------------------------------------------------------------------------------------- signals


def keep_own_signal_handlers(trainer: pl.Trainer, install: Callable[[], None]) -> None:
    """Let `install` put the project's SIGTERM/SIGINT handlers back each time Lightning installs its own.

    Lightning 2.6 installs a SIGTERM handler at the start of every `fit`/`test` (`_SignalConnector.
    register_signal_handlers`, after `on_fit_start`); its loops then raise `SIGTERMException`, a `SystemExit`, at
    points of their choosing, including inside a validation pass or the final test, and `SystemExit()` exits 0.
    A single process stops at a step boundary instead (cifar_lit.reliability.non_finite), so Lightning's handlers are
    installed as usual (SLURM's SIGUSR1 requeue included) and SIGTERM/SIGINT are then taken back.
    """
    connector = trainer._signal_connector
    register = connector.register_signal_handlers

    def register_then_restore() -> None:
        register()
        install()

    connector.register_signal_handlers = register_then_restore


def agree_on_stop_every_step(trainer: pl.Trainer, stop_requested: Callable[[], bool]) -> None:
    """With several processes, stop every rank at the same step boundary once any rank has noted a signal.

    Lightning 2.6 stops a DDP run on SIGTERM in ways that can deadlock: its handler kills the other ranks and runs a
    broadcast from inside the signal handler, and its loops then raise on the rank that received the signal alone
    (`received_sigterm`, after a step, mid-validation) while the others wait in the next step's collective. Each
    step already starts with a collective that only rank zero's flag decides (`training_epoch_loop.
    _broadcast_sigterm_tensor`); this replaces it with an all-reduce of every rank's own flag, so all ranks raise
    Lightning's SIGTERMException together, before the same step, and save and exit together. The project's own
    handler notes the signal (`keep_own_signal_handlers` keeps Lightning's out) and `received_sigterm` is never set.
    """
    loop = trainer.fit_loop.epoch_loop

    def all_ranks_agree() -> None:
        flag = torch.tensor([1 if stop_requested() else 0], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() == 1:
            raise SIGTERMException()

    loop._broadcast_sigterm_tensor = all_ranks_agree


def signal_other_processes(trainer: pl.Trainer, signum: int) -> None:
    """Pass a signal that stopped rank zero at once on to the ranks Lightning's launcher started, so none waits
    in a collective for a process that is gone (`strategy.launcher.kill`, public on the subprocess launcher)."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if isinstance(launcher, _SubprocessScriptLauncher):
        launcher.kill(signum)


def is_lightning_sigterm(exception: BaseException) -> bool:
    """Whether `exception` is Lightning's own SIGTERM stop (several processes keep Lightning's handling)."""
    return isinstance(exception, SIGTERMException)



# ---------------------------------------------------------------------------------------------- loss scaling


def loss_scale(trainer: pl.Trainer) -> Any | None:
    """The current loss scale of a 16-mixed run as a device tensor (None without loss scaling).

    `trainer.precision_plugin.scaler` is Lightning's public attribute of its MixedPrecision plugin; the scale itself
    is the GradScaler's private `_scale` tensor: its public `get_scale()` copies it to the host, a sync per step.
    The scaler halves it on exactly the steps it skips (non-finite gradients) and doubles it after a run of good
    steps, so comparing it across a step tells a skipped step on the device.
    """
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return getattr(scaler, "_scale", None) if scaler is not None else None


# ---------------------------------------------------------------------------------------------- checkpoint IO


def queue_after_pending_saves(async_io: AsyncCheckpointIO, work: Callable[[], None]) -> None:
    """Run `work` on AsyncCheckpointIO's writer thread after every save queued so far, unless one of them failed.

    AsyncCheckpointIO (experimental in 2.6) has no public way to order other work behind its saves; it keeps its
    single-thread executor in `_executor` (created by `_ensure_setup`) and the first failure in `_error`.
    """
    async_io._ensure_setup()
    executor = async_io._executor
    assert executor is not None

    def after_saves() -> None:
        if async_io._error is None:
            work()

    executor.submit(after_saves)


# --------------------------------------------------------------------------------------------- early stopping


def threshold_reached(early_stopping: EarlyStopping) -> bool:
    """Whether `early_stopping` stopped because its monitored value crossed `stopping_threshold`.

    `stopping_reason` and `EarlyStoppingReason` are new in Lightning 2.6 (before, only a log message said why).
    """
    return early_stopping.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD


def forget_threshold_stop(early_stopping: EarlyStopping) -> None:
    """Undo a restored threshold stop (a resumed run with a raised target must not stop on the old one)."""
    early_stopping.stopping_reason = EarlyStoppingReason.NOT_STOPPED
    early_stopping.stopping_reason_message = None


def release_callbacks(trainer: pl.Trainer) -> None:
    """Let the module go with its Trainer. Lightning's callback connector binds `callback.log` and
    `callback.log_dict` to the LightningModule, so a callback that outlives its run (a sweep's, a notebook's) would
    keep the whole network alive until it is dropped."""
    for callback in trainer.callbacks:
        for name in ("log", "log_dict"):
            if isinstance(vars(callback).get(name), types.MethodType):
                delattr(callback, name)


# ---------------------------------------------------------------------------------------------- messages

# Lightning 2.6 messages a cifar_lit user can do nothing about. The tips advertise optional cloud products on every
# run; the pytree deprecation comes from Lightning's own code under torch >= 2.10; the non-empty checkpoint folder
# is the resumed run's own folder.
UNACTIONABLE_LOG_PREFIXES = ("💡 Tip:", "`weights_only` was not set")
UNACTIONABLE_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                         r"Checkpoint directory .* exists and is not empty")
# The checkpoint connector says "`weights_only` was not set" when Lightning's LR range test saves its own temporary
# checkpoint (every save and load of the project's passes weights_only).
LIGHTNING_INFO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                          "pytorch_lightning.trainer.connectors.checkpoint_connector")


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(UNACTIONABLE_LOG_PREFIXES)


def hide_unactionable_messages() -> None:
    """Keep Lightning's un-actionable tips and warnings (above) out of the run's output; idempotent."""
    for name in LIGHTNING_INFO_LOGGERS:
        logger = logging.getLogger(name)
        if _not_a_tip not in logger.filters:
            logger.addFilter(_not_a_tip)
    for pattern in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
