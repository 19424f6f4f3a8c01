"""The one evaluation path: batch sums, their metrics, and the Trainer, evaluate.py and the bare loop agreeing."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from cifar_lit.bench import bare_loop as baseline
from cifar_lit.data.datamodule import ImageDataModule
from cifar_lit.data.options import DataOptions
from cifar_lit.reporting.inference import TrainedModel, evaluate_images
from cifar_lit.training.metrics import EvaluationSums, RunningMean, confusion_counts, evaluation_sums, training_sums
from cifar_lit.training.module import CIFARClassifier
from cifar_lit.training.options import ModelOptions


def test_confusion_counts_match_numpy_and_stay_exact_under_bf16_autocast():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (3000,), generator=generator)
    predictions = torch.where(torch.rand(3000, generator=generator) < 0.7, labels,
                              torch.randint(0, 10, (3000,), generator=generator))
    expected = np.bincount(labels.numpy() * 10 + predictions.numpy(), minlength=100).reshape(10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        counts = confusion_counts(labels, predictions, 10)
    assert counts.dtype == torch.float32 and np.array_equal(counts.numpy(), expected)
    ones = torch.zeros(1001, dtype=torch.long)  # 1001 is not a bf16 number: a bf16 product would round it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert confusion_counts(ones, ones, 10)[0, 0] == 1001


def test_evaluation_sums_give_accuracy_loss_per_class_and_tta():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 10, generator=generator)
    flipped = torch.randn(50, 10, generator=generator)
    labels = torch.randint(0, 10, (50,), generator=generator)
    metric = EvaluationSums(10)
    for part in (slice(0, 20), slice(20, 50)):  # two batches add up like one
        metric.update(evaluation_sums(logits[part], labels[part], 10, flipped[part]))
    results = metric.compute()
    predictions = logits.argmax(1)
    assert results["images"] == 50 and results["confusion"].sum() == 50
    assert results["acc"] == pytest.approx((predictions == labels).float().mean().item())
    assert results["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    tta = (logits.softmax(1) + flipped.softmax(1)).argmax(1)
    assert results["acc_tta"] == pytest.approx((tta == labels).float().mean().item())
    for label in range(10):
        mine = labels == label
        if mine.any():
            expected = (predictions[mine] == label).float().mean().item()
            assert results["per_class"][label] == pytest.approx(expected)


def test_running_means_of_training_sums_weight_by_batch_size():
    accuracy, loss = RunningMean(), RunningMean()
    for size, value in ((10, 2.0), (30, 1.0)):
        logits = torch.zeros(size, 10)
        logits[:, 3] = 1.0
        labels = torch.full((size,), 3 if size == 10 else 4)
        sums = training_sums(logits, labels, torch.tensor(value))
        accuracy.update(sums[0:2])
        loss.update(sums[2:4])
    assert accuracy.compute() == pytest.approx(10 / 40)
    assert loss.compute() == pytest.approx((10 * 2.0 + 30 * 1.0) / 40)


@pytest.mark.parametrize("flip_tta", [False, True], ids=["plain", "flip-tta"])
def test_trainer_evaluate_py_and_bare_loop_report_the_same_evaluation(image_folder, flip_tta):
    torch.manual_seed(0)
    module = CIFARClassifier(ModelOptions(width=8, flip_tta=flip_tta, channels_last=False))
    datamodule = ImageDataModule(DataOptions(data_dir=str(image_folder), eval_batch_size=32, channels_last=False))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    by_trainer = module.evaluation["test"]

    test = datamodule.splits["test"]
    trained = TrainedModel(module=module.eval(), mean=datamodule.mean, std=datamodule.std,
                           hparams=dict(module.hparams), datamodule_hparams={})
    by_report, _ = evaluate_images(trained, test.images, test.labels, batch_size=32, flip_tta=flip_tta)

    by_bare = baseline.evaluate(module, datamodule, contextlib.nullcontext)

    assert by_report["confusion_matrix"] == by_trainer["confusion"].tolist() == by_bare["confusion"].tolist()
    assert by_report["images"] == by_trainer["images"] == by_bare["images"] == len(test)
    assert by_report["accuracy"] == pytest.approx(by_trainer["acc"].item()) == pytest.approx(by_bare["acc"].item())
    assert by_report["loss"] == pytest.approx(by_trainer["loss"].item(), rel=1e-5)
    assert by_bare["loss"].item() == pytest.approx(by_trainer["loss"].item(), rel=1e-5)
    if flip_tta:
        assert by_report["accuracy_flip_tta"] == pytest.approx(by_trainer["acc_tta"].item())
        assert by_bare["acc_tta"].item() == pytest.approx(by_trainer["acc_tta"].item())
