"""Full disks: refused before training when the log folder cannot hold the run, and a clear error (exit 2, earlier
files intact, no temporary file left) when any writer meets ENOSPC, however it surfaces."""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from cifar_lit.models.resnet import resnet18
from cifar_lit.reliability import checkpoints, disk, files
from cifar_lit.run.train import main

SHORT = ["--width", "8", "--target-acc", "1.0", "--max-epochs", "2", "--figures"]  # every writer, figures too


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("error, expected", [
    (enospc(), True),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), True),
    (OSError(errno.EACCES, os.strerror(errno.EACCES)), True),
    (OSError(errno.EFBIG, os.strerror(errno.EFBIG)), True),
    (OSError(errno.EROFS, os.strerror(errno.EROFS)), True),
    (OSError(errno.ENOENT, os.strerror(errno.ENOENT)), False),
    (RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/3: "
                  "file write failed"), True),
    (RuntimeError("CUDA error: out of memory"), False),
])
def test_write_failures_are_recognised_however_they_surface(error, expected):
    """Out of space, out of quota, a file-size limit, a read-only file system, a missing permission; not a missing
    file (a bug of ours, not the user's to fix) nor another runtime error."""
    assert disk.is_write_failure(error) is expected


def test_the_estimate_covers_the_checkpoints_at_their_real_size(tmp_path):
    model = resnet18()
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    weights = path.stat().st_size
    assert disk.tensor_bytes(model) == pytest.approx(weights, rel=0.01)
    # last.ckpt (weights + momentum) + best + one more being written + reports
    assert disk.bytes_needed(model, weights_only_best=False, ema=False) >= 6 * weights
    assert disk.bytes_needed(model, weights_only_best=True, ema=False) >= 5 * weights


def test_a_log_folder_without_room_for_the_run_is_refused_before_anything_is_written(noisy_flags, tmp_path, capsys,
                                                                                      monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: real(path)._replace(free=10 * disk.MB))
    assert main([*noisy_flags, *SHORT]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: The log folder {tmp_path / 'logs'} has 10 MB free") and "--logdir" in err
    assert not (tmp_path / "logs").exists()


def fail_on_call(monkeypatch, owner, name: str, failing_call: int, error: BaseException, when=lambda *a: True):
    """Make owner.name raise `error` from its `failing_call`-th call on which `when(*args)` holds."""
    real = getattr(owner, name, None) or getattr(builtins, name)  # a builtin such as open, seen from `owner`
    calls = []

    def failing(*args, **kwargs):
        if when(*args):
            calls.append(args)
            if len(calls) >= failing_call:
                raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing, raising=False)


def named(fragment: str):
    return lambda path, *rest: fragment in Path(path).name


WRITERS = {
    # writer -> (patch target, attribute, failing call, error, filter, what the message names)
    "checkpoint (torch's RuntimeError)": (checkpoints.torch, "save", 3, RuntimeError(
        "PytorchStreamWriter failed writing file data/0: file write failed"), lambda *a: True, "checkpoint"),
    "metrics.csv": (files, "open", 2, enospc(), named("metrics.csv"), "metrics.csv"),
    "a figure": (files, "open", 1, enospc(), named(".png"), ".png"),
    "summary.json": (files, "open", 1, enospc(), named("summary.json"), "summary.json"),
    "TensorBoard": (EventFileWriter, "add_event", 40, enospc(), lambda *a: True, "version_0"),
}


@pytest.mark.slow
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_full_disk_at_any_writer_is_a_clear_error_and_keeps_earlier_files(writer, noisy_flags, tmp_path, capsys,
                                                                             monkeypatch):
    owner, name, failing_call, error, when, names = WRITERS[writer]
    fail_on_call(monkeypatch, owner, name, failing_call, error, when)
    assert main([*noisy_flags, *SHORT]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Could not write") and names in err.splitlines()[0], err
    assert "Traceback" not in err and ("disk is full" in err or "No space left" in err)
    monkeypatch.undo()
    (run_dir,) = sorted((tmp_path / "logs").glob("version_*"))
    assert not [path for path in run_dir.rglob(".*.tmp")], "no half-written file is left"
    for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):
        assert checkpoints.load_checkpoint(checkpoint)["global_step"] in (10, 20)  # complete, loadable
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        assert main(["--resume", str(run_dir / "checkpoints" / "last.ckpt")]) == 0
        assert json.loads((run_dir / "summary.json").read_text())["global_steps"] == 20
