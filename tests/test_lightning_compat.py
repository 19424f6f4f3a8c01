"""One test per function of cifar_lit.lightning_compat: each fails when a Lightning upgrade changes the behaviour
that function relies on (the function's docstring says why it is needed)."""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
import warnings
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import AsyncCheckpointIO
from torch.utils.data import DataLoader, TensorDataset

from cifar_lit import lightning_compat as compat
from cifar_lit.reliability.signals import SIGNALS


class Tiny(pl.LightningModule):
    """A one-weight model on 6 samples (3 batches of 2); logs a scripted val/acc per epoch."""

    def __init__(self, accuracies=(0.5,)) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.accuracies = accuracies

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        value = self.accuracies[min(self.current_epoch, len(self.accuracies) - 1)]
        self.log("val/acc", torch.tensor(value))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(6, 1)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=2)


def trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path, num_sanity_val_steps=0, max_epochs=1, enable_checkpointing=False)
    options.update(kwargs)
    return pl.Trainer(**options)


class Record(Callback):
    def __init__(self, hook: str, read) -> None:
        self.values = []
        setattr(self, hook, lambda trainer, *args, **kwargs: self.values.append(read(trainer)))


def epoch_end_checkpoint(tmp_path: Path) -> Path:
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", save_top_k=1, monitor=None)
    trainer(tmp_path, callbacks=[saver], enable_checkpointing=True).fit(Tiny())
    return tmp_path / "ckpt" / "last.ckpt"


class EpochAtIteratorStart(Tiny):
    """Records (current_epoch, epochs_trained) when each training epoch's iterator starts, as TensorBatchLoader
    reads its epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def train_dataloader(self):
        module = self

        class Loader:
            def __len__(self):
                return 3

            def __iter__(self):
                module.seen.append((module.trainer.current_epoch, compat.epochs_trained(module.trainer)))
                return iter([(torch.ones(2, 1),)] * 3)

        return Loader()


def test_epochs_trained_is_right_after_an_epoch_end_resume_where_current_epoch_is_not(tmp_path):
    checkpoint = epoch_end_checkpoint(tmp_path)
    model = EpochAtIteratorStart()
    trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(model, ckpt_path=checkpoint, weights_only=True)
    current_epoch, trained = model.seen[0]  # the resumed epoch's iterator
    assert trained == 1
    assert current_epoch == 0, "current_epoch now names the new epoch: epochs_trained may no longer be needed"


def test_epochs_completed_reads_the_saved_loop_state(tmp_path):
    checkpoint = torch.load(epoch_end_checkpoint(tmp_path), weights_only=True)
    assert compat.epochs_completed(checkpoint) == 1
    assert checkpoint["epoch"] == 0  # why not checkpoint["epoch"]: it names the finished epoch


def test_on_last_batch_of_epoch_is_set_before_the_batch_end_hook(tmp_path):
    record = Record("on_train_batch_end", compat.on_last_batch_of_epoch)
    trainer(tmp_path, callbacks=[record], limit_val_batches=0).fit(Tiny())
    assert record.values == [False, False, True]


def test_a_checkpoint_saved_on_the_last_batch_skips_that_epochs_validation_on_resume(tmp_path):
    """Why mid-epoch checkpoints avoid the last batch (the reason behind on_last_batch_of_epoch)."""

    class SaveOnLastBatch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if compat.on_last_batch_of_epoch(trainer) and trainer.current_epoch == 0:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    trainer(tmp_path, callbacks=[SaveOnLastBatch()]).fit(Tiny())
    validated = Record("on_validation_end", lambda t: t.current_epoch)
    trainer(tmp_path, callbacks=[validated], max_epochs=2).fit(Tiny(), ckpt_path=tmp_path / "mid.ckpt",
                                                                weights_only=True)
    assert validated.values == [1], "epoch 0's validation now runs on resume: StepCheckpoint's rule may go"


def test_saved_after_last_batch_tells_epoch_end_from_mid_epoch_checkpoints(tmp_path):
    class SaveAtBatch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    trainer(tmp_path, callbacks=[SaveAtBatch()]).fit(Tiny())
    assert not compat.saved_after_last_batch(torch.load(tmp_path / "mid.ckpt", weights_only=True))
    assert compat.saved_after_last_batch(torch.load(epoch_end_checkpoint(tmp_path), weights_only=True))


@pytest.mark.parametrize("limit, accumulate, max_epochs", [(None, 1, 2), (2, 1, 3), (0.5, 1, 2), (None, 2, 2)])
def test_training_steps_match_estimated_stepping_batches(tmp_path, limit, accumulate, max_epochs):
    fitted = trainer(tmp_path, limit_train_batches=limit, accumulate_grad_batches=accumulate, max_epochs=max_epochs,
                     limit_val_batches=0)
    fitted.fit(Tiny())
    assert compat.training_steps(fitted, batches_per_epoch=3) == fitted.estimated_stepping_batches


def test_estimated_stepping_batches_builds_the_training_loader_before_a_checkpoint_is_restored(tmp_path):
    """Why training_steps exists: asked in configure_optimizers, Lightning builds the training loader then,
    before the checkpoint's loop state is restored."""
    checkpoint = epoch_end_checkpoint(tmp_path)
    requested = []

    class Asking(Tiny):
        def train_dataloader(self):
            requested.append(self.trainer.global_step)  # 0: the checkpoint's 3 steps are not restored yet
            return super().train_dataloader()

        def configure_optimizers(self):
            _ = self.trainer.estimated_stepping_batches
            return super().configure_optimizers()

    trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(Asking(), ckpt_path=checkpoint, weights_only=True)
    assert requested == [0], "the loader is now built after restoring: training_steps may no longer be needed"


