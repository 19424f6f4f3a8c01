import logging

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer

from cifar_lit.run.stop_at_target import StopAtTarget


class ScriptedAccuracy(pl.LightningModule):
    """Logs a scripted val/acc per epoch, as float32 like torchmetrics does."""

    def __init__(self, accuracies):
        super().__init__()
        self.accuracies = accuracies
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        value = self.accuracies[min(self.current_epoch, len(self.accuracies) - 1)]
        self.log("val/acc", torch.tensor(value, dtype=torch.float32))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)

    def val_dataloader(self):
        return self.train_dataloader()


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO)


def fit(accuracies, target, max_epochs=10, progress_bar=False):
    timer = Timer(duration=None, verbose=False)
    stop = StopAtTarget(target, timer)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=progress_bar, enable_model_summary=False, callbacks=[timer, stop],
                         num_sanity_val_steps=0)
    trainer.fit(ScriptedAccuracy(accuracies))
    return trainer, stop


def test_stops_in_the_epoch_the_target_is_reached_exactly(caplog):
    trainer, stop = fit([0.5, 0.8499, 0.85, 0.9], target=0.85)
    assert trainer.current_epoch == 3 and stop.reached_epoch == 3
    assert stop.reached_value == pytest.approx(0.85)
    assert stop.reached_seconds is not None and stop.reached_seconds > 0
    assert "Target reached: val/acc = 0.8500 >= 0.85 at epoch 3, after" in caplog.text


def test_with_a_progress_bar_the_target_line_stands_on_a_line_of_its_own(capsys):
    fit([0.5, 0.9], target=0.85, progress_bar=True)
    printed = capsys.readouterr()
    lines = (printed.out + printed.err).replace("\r", "\n").splitlines()
    assert any(line.startswith("Target reached: val/acc = 0.9000 >= 0.85 at epoch 2") for line in lines), lines


def test_never_stops_for_lack_of_improvement_before_the_target():
    trainer, stop = fit([0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.6], target=0.6)
    assert stop.reached_epoch == 7 and trainer.current_epoch == 7


def test_runs_all_epochs_when_the_target_is_not_reached():
    trainer, stop = fit([0.1, 0.2, 0.3], target=0.85, max_epochs=3)
    assert stop.reached_epoch is None and trainer.current_epoch == 3


def test_reached_state_survives_a_checkpoint_but_not_a_raised_target():
    _, stop = fit([0.9], target=0.85)
    state = stop.state_dict()
    same = StopAtTarget(0.85, Timer())
    same.load_state_dict(state)
    assert same.reached_epoch == 1
    raised = StopAtTarget(0.95, Timer())
    raised.load_state_dict(state)
    assert raised.reached_epoch is None
