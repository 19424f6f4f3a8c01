"""What the network sees: Grad-CAM maps on the grids, the LR range test, the model summary, augmented batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import EVERY_EPOCH_FIGURES, TINY_FLAGS, built_once
from synthetic import write_noise_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_lit.reliability.errors import ConfigError
from cifar_lit.reporting.gradcam import class_activation_maps, maps_for_predictions, network_layer
from cifar_lit.reporting.model_summary import model_summary_text
from cifar_lit.run.lr_range_test import centred_average, guessing_loss, keep_group_ratios, steepest_descent_lr
from cifar_lit.run.train import main
from cifar_lit.training.module import CIFARClassifier
from cifar_lit.training.optim import build_sgd
from cifar_lit.training.options import ModelOptions


def network_with_gradients() -> CIFARClassifier:
    torch.manual_seed(0)
    module = CIFARClassifier(ModelOptions(width=8))
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
    with pytest.raises(ConfigError, match=r"layer9.*choose one of conv1, bn1, layer1, layer2, layer3, layer4 or a"):
        network_layer(CIFARClassifier(ModelOptions(width=8)).model, "layer9")


def test_a_layer_without_spatial_maps_is_refused_and_a_block_inside_a_stage_is_taken():
    network = CIFARClassifier(ModelOptions(width=8)).model
    with pytest.raises(ConfigError, match=r"'linear' has no spatial maps.*layer4 or a block inside one"):
        network_layer(network, "linear")
    assert network_layer(network, "layer3.1.conv2") is network.layer3[1].conv2


def test_gradcam_layer_linear_is_refused_by_train_py_at_start_up(image_folder, tmp_path, capsys):
    logdir = tmp_path / "logs"
    assert main([*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(logdir), "--gradcam-layer",
                 "linear"]) == 2
    assert "error: --gradcam-layer 'linear' has no spatial maps" in capsys.readouterr().err
    assert not list(logdir.glob("version_*")), "refused before a run folder exists"


def test_the_lr_suggestion_is_the_steepest_point_in_log_lr_below_the_minimum():
    lrs = np.logspace(-4, 1, 100)
    steepest = 10 ** -2.5
    losses = 2.0 - np.tanh(3.0 * (np.log10(lrs) - np.log10(steepest)))  # falls fastest at `steepest`
    losses += np.where(lrs > 0.05, 40 * (np.log10(lrs) - np.log10(0.05)) ** 2, 0.0)  # then diverges
    suggested = steepest_descent_lr(lrs, losses, skip=5)
    assert suggested == pytest.approx(steepest, rel=0.15) and suggested < lrs[np.argmin(losses)]
    assert steepest_descent_lr(lrs[:12], np.full(12, np.nan), skip=2) is None
    assert steepest_descent_lr(lrs, np.linspace(1.0, 3.0, 100), skip=5) is None, "lowest at the start: no descent"


def test_the_smoothing_is_centred_so_the_curve_does_not_lag():
    step = np.r_[np.full(50, 2.3), np.full(50, 1.3)]
    curve = centred_average(step, 5)
    assert curve[44] == pytest.approx(2.3) and curve[55] == pytest.approx(1.3)
    assert curve[49] > 1.8 > curve[50], "the drop stays where it happened"
    assert np.isnan(centred_average(np.array([2.3, float("nan"), 2.3]), 1)[1])


def test_guessing_loss_is_the_entropy_of_the_label_smoothed_class_frequencies():
    assert guessing_loss(np.repeat(np.arange(10), 3), 10, 0.1) == pytest.approx(np.log(10))
    skewed = guessing_loss(np.array([0] * 90 + [1] * 10), 2, 0.0)
    assert skewed == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)))


def test_the_norm_bias_group_keeps_its_lr_ratio_during_the_sweep():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = build_sgd(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, norm_bias_lr_scale=0.5)
    for group in optimizer.param_groups:
        group["lr"] = 0.02  # what Lightning's sweep sets every group to

    keep_group_ratios(optimizer.param_groups, [1.0, 0.5])
    assert [group["lr"] for group in optimizer.param_groups] == [0.02, 0.01]


def test_the_model_summary_counts_the_resnet18():
    text = model_summary_text("resnet18", 64, 10)
    assert "11,173,962 parameters" in text and "Total params: 11,173,962" in text
    assert "Mult-Adds" in text and "Units." not in text and "[1, 512, 4, 4]" in text


@pytest.mark.slow
def test_find_lr_writes_its_plot_and_json_and_touches_no_run(image_folder, tmp_path, capsys, monkeypatch):
    from cifar_lit.run import lr_range_test

    # The record names the device the sweep ran on (a GPU run's record once named the CPU).
    monkeypatch.setattr(lr_range_test, "device_description", lambda device=None: f"the device {device}")
    logdir = tmp_path / "logs"
    # --max-epochs 1 holds 10 steps of this set: the sweep re-reads it to run the 30 asked for.
    flags = [*TINY_FLAGS, "--data-dir", str(image_folder), "--logdir", str(logdir), "--find-lr", "--lr-find-steps",
             "30", "--norm-bias-lr-scale", "0.5", "--max-epochs", "1"]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert "Suggested --lr: " in out
    record = json.loads((logdir / "lr_find_0" / "lr_find.json").read_text())
    assert len(record["lrs"]) == len(record["losses"]) == len(record["raw_losses"]) == record["steps_asked"] == 30
    assert record["suggested_lr"] in record["lrs"] and record["suggested_lr"] < record["lowest_loss_lr"]
    assert record["lowest_loss"] < 0.95 * record["guessing_loss"] and record["problem"] is None
    assert record["device"] == "the device cpu"
    assert all(norm_bias == pytest.approx(0.5 * weights) for weights, norm_bias in record["group_lrs"])
    assert record["group_lrs"][-1][0] > 100 * record["group_lrs"][0][0], "the sweep raised the LR"
    assert record["suggested_flag_lr"] == pytest.approx(record["suggested_lr"] * 30 / 30)
    assert f"{record['suggested_flag_lr']:.3g}" in out
    assert (logdir / "lr_find_0" / "lr_find.png").stat().st_size > 10_000
    assert not list(logdir.glob("version_*")) and not list(tmp_path.rglob("*.ckpt")), "no run, no checkpoint"
    assert main(flags) == 0
    assert (logdir / "lr_find_1" / "lr_find.json").is_file(), "a second sweep keeps the first one's results"


@pytest.mark.slow
def test_noise_gets_no_suggestion_and_lr_auto_refuses_to_train_on_one(tmp_path, capsys):
    noise = write_noise_folder(tmp_path / "noise")
    logdir = tmp_path / "logs"
    assert main([*TINY_FLAGS, "--data-dir", str(noise), "--logdir", str(logdir), "--lr", "auto",
                 "--lr-find-steps", "30"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the sweep's progress bar
    assert err.startswith("error: The LR range test (30 steps) gives no suggestion: the training loss never fell "
                          "below what guessing scores (2.303"), err
    assert "Give --lr a number" in err and str(logdir / "lr_find_0" / "lr_find.png") in err
    assert not list(logdir.glob("version_*")), "nothing trained"
    record = json.loads((logdir / "lr_find_0" / "lr_find.json").read_text())
    assert record["suggested_lr"] is None and record["lowest_loss"] > 0.95 * record["guessing_loss"]


@pytest.fixture(scope="module")
def insight_run(image_folder_master, tmp_path_factory) -> Path:
    """One run for the session: the module's tests, slow ones first, are spread over the workers and over time, and
    a worker that comes back to the module would set a module fixture up again."""
    def run(folder: Path) -> None:
        data = Path(shutil.copytree(image_folder_master, folder / "data"))
        assert main([*TINY_FLAGS, *EVERY_EPOCH_FIGURES, "--data-dir", str(data), "--logdir", str(folder / "logs"),
                     "--max-epochs", "2", "--target-acc", "1.0", "--lr", "auto", "--lr-find-steps", "20"]) == 0

    (run_dir,) = (built_once(tmp_path_factory, "insight_run", run) / "logs").glob("version_*")
    return run_dir


@pytest.mark.slow
def test_lr_auto_trains_with_the_range_tests_suggestion_and_keeps_its_plot_in_the_run(insight_run):
    summary = json.loads((insight_run / "summary.json").read_text())
    suggested = summary["lr_range_test"]["suggested_flag_lr"]
    assert summary["lr_range_test"]["folder"] == str(insight_run / "lr_find")
    assert (insight_run / "lr_find" / "lr_find.png").is_file() and not list(insight_run.parent.glob("lr_find_*"))
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
def test_gradcam_layer_linear_is_refused_by_evaluate_py_before_it_writes(insight_run, tmp_path, capsys):
    from cifar_lit.reporting.evaluate import main as evaluate

    best = next((insight_run / "checkpoints").glob("best-*.ckpt"))
    report = tmp_path / "report"
    assert evaluate(["--ckpt", str(best), "--gpus", "0", "--out", str(report), "--gradcam-layer", "linear"]) == 2
    assert "error: --gradcam-layer 'linear' has no spatial maps" in capsys.readouterr().err
    assert not report.exists(), "nothing half-written"


@pytest.mark.slow
def test_the_report_has_gradcam_and_the_model_summary(insight_run, tmp_path):
    from cifar_lit.reporting.evaluate import main as evaluate

    best = next((insight_run / "checkpoints").glob("best-*.ckpt"))
    assert evaluate(["--ckpt", str(best), "--gpus", "0", "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Grad-CAM" in report and (tmp_path / "report" / "gradcam_misclassified.png").is_file()
    assert (tmp_path / "report" / "model_summary.txt").is_file()
