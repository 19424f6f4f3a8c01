"""Bad input that used to pass the first checks and break later (issue 24): config values, resumes that drift from
their checkpoint or data, runs that would train nothing, write failures other than a full disk, evaluate.py's
inputs, and damaged files. Each is one `error:` paragraph, a non-zero exit and nothing lost."""

from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import TINY_FLAGS
from PIL import Image

from cifar_lit.data.image_folder import load_image_folder_split
from cifar_lit.hardware.plan import choose_accelerator
from cifar_lit.reliability import files, run_folder
from cifar_lit.reliability.checkpoints import load_checkpoint
from cifar_lit.reliability.errors import CheckpointError, DataError
from cifar_lit.reporting.evaluate import main as evaluate
from cifar_lit.run import train as run
from cifar_lit.run.config import parse_options
from cifar_lit.run.train import main
from cifar_lit.training.module import CIFARClassifier
from cifar_lit.training.options import ModelOptions


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and "\n" not in err, err
    return err


@pytest.mark.parametrize("text, fragment", [
    ("momentum: null\n", "--momentum (config key 'momentum') is null, but it must be a number in [0, 1)"),
    ("seed: -1\n", "--seed (config key 'seed') is -1, but it must be an integer from 0 to 4294967295"),
    ("seed: 1099511627776\n", "is 1099511627776, but it must be an integer from 0 to 4294967295"),
    ("lr: .inf\n", "--lr (config key 'lr') is inf, but it must be a finite number > 0"),
    ("weight_decay: .nan\n", "--weight-decay (config key 'weight_decay') is nan, but it must be a finite number"),
    ("max_epochs: 100000000\n", "is 100000000, but it must be an integer from 1 to 10000"),
    ("lr: [0.1, 0.2\n", "is not valid YAML at line 2"),
    ("- lr\n- 0.1\n", "holds a list, not a mapping of options"),
], ids=["null", "negative-seed", "huge-seed", "infinite-lr", "nan-decay", "epochs", "damaged-yaml", "not-a-mapping"])
def test_config_values_that_broke_later_are_refused_at_start(tiny_flags, tmp_path, capsys, text, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main([*tiny_flags, "--config", str(config)]) == 2
    err = one_error(capsys)
    assert fragment in err and (str(config) in err or "config key" in err)
    assert not (tmp_path / "logs").exists()


def test_flags_override_config_files_wherever_they_stand(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("batch_size: 64\nmax_epochs: 4\n")
    for argv in (["--config", str(preset), "--batch-size", "32"], ["--batch-size", "32", "--config", str(preset)],
                 ["--batch-size=32", f"--config={preset}"]):
        options = parse_options(argv)
        assert (options.model.batch_size, options.data.batch_size, options.run.max_epochs) == (32, 32, 4), argv


def test_a_long_warm_up_before_a_target_is_warned_of(tiny_flags, caplog):
    with caplog.at_level("WARNING"):
        assert main([*tiny_flags, "--max-epochs", "400", "--warmup-fraction", "0.25", "--target-acc", "0.9",
                     "--fast-dev-run"]) == 0
    assert "The LR warms up over 100 epochs" in caplog.text


@pytest.mark.parametrize("flags, clash", [(["--gpus", "0", "--devices", "2"], "--devices 2"),
                                           (["--gpus", "0", "--accelerator", "cuda"], "--accelerator cuda")],
                         ids=["cpu-with-two-devices", "cpu-with-cuda"])
def test_gpus_beside_a_devices_or_accelerator_it_overrides_is_refused(tiny_flags, tmp_path, capsys, flags, clash):
    assert main([*tiny_flags, *flags]) == 2
    assert f"--gpus 0 means --accelerator cpu --devices 1, so {clash} beside it would have no effect" in \
        one_error(capsys)
    assert not list((tmp_path / "logs").glob("version_*"))
    agreeing = parse_options(["--gpus", "0", "--devices", "1", "--accelerator", "cpu"]).hardware_request()
    assert choose_accelerator(agreeing) == ("cpu", 1), "flags that agree with --gpus are fine"


def test_a_batch_larger_than_the_data_trains_nothing_and_is_refused(tiny_flags, tmp_path, capsys):
    assert main([*tiny_flags, "--batch-size", "500"]) == 2
    err = one_error(capsys)
    assert "--batch-size 500 is larger than the 300 training images" in err and "no step would run" in err
    assert not list((tmp_path / "logs").glob("version_*"))


def test_a_non_finite_loss_before_any_checkpoint_removes_the_empty_run(tiny_flags, tmp_path, capsys, monkeypatch):
    original = CIFARClassifier.training_step
    monkeypatch.setattr(CIFARClassifier, "training_step",
                        lambda self, batch, index: original(self, batch, index) * float("nan"))
    assert main([*tiny_flags, "--max-epochs", "1"]) == run.EXIT_NON_FINITE
    err = capsys.readouterr().err
    assert "no checkpoint had been written, so there is nothing to resume" in err and "resume from" not in err
    assert not list((tmp_path / "logs").glob("version_*"))


# ------------------------------------------------------------------------------------------------- resumes


@pytest.fixture(scope="module")
def finished_run(image_folder_master, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("drift")
    data = Path(shutil.copytree(image_folder_master, root / "data"))
    assert main([*TINY_FLAGS, "--data-dir", str(data), "--logdir", str(root / "logs"), "--max-epochs", "1",
                 "--target-acc", "1.0"]) == 0
    (run_dir,) = (root / "logs").glob("version_*")
    return run_dir


@pytest.mark.slow
def test_a_checkpoint_out_of_its_run_folder_resumes_with_the_configuration_it_carries(finished_run, tmp_path):
    moved = tmp_path / "elsewhere" / "last.ckpt"
    moved.parent.mkdir()
    shutil.copy(finished_run / "checkpoints" / "last.ckpt", moved)
    logdir = tmp_path / "new_logs"
    # No --width, no --batch-size, no --lr: they come from the checkpoint, not from the defaults.
    assert main(["--resume", str(moved), "--logdir", str(logdir), "--max-epochs", "2", "--no-progress-bar"]) == 0
    (run_dir,) = logdir.glob("version_*")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["width"], config["batch_size"], config["lr"]) == (8, 30, 0.005)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["global_steps"] == 20


@pytest.mark.slow
@pytest.mark.parametrize("flag, fragment", [(["--width", "16"], "--width 16 does not match"),
                                            (["--batch-size", "20"], "--batch-size 20 does not match")])
def test_a_resume_that_contradicts_its_checkpoint_is_refused_before_anything_is_touched(finished_run, capsys, flag,
                                                                                         fragment):
    before = {path.name: path.read_bytes() for path in finished_run.iterdir() if path.is_file()}
    assert main(["--resume", str(finished_run / "checkpoints" / "last.ckpt"), "--max-epochs", "2", *flag]) == 2
    assert fragment in one_error(capsys)
    assert {path.name: path.read_bytes() for path in finished_run.iterdir() if path.is_file()} == before


@pytest.mark.slow
def test_a_data_folder_that_changed_since_the_stop_is_refused_before_anything_is_touched(finished_run, tmp_path,
                                                                                          capsys):
    data = Path(yaml.safe_load((finished_run / "config.yaml").read_text())["data_dir"])
    fewer = Path(shutil.copytree(data, tmp_path / "fewer", ignore=shutil.ignore_patterns(".cifar_lit_cache")))
    for path in sorted((fewer / "train" / "cat").iterdir())[:5]:
        path.unlink()
    before = {path.name: path.read_bytes() for path in finished_run.iterdir() if path.is_file()}
    assert main(["--resume", str(finished_run / "checkpoints" / "last.ckpt"), "--max-epochs", "2", "--data-dir",
                 str(fewer)]) == 2
    err = one_error(capsys)
    assert "The train images in" in err and "changed since" in err and "300 images then, 295 now" in err
    assert {path.name: path.read_bytes() for path in finished_run.iterdir() if path.is_file()} == before


@pytest.mark.slow
def test_config_yaml_names_the_data_folder_absolutely(finished_run):
    assert Path(yaml.safe_load((finished_run / "config.yaml").read_text())["data_dir"]).is_absolute()


# ------------------------------------------------------------------------------------------------- file systems


@pytest.mark.slow
@pytest.mark.parametrize("number, fragment", [(errno.EFBIG, "file-size limit"), (errno.EROFS, "read-only"),
                                              (errno.EACCES, "permission denied")])
def test_other_write_failures_are_one_clear_error(tiny_flags, tmp_path, capsys, monkeypatch, number, fragment):
    real_open = open

    def failing(path, *args, **kwargs):
        if "metrics.csv" in str(path):
            raise OSError(number, os.strerror(number), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", failing, raising=False)
    assert main([*tiny_flags, "--max-epochs", "1", "--target-acc", "1.0"]) == 2
    err = one_error(capsys)
    assert err.startswith("error: Could not write") and "metrics.csv" in err and fragment in err


@pytest.mark.slow
def test_a_read_only_run_folder_is_refused_when_resuming(finished_run, capsys, monkeypatch):
    real_probe = run_folder.write_probe

    def read_only(folder):
        if folder.name == "checkpoints":  # the resumed run's folder; the log folder above it stays writable
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real_probe(folder)

    monkeypatch.setattr(run_folder, "write_probe", read_only)
    before = {path.name: path.read_bytes() for path in finished_run.iterdir() if path.is_file()}
    assert main(["--resume", str(finished_run / "checkpoints" / "last.ckpt"), "--max-epochs", "2"]) == 2
    err = one_error(capsys)
    assert "Cannot write to the resumed run's folder" in err and "Read-only file system" in err
    assert {path.name: path.read_bytes() for path in finished_run.iterdir() if path.is_file()} == before


def test_file_names_that_are_not_utf8_are_read(image_folder):
    folder = os.fsencode(image_folder / "train" / "cat")
    image = Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8))
    odd = folder + b"/\xff\xfe-odd.png"
    with open(odd, "wb") as handle:
        image.save(handle, format="PNG")
    split = load_image_folder_split(image_folder, "train")
    assert len(split) == 301


def test_a_broken_link_in_the_data_is_named(image_folder):
    link = image_folder / "test" / "dog" / "gone.png"
    link.symlink_to(image_folder / "nowhere.png")
    with pytest.raises(DataError, match=r"gone.png is a link to a file that does not exist"):
        load_image_folder_split(image_folder, "test")


def test_a_checkpoint_with_a_flipped_byte_is_refused(tmp_path):
    path = tmp_path / "good.ckpt"
    network = CIFARClassifier(ModelOptions(width=8))
    torch.save({"state_dict": network.state_dict(), "pytorch-lightning_version": "2.6.6"}, path)
    with zipfile.ZipFile(path) as archive:
        member = next(info for info in archive.infolist() if "/data/" in info.filename and info.file_size > 1000)
    data = bytearray(path.read_bytes())
    data[member.header_offset + 30 + len(member.filename) + len(member.extra) + 100] ^= 0x10
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(data))
    assert load_checkpoint(path)["state_dict"]
    with pytest.raises(CheckpointError, match=r"is damaged: its record .* fails its CRC32 checksum"):
        load_checkpoint(damaged)