def test_keep_own_signal_handlers_takes_sigterm_back_during_fit(tmp_path):
    def ours(signum, frame):
        pass

    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    seen = []
    try:
        for signum in SIGNALS:
            signal.signal(signum, ours)
        plain = trainer(tmp_path, callbacks=[Record("on_train_start", lambda t: seen.append(
            signal.getsignal(signal.SIGTERM)))], limit_val_batches=0)
        plain.fit(Tiny())
        assert seen[-1] is not ours, "Lightning no longer installs a SIGTERM handler: keep_own_signal_handlers may go"
        kept = trainer(tmp_path, callbacks=[Record("on_train_start", lambda t: seen.append(
            signal.getsignal(signal.SIGTERM)))], limit_val_batches=0)
        compat.keep_own_signal_handlers(kept, lambda: signal.signal(signal.SIGTERM, ours))
        kept.fit(Tiny())
        assert seen[-1] is ours
        assert signal.getsignal(signal.SIGTERM) is ours  # and Lightning's teardown leaves ours in place
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_lightnings_sigterm_stop_is_a_system_exit_with_status_zero():
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    stop = SIGTERMException()
    assert compat.is_lightning_sigterm(stop) and not compat.is_lightning_sigterm(SystemExit())
    assert isinstance(stop, SystemExit) and stop.code is None  # exits 0: why a single process handles SIGTERM itself


class SlowIO:
    """A checkpoint IO whose saves take a while; records the order of events."""

    def __init__(self, events: list, fail: bool = False) -> None:
        self.events, self.fail = events, fail

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        time.sleep(0.2)
        if self.fail:
            raise OSError("disk full")
        self.events.append(("saved", path))

    def remove_checkpoint(self, path):
        self.events.append(("removed", path))

    def teardown(self):
        pass


@pytest.mark.parametrize("fail", [False, True], ids=["after-a-save", "not-after-a-failed-save"])
def test_queue_after_pending_saves_runs_behind_the_writer(fail):
    events = []
    async_io = AsyncCheckpointIO(SlowIO(events, fail=fail))
    async_io.save_checkpoint({"weights": torch.ones(2)}, "new.ckpt")
    compat.queue_after_pending_saves(async_io, lambda: events.append(("work", threading.current_thread().name)))
    with pytest.raises(OSError) if fail else _nothing():
        async_io.teardown()
    if fail:
        assert events == []
    else:
        assert events[0] == ("saved", "new.ckpt") and events[1][0] == "work"
        assert events[1][1] != threading.current_thread().name  # on the writer thread


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_threshold_reached_and_forgotten(tmp_path):
    stop = EarlyStopping(monitor="val/acc", mode="max", stopping_threshold=0.8, patience=100)
    fitted = trainer(tmp_path, callbacks=[stop], max_epochs=5)
    fitted.fit(Tiny(accuracies=(0.5, 0.9)))
    assert fitted.current_epoch == 2 and compat.threshold_reached(stop)
    compat.forget_threshold_stop(stop)
    assert not compat.threshold_reached(stop)


def test_release_callbacks_lets_a_callback_outlive_its_module(tmp_path):
    kept, module = Callback(), Tiny()
    run = trainer(tmp_path, callbacks=[kept])
    run.fit(module)
    assert kept.log.__self__ is module, "Lightning binds callback.log to the module (the reason for the function)"
    alive = weakref.ref(module)
    compat.release_callbacks(run)
    del module, run
    gc.collect()
    assert alive() is None and not hasattr(kept, "log_dict")


def test_unactionable_messages_are_hidden_and_still_exist(tmp_path, caplog, recwarn):
    caplog.set_level(logging.INFO)
    for name in compat.LIGHTNING_INFO_LOGGERS:  # as before any run in this process hid them
        logging.getLogger(name).removeFilter(compat._not_a_tip)
    trainer(tmp_path, logger=TensorBoardLogger(tmp_path))
    assert "💡 Tip:" in caplog.text, "Lightning no longer prints its tips: the filter may go"
    caplog.clear()
    compat.hide_unactionable_messages()
    trainer(tmp_path, logger=TensorBoardLogger(tmp_path))
    assert "💡 Tip:" not in caplog.text and "GPU available" in caplog.text, "only the tips are hidden"
    fitted = trainer(tmp_path, max_epochs=1)
    fitted.fit(Tiny(accuracies=(0.5,)))
    fitted.save_checkpoint(tmp_path / "as_lr_find_saves.ckpt")  # weights_only not given, as Lightning's lr_find
    assert "weights_only" not in caplog.text
    warnings.warn("Checkpoint directory /x exists and is not empty.", UserWarning, stacklevel=1)
    warnings.warn("something a user can act on", UserWarning, stacklevel=1)
    assert [str(w.message) for w in recwarn] == ["something a user can act on"]


def test_loss_scale_is_the_scalers_device_tensor_and_halves_on_a_skipped_step():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler.scale((weight * float("inf")).sum()).backward()
    scale = compat.loss_scale(trainer)
    assert isinstance(scale, torch.Tensor) and float(scale) == 1024.0
    scaler.step(optimizer)
    scaler.update()
    assert float(compat.loss_scale(trainer)) == 512.0 == scaler.get_scale()
    assert compat.loss_scale(SimpleNamespace(precision_plugin=SimpleNamespace())) is None  # bf16, fp32: no scaler
