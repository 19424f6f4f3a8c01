import math

import pytest
import pytorch_lightning as pl
import torch

from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.options import DataOptions
from cifar_lit.run.config import parse_options
from cifar_lit.training.module import CIFARClassifier
from cifar_lit.training.optim import build_scheduler, build_sgd, lr_factor, split_decay_groups
from cifar_lit.training.options import ModelOptions


def test_a_few_sgd_steps_lower_the_loss():
    torch.manual_seed(0)
    model = CIFARClassifier(ModelOptions(lr=0.05, label_smoothing=0.0, width=8))  # narrow: the full one took 9 s
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    optimizer = build_sgd(model.model, 0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    losses = []
    for _ in range(8):
        loss = model.train_criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_batch_norm_and_biases_get_no_weight_decay():
    model = CIFARClassifier().model
    decay, no_decay = split_decay_groups(model)
    assert all(p.ndim == 4 for p in decay[:-1]) and decay[-1] is model.linear.weight
    assert any(p is model.bn1.weight for p in no_decay)
    assert any(p is model.linear.bias for p in no_decay)
    optimizer = build_sgd(model, 0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, norm_bias_weight_decay=0.0,
                          norm_bias_lr_scale=0.5)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.05]
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 11_173_962


@pytest.mark.parametrize("kind", ["onecycle", "linear", "cosine"])
def test_schedules_warm_up_peak_and_anneal(kind):
    factor = lr_factor(kind, total_steps=100, warmup_steps=20, start_factor=0.04, end_factor=0.0)
    values = [factor(step) for step in range(101)]
    assert values[0] == pytest.approx(0.04)
    assert values[20] == pytest.approx(1.0) and max(values) == pytest.approx(1.0)
    assert values[100] == pytest.approx(0.0, abs=1e-9)
    assert all(a <= b + 1e-12 for a, b in zip(values[:20], values[1:21], strict=True))
    assert all(a >= b - 1e-12 for a, b in zip(values[20:-1], values[21:], strict=True))
    # halfway through the 80 decay steps every shape is at one half; a quarter of the way, linear is at 3/4 and the
    # cosine-shaped falls (onecycle, cosine) are at (1 + cos(pi/4)) / 2
    assert values[60] == pytest.approx(0.5)
    assert values[40] == pytest.approx(0.75 if kind == "linear" else (1 + math.cos(math.pi / 4)) / 2)


def test_scheduler_steps_per_batch_over_estimated_stepping_batches(image_folder):
    model = CIFARClassifier(ModelOptions(lr=0.1, schedule="linear", warmup_fraction=0.0, width=8))
    datamodule = ImageDataModule(DataOptions(data_dir=str(image_folder), batch_size=30))
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=0, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    assert model.schedule_total_steps == 3 * 2 == trainer.estimated_stepping_batches
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "step" and config.scheduler.last_epoch == 6
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("batch_size, limit", [(30, None), (32, None), (30, 4), (30, 0.5)])
def test_total_steps_agree_with_lightnings_estimate(image_folder, batch_size, limit):
    datamodule = ImageDataModule(DataOptions(data_dir=str(image_folder), batch_size=batch_size))
    model = CIFARClassifier(ModelOptions(width=8))
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=limit, limit_val_batches=0, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_steps=1)
    trainer.fit(model, datamodule=datamodule)
    trainer.fit_loop.epoch_loop.max_steps = -1
    assert model.total_training_steps() == trainer.estimated_stepping_batches


def test_lr_scales_with_the_global_batch():
    model = CIFARClassifier(ModelOptions(lr=0.2, lr_reference_batch_size=256, batch_size=512))

    class FakeTrainer:
        world_size = 4

    model._trainer = FakeTrainer()
    assert model.peak_lr() == pytest.approx(0.2 * 512 * 4 / 256)


def test_schedule_rebuilt_over_a_longer_run_keeps_the_step():
    model = torch.nn.Linear(2, 2)
    first = build_scheduler(build_sgd(model, 1.0, momentum=0.9, nesterov=True, weight_decay=0.0), "linear",
                            total_steps=100, warmup_fraction=0.0, start_factor=1.0, end_factor=0.0)
    for _ in range(50):
        first.optimizer.step()
        first.step()
    assert first.get_last_lr()[0] == pytest.approx(0.5)
    second = build_scheduler(build_sgd(model, 1.0, momentum=0.9, nesterov=True, weight_decay=0.0), "linear",
                             total_steps=200, warmup_fraction=0.0, start_factor=1.0, end_factor=0.0)
    second.load_state_dict(first.state_dict())
    second.optimizer.step()
    second.step()
    assert second.last_epoch == 51
    assert second.get_last_lr()[0] == pytest.approx(1 - 51 / 200)
    assert not math.isclose(second.get_last_lr()[0], 1 - 51 / 100)


def test_one_batch_size_flag_sets_the_loaders_and_the_lr_scaling():
    options = parse_options(["--batch-size", "512"])
    assert CIFARClassifier(options.model).hparams.batch_size == 512
    assert ImageDataModule(options.data).hparams.batch_size == 512