# ------------------------------------------------------------------------------------------------- evaluate.py


@pytest.mark.parametrize("argv, fragment", [
    (["--batch-size", "0"], "argument --batch-size: '0' is not an integer >= 1"),
    (["--batch-size", "-5"], "argument --batch-size: '-5' is not an integer >= 1"),
    (["--gpus", "-1"], "argument --gpus: '-1' is not an integer >= 0"),
], ids=["zero-batch", "negative-batch", "negative-gpus"])
def test_evaluate_refuses_bad_numbers(tmp_path, capsys, argv, fragment):
    assert evaluate(["--ckpt", str(tmp_path / "x.ckpt"), *argv]) == 2
    assert fragment in one_error(capsys)


@pytest.mark.slow
def test_evaluate_refuses_a_folder_as_checkpoint_a_folder_without_pictures_and_a_file_as_out(finished_run, tmp_path,
                                                                                              capsys):
    last = finished_run / "checkpoints" / "last.ckpt"
    assert evaluate(["--ckpt", str(finished_run), "--gpus", "0"]) == 2
    assert "is a folder, not a checkpoint file" in one_error(capsys)
    assert evaluate(["--ckpt", str(last), "--gpus", "0", "--images", str(tmp_path)]) == 2
    assert f"No pictures in {tmp_path}" in one_error(capsys)
    assert evaluate(["--ckpt", str(last), "--gpus", "0", "--images", str(tmp_path), "--output", "rows.txt"]) == 2
    assert "--output rows.txt must end in .csv or .json" in one_error(capsys)
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    assert evaluate(["--ckpt", str(last), "--gpus", "0", "--out", str(taken)]) == 2
    assert f"--out {taken} is a file" in one_error(capsys) and taken.read_text() == "keep me"


