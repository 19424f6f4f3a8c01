"""Full disks and the other ways a write fails: a check of the log folder's free space before training, and one
clear error for a write that fails for lack of space, a quota, a file-size limit, a read-only file system or a
missing permission, however it surfaces (an OSError from Python, a RuntimeError from torch's zip writer, an error
re-raised by TensorBoard's writer thread)."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from cifar_lit.reliability.errors import UserError

OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# errno -> (what it means, what to do), for every write failure the user can fix
WRITE_FAILURES = {
    errno.ENOSPC: ("the disk is full", "Free space there or choose --logdir on a larger disk"),
    errno.EDQUOT: ("the disk quota is used up", "Free space within your quota or choose --logdir elsewhere"),
    errno.EFBIG: ("the file is larger than the file system or the process's file-size limit allows (ulimit -f)",
                  "Raise the limit (ulimit -f unlimited) or choose --logdir on another file system"),
    errno.EROFS: ("the file system is read-only", "Choose --logdir on a writable file system"),
    errno.EACCES: ("permission denied", "Fix the folder's permissions or choose another --logdir"),
    errno.EPERM: ("the operation is not permitted", "Fix the folder's permissions or choose another --logdir"),
}
# torch.save reports a failed write as "PytorchStreamWriter failed writing file ...: file write failed"
TORCH_WRITE_FAILED = "file write failed"
REPORTS_BYTES = 64 * 2**20  # a margin for TensorBoard events with image grids, figures, metrics.csv, summary
MB = 2**20


class DiskFullError(UserError):
    """A write failed for a reason the user can fix: a full disk or quota, a file-size limit, a read-only file
    system, a missing permission."""


def write_failure_cause(error: BaseException | None) -> BaseException | None:
    """The fixable write failure (WRITE_FAILURES, or torch's "file write failed") in `error`'s chain of causes
    (Lightning's TensorBoard logger re-raises any writer error as a ValueError about unsupported values), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in WRITE_FAILURES:
            return error
        if isinstance(error, RuntimeError) and TORCH_WRITE_FAILED in str(error):
            return error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def is_write_failure(error: BaseException) -> bool:
    """Whether `error` is a write failure the user can fix (WRITE_FAILURES)."""
    return write_failure_cause(error) is not None


def disk_full_message(path: Path | str, error: BaseException) -> str:
    number = error.errno if isinstance(error, OSError) else errno.ENOSPC  # torch's writer names no errno
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[-1]
    meaning, fix = WRITE_FAILURES.get(number, (reason, "Check that folder and its file system"))
    return (f"Could not write {path}: {meaning} ({reason}). Files written before it (checkpoints, metrics) are "
            f"intact and no half-written file is left. {fix}, then resume with --resume last (or run again if no "
            "checkpoint was written).")


@contextmanager
def out_of_space_as_error(folder: Path | str) -> Iterator[None]:
    """Turn a fixable write failure met anywhere in the block (TensorBoard's writer thread re-raises its OSError on
    the next log call, without a file name) into a DiskFullError naming the file, or `folder` when it names none."""
    try:
        yield
    except Exception as error:
        cause = write_failure_cause(error)
        if cause is None or isinstance(error, UserError):  # already a clear message
            raise
        raise DiskFullError(disk_full_message(getattr(cause, "filename", None) or folder, cause)) from None


def tensor_bytes(module: nn.Module) -> int:
    return sum(value.numel() * value.element_size() for value in module.state_dict().values()
               if isinstance(value, torch.Tensor))


def bytes_needed(model: nn.Module, weights_only_best: bool, ema: bool) -> int:
    """What a run writes at most, from the network's real size: last.ckpt (weights, momentum, EMA copy), the best
    checkpoint, one more of the larger while it is written beside the old one, and the reports."""
    weights = tensor_bytes(model)
    full = weights * (3 if ema else 2)
    best = weights * (2 if ema else 1) if weights_only_best else full
    return full + best + max(full, best) + REPORTS_BYTES


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start when the disk holding `folder` (or its nearest existing parent) has less than `needed`."""
    existing = Path(folder).expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise DiskFullError(
            f"The log folder {folder} has {free / MB:.0f} MB free, and this run writes up to {needed / MB:.0f} MB "
            "(checkpoints at the network's real size, one more while it is written, TensorBoard and reports). "
            "Free space there or choose --logdir on a larger disk."
        )
