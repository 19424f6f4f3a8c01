"""train.py end to end on a small synthetic set: outputs, stopping, resuming, and every bad input."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import EVERY_EPOCH_FIGURES
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_lit.phases import PHASES
from cifar_lit.run.progress import TrainingForecast
from cifar_lit.run.stop_at_target import REACHED_TOLERANCE
from cifar_lit.run.train import main

ROOT = Path(__file__).resolve().parent.parent


def run_dirs(logdir: Path) -> list[Path]:
    return sorted(logdir.glob("version_*")) if logdir.exists() else []


@pytest.mark.slow
def test_fast_dev_run_runs_one_batch_and_writes_nothing(tiny_flags, tmp_path, capsys):
    assert main([*tiny_flags, "--fast-dev-run"]) == 0
    assert "fast-dev-run finished" in capsys.readouterr().out
    assert run_dirs(tmp_path / "logs") == []


@pytest.mark.slow
def test_short_run_stops_at_target_and_records_everything(tiny_flags, tmp_path, capsys):
    assert main([*tiny_flags, *EVERY_EPOCH_FIGURES, "--width", "8", "--target-acc", "0.6", "--max-epochs", "6"]) == 0
    out = capsys.readouterr().out
    (run_dir,) = run_dirs(tmp_path / "logs")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["target_reached"] and summary["target_epoch"] == summary["epochs_run"] < 6
    # accuracies are float32: exactly 60% is stored as 0.60000002, 90% as 0.89999998
    assert summary["best_val_acc"] >= 0.6 - REACHED_TOLERANCE and summary["test_acc"] >= 0.6 - REACHED_TOLERANCE
    assert summary["target_seconds"] > 0 and summary["total_seconds"] >= summary["train_seconds"]
    assert summary["config"]["target_acc"] == 0.6 and summary["config"]["batch_size"] == 30
    assert {"torch", "pytorch_lightning", "torchvision"} <= set(summary["versions"])
    assert summary["device"].startswith("CPU") and len(summary["val_acc_per_epoch"]) == summary["epochs_run"]
    assert f"target 60% reached at epoch {summary['target_epoch']}" in out
    checkpoints = {p.name for p in (run_dir / "checkpoints").iterdir()}
    best_epoch = summary["val_acc_per_epoch"].index(max(summary["val_acc_per_epoch"])) + 1  # counted from 1
    assert checkpoints == {"last.ckpt", f"best-epoch{best_epoch:03d}.ckpt"}, "one numbering of epochs everywhere"
    for picture in ("accuracy.png", "loss.png", "misclassified.png", "correct.png"):
        with Image.open(run_dir / picture) as image:
            assert image.size[0] > 200 and image.size[1] > 100
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,train_acc") and len(rows) == summary["epochs_run"] + 1
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["target_acc"] == 0.6
    phases = summary["phase_seconds"]
    assert list(phases) == list(PHASES) and all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) == pytest.approx(summary["total_seconds"], rel=0.03)
    assert all(phases[name] > 0 for name in PHASES if name != "warmup"), phases  # no compile, no warm-up
    assert summary["process"]["total_seconds"] == pytest.approx(summary["total_seconds"])  # one process

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/acc", "train/loss", "val/acc", "val/loss", "test/acc", "test/loss"} <= scalars
    assert any(tag.startswith("lr") for tag in scalars)
    assert {f"phases/{name}" for name in PHASES} <= scalars
    assert [e.value for e in events.Scalars("val/acc")][-1] >= 0.6 - REACHED_TOLERANCE
    image_tags = events.Tags()["images"]
    assert "val/misclassified" in image_tags and "test/misclassified" in image_tags and "val/correct" in image_tags
    grid = events.Images("val/misclassified")[-1]
    assert grid.width > 100 and grid.height > 100 and grid.encoded_image_string[:4] == b"\x89PNG"


def test_the_cpu_forecast_says_how_long_an_epoch_and_the_run_take_and_how_to_shorten_them():
    message = TrainingForecast().forecast(3.1, 195, 10)
    assert message.startswith("On the CPU this run takes about 10 min an epoch (3.1 s a step x 195 steps) and up to "
                              "1.7 h for its 10 epoch(s) left")
    assert "--gpus 1" in message and "--limit-train-batches" in message and "--width 16" in message
    assert TrainingForecast().forecast(0.05, 10, 10) is None, "a quick run is not worth a word"


@pytest.mark.slow
def test_a_cpu_run_forecasts_its_length_and_its_bar_counts_epochs_from_one(tiny_flags, tmp_path, monkeypatch, caplog,
                                                                            capsys):
    monkeypatch.setattr(TrainingForecast, "SAY_ABOVE_SECONDS", 0.0)  # the tiny run as slow as the full network
    with caplog.at_level("INFO"):
        assert main([*tiny_flags, "--max-epochs", "2", "--target-acc", "1.0", "--progress-bar"]) == 0
    (forecast,) = [message for message in caplog.messages if message.startswith("On the CPU this run takes")]
    assert "x 10 steps) and up to" in forecast and "for its 2 epoch(s) left" in forecast
    bar = capsys.readouterr().out  # Lightning's bar writes to stdout
    assert "Epoch 1/2" in bar and "Epoch 2/2" in bar and "Epoch 0" not in bar
    assert " 1/10 " in bar, "on the CPU the bar moves after every step, not every tenth"


@pytest.mark.slow
def test_lr_and_step_loss_reach_tensorboard_every_epoch_whatever_log_every_n_steps(tiny_flags, tmp_path):
    flags = [*tiny_flags, "--width", "8", "--target-acc", "1.0", "--max-epochs", "3", "--log-every-n-steps", "50"]
    assert main(flags) == 0  # 10 steps per epoch: at 50, Lightning alone would log no step scalar at all
    (run_dir,) = run_dirs(tmp_path / "logs")
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    lr_tag = next(tag for tag in events.Tags()["scalars"] if tag.startswith("lr"))
    for tag in (lr_tag, "train/loss_step"):
        steps = [event.step for event in events.Scalars(tag)]
        assert len(steps) == 3 and len({step // 10 for step in steps}) == 3, (tag, steps)


@pytest.mark.slow
def test_resume_last_carries_on_epochs_steps_and_history(tiny_flags, tmp_path):
    logdir = tmp_path / "logs"
    assert main([*tiny_flags, "--target-acc", "1.0", "--max-epochs", "1"]) == 0
    (run_dir,) = run_dirs(logdir)
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0 and first["global_step"] == 10
    assert main(["--resume", "last", "--logdir", str(logdir), "--max-epochs", "3"]) == 0
    assert run_dirs(logdir) == [run_dir]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["global_steps"] == 30
    assert summary["config"]["batch_size"] == 30  # the run's own config, not the defaults
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 30 and last["epoch"] == 2
    assert last["lr_schedulers"][0]["last_epoch"] == 30
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 3
    # durations after a resume: the run's totals cover both processes, the process block only this one
    assert summary["total_seconds"] >= summary["train_seconds"] > 0
    assert sum(summary["phase_seconds"].values()) == pytest.approx(summary["total_seconds"], rel=0.03)
    assert 0 < summary["process"]["total_seconds"] < summary["total_seconds"]
    for name, seconds in summary["process"]["phase_seconds"].items():
        assert seconds <= summary["phase_seconds"][name] + 1e-9, name


@pytest.mark.slow
def test_resuming_a_run_that_reached_its_target_does_nothing(tiny_flags, tmp_path, capsys):
    assert main([*tiny_flags, "--target-acc", "0.5", "--max-epochs", "4"]) == 0
    (run_dir,) = run_dirs(tmp_path / "logs")
    before = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--resume", "last", "--logdir", str(tmp_path / "logs")]) == 0
    assert "Nothing to do" in capsys.readouterr().out
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before


# ------------------------------------------------------------------------------------------------ bad input


def expect_clean_error(argv, capsys, logdir, *fragments):
    before = run_dirs(logdir)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert run_dirs(logdir) == before


@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("--max-epochs", "0", "--max-epochs (config key 'max_epochs') is 0"),
        ("--target-acc", "0", "--target-acc (config key 'target_acc') is 0, but it must be a fraction in (0, 1]"),
        ("--max-epochs", "x", "--max-epochs (config key 'max_epochs') is x, but it must be an integer from 1 to 10000"),
        ("--limit-train-batches", "0", "is 0, but it must be an integer >= 1 (or null)"),
        ("--precision", "fp8", "must be one of bf16-mixed, 16-mixed"),
        ("--target-acc", "1.5", "fraction in (0, 1]"),
        ("--batch-size", "0", "--batch-size (config key 'batch_size') is 0"),
        ("--lr", "-1", "--lr"),
        ("--schedule", "sometimes", "schedule"),
        ("--bogus-flag", "1", "unrecognized arguments: --bogus-flag"),
    ],
)
def test_out_of_range_values_are_refused(tiny_flags, tmp_path, capsys, flag, value, fragment):
    expect_clean_error([*tiny_flags, flag, value], capsys, tmp_path / "logs", fragment)


def test_unknown_config_key_is_refused(tiny_flags, tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("max_epochs: 3\nbatch_sise: 64\n")
    expect_clean_error([*tiny_flags, "--config", str(config)], capsys, tmp_path / "logs", "batch_sise")


def test_missing_config_file_is_refused(tiny_flags, tmp_path, capsys):
    expect_clean_error([*tiny_flags, "--config", str(tmp_path / "nope.yaml")], capsys, tmp_path / "logs", "nope.yaml")


def test_missing_dataset_without_download(tiny_flags, tmp_path, capsys):
    expect_clean_error([*tiny_flags, "--data-dir", str(tmp_path / "empty")], capsys, tmp_path / "logs",
                       str(tmp_path / "empty"), "--download")


def test_data_folder_with_a_missing_class(tiny_flags, image_folder, tmp_path, capsys):
    import shutil

    shutil.rmtree(image_folder / "test" / "truck")
    expect_clean_error(tiny_flags, capsys, tmp_path / "logs", "train has truck and", "test does not")


def test_unreadable_image(tiny_flags, image_folder, tmp_path, capsys):
    victim = sorted((image_folder / "train" / "deer").iterdir())[0]
    victim.write_bytes(b"\x89PNG broken")
    expect_clean_error(tiny_flags, capsys, tmp_path / "logs", str(victim))


def test_missing_checkpoint(tiny_flags, tmp_path, capsys):
    expect_clean_error([*tiny_flags, "--resume", str(tmp_path / "gone.ckpt")], capsys, tmp_path / "logs",
                       "gone.ckpt does not exist")


def test_unreadable_checkpoint(tiny_flags, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    expect_clean_error([*tiny_flags, "--resume", str(bad)], capsys, tmp_path / "logs", "Cannot read the checkpoint")


def test_checkpoint_of_another_model(tiny_flags, tmp_path, capsys):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.linear.weight": torch.zeros(100, 512)}, "pytorch-lightning_version": "2.6.6"},
               other)
    expect_clean_error([*tiny_flags, "--resume", str(other)], capsys, tmp_path / "logs",
                       "does not hold the 10-class resnet18", "model.linear.weight (100, 512)")


def test_checkpoint_with_an_implausible_width_is_refused_before_building_it(tiny_flags, tmp_path, capsys):
    crafted = tmp_path / "wide.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.6", "hyper_parameters": {"width": 10**7}}, crafted)
    expect_clean_error([*tiny_flags, "--resume", str(crafted)], capsys, tmp_path / "logs",
                       "names a network width of 10000000", "not written by cifar_lit")


def test_resume_last_without_any_run(tiny_flags, tmp_path, capsys):
    expect_clean_error([*tiny_flags, "--resume", "last"], capsys, tmp_path / "logs", "found no checkpoints/last.ckpt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpus_without_a_gpu(tiny_flags, tmp_path, capsys):
    expect_clean_error([*tiny_flags, "--gpus", "1"], capsys, tmp_path / "logs", "--gpus 1", "--gpus 0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the order on a machine without a GPU")
def test_missing_gpu_is_reported_before_any_download_is_tried(tmp_path, capsys, monkeypatch):
    from torchvision.datasets import CIFAR10

    tried = []
    monkeypatch.setattr(CIFAR10, "download", lambda self: tried.append(self.root))
    assert main(["--gpus", "1", "--data-dir", str(tmp_path / "data"), "--logdir", str(tmp_path / "logs")]) == 2
    assert "--gpus 1 asks for 1 GPU(s)" in capsys.readouterr().err
    assert tried == [] and not (tmp_path / "data").exists() and not (tmp_path / "logs").exists()


def test_a_command_line_error_exits_2_with_one_error_paragraph_and_no_traceback(tiny_flags, capsys):
    assert main([*tiny_flags, "--max-epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.strip().count("\n") == 0


def test_help_lists_every_flag_of_the_issue(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    for flag in ("--gpus", "--config", "--data-dir", "--download", "--no-download", "--max-epochs", "--target-acc",
                 "--batch-size", "--lr", "--seed", "--resume", "--fast-dev-run", "--logdir", "--precision",
                 "--accelerator", "--devices", "--num-nodes", "--strategy"):
        assert flag in printed, flag