@pytest.mark.slow
def test_evaluate_names_missing_data_without_suggesting_a_download(finished_run, tmp_path, capsys):
    assert evaluate(["--ckpt", str(finished_run / "checkpoints" / "last.ckpt"), "--gpus", "0", "--data-dir",
                     str(tmp_path / "none")]) == 2
    err = one_error(capsys)
    assert "evaluate.py does not download" in err and "Pass --download" not in err


@pytest.mark.slow
def test_evaluate_names_a_damaged_config_or_summary(finished_run, tmp_path, capsys):
    copy = Path(shutil.copytree(finished_run, tmp_path / "version_0"))
    (copy / "config.yaml").write_text("data_dir: [unclosed\n")
    assert evaluate(["--ckpt", str(copy / "checkpoints" / "last.ckpt"), "--gpus", "0"]) == 2
    assert f"The run's configuration {copy / 'config.yaml'} is damaged" in one_error(capsys)
    (copy / "summary.json").write_text('{"test_acc": 0.5,')
    assert evaluate(["--compare", str(copy), str(finished_run), "--out", str(tmp_path / "cmp")]) == 2
    assert f"{copy / 'summary.json'} is damaged" in one_error(capsys)


@pytest.mark.slow
def test_evaluate_names_a_relative_data_folder_it_cannot_find(finished_run, tmp_path, capsys, monkeypatch):
    copy = Path(shutil.copytree(finished_run, tmp_path / "version_0"))
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["data_dir"] = "data"  # as runs before this version recorded it
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert evaluate(["--ckpt", str(copy / "checkpoints" / "last.ckpt"), "--gpus", "0"]) == 2
    err = one_error(capsys)
    assert "names the data folder 'data', relative to the folder train.py ran in" in err and "--data-dir" in err
