"""What the network sees: Grad-CAM maps on the grids, the LR range test, the model summary, augmented batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import EVERY_EPOCH_FIGURES, TINY_FLAGS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_lit.reliability.errors import ConfigError
from cifar_lit.reporting.gradcam import class_activation_maps, maps_for_predictions, network_layer
from cifar_lit.reporting.model_summary import model_summary_text
from cifar_lit.run.lr_range_test import keep_group_ratios, smoothed, steepest_descent_lr
from cifar_lit.run.train import main
from cifar_lit.training.module import CIFARClassifier
from cifar_lit.training.optim import build_sgd


def network_with_gradients() -> CIFARClassifier:
    torch.manual_seed(0)
    module = CIFARClassifier(width=8)
    for parameter in module.parameters():
        parameter.grad = torch.randn_like(parameter)
    return module


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-run"])
def test_maps_have_the_image_size_lie_in_0_1_and_leave_the_network_as_it_was(dtype):
    module = network_with_gradients()
    module.train()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    images = torch.randn(6, 3, 32, 32).to(dtype)
    # As inside Lightning's validation of a bf16 run: no grad, autocast on.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        maps = class_activation_maps(module.model, images, torch.tensor([0, 1, 2, 3, 4, 5]))
    assert maps.shape == (6, 32, 32) and maps.dtype == torch.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0 and torch.isclose(maps.flatten(1).amax(1), torch.ones(6)).any()
    assert module.training and module.model.training
    for name, parameter in module.named_parameters():
        assert torch.equal(parameter.grad, grads[name]), f"{name}.grad changed"
    for name, buffer in module.named_buffers():
        assert torch.equal(buffer, buffers[name]), f"{name} changed (batch-norm statistics)"


def test_the_maps_follow_the_class_asked_for():
    module = network_with_gradients().eval()
    image = torch.randn(1, 3, 32, 32)
    maps = [class_activation_maps(module.model, image, torch.tensor([c]))[0] for c in range(3)]
    assert not torch.allclose(maps[0], maps[1]) or not torch.allclose(maps[1], maps[2])


def test_drawing_maps_compiles_nothing_again():
    from torch._dynamo.utils import counters

    module = network_with_gradients().eval()
    step = torch.compile(lambda x: module.model(x).sum(), backend="eager", fullgraph=True, dynamic=False)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        step(images)
    before = dict(counters["stats"])
    with torch.no_grad():
        maps_for_predictions(module.model, images, torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0]))
        step(images)
    assert dict(counters["stats"]) == before, "no frame compiled again after the maps were drawn"


def test_a_layer_that_does_not_exist_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="layer9.*choose one of conv1, bn1, layer1, layer2, layer3, layer4, linear"):
        network_layer(CIFARClassifier(width=8).model, "layer9")


def test_the_lr_suggestion_is_the_steepest_point_in_log_lr():
    lrs = np.logspace(-4, 1, 100)
    steepest = 10 ** -1.5
    losses = 2.0 - np.tanh(3.0 * (np.log10(lrs) - np.log10(steepest)))  # falls fastest at `steepest`
    suggested = steepest_descent_lr(lrs, losses)
    assert suggested == pytest.approx(steepest, rel=0.15)
    assert steepest_descent_lr(lrs[:12], np.full(12, np.nan)) is None
    diverged = np.concatenate([losses, np.linspace(losses[-1], 6.0, 30)[1:], np.linspace(6.0, 4.0, 40)])
    wide = np.logspace(-4, 3, len(diverged))
    assert steepest_descent_lr(wide, diverged) < wide[len(losses)], "the fall after divergence is not a suggestion"


def test_the_smoothing_starts_at_the_first_loss_not_half_of_it():
    curve = smoothed(np.array([2.3, 2.3, 2.3, float("nan"), 2.3]))
    assert np.allclose(curve[[0, 1, 2, 4]], 2.3) and np.isnan(curve[3])


def test_the_norm_bias_group_keeps_its_lr_ratio_during_the_sweep():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = build_sgd(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, norm_bias_lr_scale=0.5)
    for group in optimizer.param_groups:
        group["lr"] = 0.02  # what Lightning's sweep sets every group to

    keep_group_ratios(optimizer.param_groups, [1.0, 0.5])
    assert [group["lr"] for group in optimizer.param_groups] == [0.02, 0.01]


def test_the_model_summary_counts_the_resnet18():
    text = model_summary_text(64, 10)
    assert "11,173,962 parameters" in text and "Total params: 11,173,962" in text
    assert "Mult-Adds" in text and "Units." not in text and "[1, 512, 4, 4]" in text


@pytest.mark.slow
def test_find_lr_writes_its_plot_and_json_and_touches_no_run(image_folder, tmp_path, capsys, monkeypatch):
    from cifar_lit.run import lr_range_test

    # The record names the device the sweep ran on (a GPU run's record once named the CPU).
    monkeypatch.setattr(lr_range_test, "device_description", lambda device=None: f"the device {device}")
    logdir = tmp_path / "logs"
    assert main([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(logdir), "--find-lr",
                 "--lr-find-steps", "30", "--norm-bias-lr-scale", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "Suggested --lr: " in out
    record = json.loads((logdir / "lr_find" / "lr_find.json").read_text())
    assert len(record["lrs"]) == len(record["losses"]) == len(record["raw_losses"]) == 30
    assert record["suggested_lr"] in record["lrs"]
    assert record["device"] == "the device cpu"
    assert record["losses"][0] == pytest.approx(record["raw_losses"][0]), "smoothing starts at the first loss"
    assert all(norm_bias == pytest.approx(0.5 * weights) for weights, norm_bias in record["group_lrs"])
    assert record["group_lrs"][-1][0] > 100 * record["group_lrs"][0][0], "the sweep raised the LR"
    assert record["suggested_flag_lr"] == pytest.approx(record["suggested_lr"] * 30 / 30)
    assert f"{record['suggested_flag_lr']:.3g}" in out
    assert (logdir / "lr_find" / "lr_find.png").stat().st_size > 10_000
    assert not list(logdir.glob("version_*")) and not list(tmp_path.rglob("*.ckpt")), "no run, no checkpoint"


@pytest.fixture(scope="module")
def insight_run(image_folder_master, tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("insight")
    data = Path(shutil.copytree(image_folder_master, logdir.parent / "insight_data"))
    assert main([*TINY_FLAGS, *EVERY_EPOCH_FIGURES, "--data-dir", str(data), "--logdir", str(logdir),
                 "--max-epochs", "2", "--target-acc", "1.0", "--lr", "auto", "--lr-find-steps", "20"]) == 0
    (run_dir,) = logdir.glob("version_*")
    return run_dir


@pytest.mark.slow
def test_lr_auto_trains_with_the_range_tests_suggestion(insight_run):
    summary = json.loads((insight_run / "summary.json").read_text())
    suggested = summary["lr_range_test"]["suggested_flag_lr"]
    config = yaml.safe_load((insight_run / "config.yaml").read_text())
    assert config["lr"] == float(f"{suggested:.3g}") == summary["config"]["lr"]
    checkpoint = torch.load(insight_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["lr"] == config["lr"]


@pytest.mark.slow
def test_a_run_draws_gradcam_grids_the_augmented_batch_and_its_model_summary(insight_run):
    images = set(EventAccumulator(str(insight_run), size_guidance={"images": 0}).Reload().Tags()["images"])
    assert {"train/augmented", "val/gradcam_misclassified", "val/gradcam_correct", "test/gradcam_misclassified",
            "test/gradcam_correct", "val/misclassified"} <= images
    for name in ("gradcam_misclassified.png", "gradcam_correct.png"):
        assert (insight_run / name).stat().st_size > 10_000
    summary_text = (insight_run / "model_summary.txt").read_text()
    assert "width 8, 10 classes" in summary_text and "Total params" in summary_text


@pytest.mark.slow
def test_the_report_has_gradcam_and_the_model_summary(insight_run, tmp_path):
    from cifar_lit.reporting.evaluate import main as evaluate

    best = next((insight_run / "checkpoints").glob("best-*.ckpt"))
    assert evaluate(["--ckpt", str(best), "--gpus", "0", "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Grad-CAM" in report and (tmp_path / "report" / "gradcam_misclassified.png").is_file()
    assert (tmp_path / "report" / "model_summary.txt").is_file()
