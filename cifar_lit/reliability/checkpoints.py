"""Checkpoints that survive kills and cannot run code: atomic writes, weights-only loads, compatibility checks."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import AsyncCheckpointIO

from cifar_lit.lightning_compat import TorchCheckpointIO, queue_after_pending_saves
from cifar_lit.models import BASE_WIDTH, DEFAULT_MODEL, MODELS, build_model
from cifar_lit.phases import phase
from cifar_lit.reliability.disk import disk_full_message, is_write_failure, write_failure_cause
from cifar_lit.reliability.errors import CheckpointError
from cifar_lit.reliability.files import atomic_file

LAST_NAME = "last.ckpt"
CHECKPOINT_FOLDER = "checkpoints"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, flushes it to disk, then renames it into place.

    A kill at any moment leaves either the previous complete file or the new complete file, never a torn one.
    (Lightning's own save writes the target in place through an fsspec transaction whose temporary file lives
    in the system temp folder, so the final move can be a copy.) A failed write (full disk, no permission)
    leaves the previous checkpoint untouched and says so.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        try:
            with atomic_file(path) as handle:
                torch.save(checkpoint, handle)
        except (OSError, RuntimeError) as error:
            if not (isinstance(error, OSError) or is_write_failure(error)):
                raise
            raise CheckpointError(
                f"{disk_full_message(f'the checkpoint {path}', write_failure_cause(error) or error)} The checkpoints "
                f"already in {path.parent} are untouched."
            ) from None


class OrderedAsyncCheckpointIO(AsyncCheckpointIO):
    """Lightning's AsyncCheckpointIO (tensors cloned on the device, written by one background thread), with removals
    queued behind the saves in the same thread.

    ModelCheckpoint deletes the previous best right after asking for the new one; with plain asynchronous saving
    that deletion could run before the new file exists, so a kill or a failed write would leave no best checkpoint.
    Here a file is only removed once every earlier save has landed, and never after a save failed.
    """

    def remove_checkpoint(self, path: Any) -> None:
        assert self.checkpoint_io is not None
        queue_after_pending_saves(self, lambda: self.checkpoint_io.remove_checkpoint(path))

    def teardown(self) -> None:
        with phase("checkpoints"):  # waits for the writes still queued
            super().teardown()


def checkpoint_file(path: Path, resuming: bool = True) -> Path:
    """`path`, when it is a file; otherwise a CheckpointError saying what it is and where checkpoints are."""
    path = Path(path)
    if not path.is_file():
        last = ", or --resume last for the newest one under --logdir" if resuming else ""
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise CheckpointError(
            f"The checkpoint {path} {what}. Give the path of a .ckpt file written by train.py (they are in "
            f"<logdir>/version_N/{CHECKPOINT_FOLDER}/){last}."
        )
    return path


def check_integrity(path: Path) -> None:
    """Refuse a checkpoint whose bytes changed after it was written. torch.save writes a zip archive with a CRC32
    of every record, which torch.load never checks: a flipped bit inside a tensor would load silently. Checking
    them here costs a read of the file (about 0.1 s for the 90 MB of last.ckpt), at resume and evaluation only,
    and needs no format of our own: it works for every checkpoint torch has written."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return  # not a zip archive at all: torch.load says so below
    if damaged is not None:
        raise CheckpointError(
            f"The checkpoint {path} is damaged: its record {damaged} fails its CRC32 checksum, so its bytes "
            "changed after it was written (a bad disk, a broken copy). Use another one, e.g. best-*.ckpt or "
            "last.ckpt of the same run, or copy it again from where it came from."
        )


def load_checkpoint(path: Path, resuming: bool = True) -> dict[str, Any]:
    """A checkpoint loaded with `weights_only=True`: tensors and plain data only, nothing that runs on unpickling.
    `resuming` adds `--resume last` to the hint for a missing file."""
    path = checkpoint_file(path, resuming)
    check_integrity(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's weights-only unpickler names the first object it refused: "Unsupported global: GLOBAL os.system"
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise CheckpointError(
                f"Refusing to load {path}: it asks to import {refused.group(1)} while unpickling, which could run "
                "code. Checkpoints hold only tensors and plain data; use one written by cifar_lit from a source you "
                "trust."
            ) from None
        raise CheckpointError(
            f"Cannot read the checkpoint {path} (it is not a PyTorch checkpoint, or is damaged). Use another one, "
            "e.g. best-*.ckpt or last.ckpt of the same run."
        ) from None
    except Exception as error:
        raise CheckpointError(
            f"Cannot read the checkpoint {path} ({type(error).__name__}: {' '.join(str(error).split())[:200]}). "
            "It is truncated or not a checkpoint; use another one, e.g. best-*.ckpt or last.ckpt of the same run."
        ) from None


MAX_WIDTH = 1024  # widest network a checkpoint may ask for: a crafted width must not allocate gigabytes
MAX_CLASSES = 100_000  # likewise for the class count


def saved_int(checkpoint: dict[str, Any], key: str, default: int, *, low: int, high: int) -> int | None:
    """A hyperparameter of the checkpoint's network (`default` for runs that predate it); None when implausible."""
    value = (checkpoint.get("hyper_parameters") or {}).get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high else None


def saved_width(checkpoint: dict[str, Any]) -> int | None:
    """The network width a checkpoint was trained with; None when it is not a plausible width."""
    return saved_int(checkpoint, "width", BASE_WIDTH, low=1, high=MAX_WIDTH)


def saved_model(checkpoint: dict[str, Any]) -> str:
    """The network a checkpoint was trained with: the name it carries, or resnet18 for runs that predate the
    choice of network."""
    return (checkpoint.get("hyper_parameters") or {}).get("model", DEFAULT_MODEL)


def saved_num_classes(checkpoint: dict[str, Any]) -> int | None:
    """The number of classes a checkpoint's network outputs (10 for runs that predate other data sets)."""
    return saved_int(checkpoint, "num_classes", 10, low=2, high=MAX_CLASSES)


def datamodule_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What the DataModule saved: normalization, class names, data set (its key is the class name, which was
    CIFAR10DataModule in checkpoints written before other data sets)."""
    for key in ("ImageDataModule", "CIFAR10DataModule"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return {}


def check_compatible(checkpoint: dict[str, Any], path: Path, use: str = "resume from") -> None:
    """Refuse a checkpoint of another model, width or class count with a message instead of a shape traceback:
    its weights are compared with a fresh network of the model, width and class count it names. `use` says what the
    user wanted to do with it ("resume from", "evaluate")."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or "pytorch-lightning_version" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint written by cifar_lit's train.py (it has no "
                              f"state_dict). To {use.split()[0]} a run, use a .ckpt file from "
                              "<logdir>/version_N/checkpoints/.")
    width, classes, model = saved_width(checkpoint), saved_num_classes(checkpoint), saved_model(checkpoint)
    if width is None or classes is None:
        hparams = checkpoint.get("hyper_parameters") or {}
        named = (f"a network width of {hparams.get('width')!r}, which is not an integer from 1 to {MAX_WIDTH}"
                 if width is None else f"{hparams.get('num_classes')!r} classes, not an integer from 2 to "
                 f"{MAX_CLASSES}")
        raise CheckpointError(f"{path} names {named}; it was not written by cifar_lit. Use a checkpoint of a "
                              f"cifar_lit run to {use}.")
    if model not in MODELS:
        raise CheckpointError(f"{path} was trained as the network {model!r}, which this version of cifar_lit does not "
                              f"have (it has {', '.join(MODELS)}). Use the version of cifar_lit it was trained with, "
                              f"or a checkpoint of one of those networks to {use}.")
    with torch.device("meta"):  # shapes only: nothing is allocated
        reference = {f"model.{key}": value for key, value in build_model(model, classes, width).state_dict().items()}
    missing = [key for key in reference if key not in state]
    unexpected = [key for key in state if key.startswith("model.") and key not in reference]
    mismatched = [
        f"{key} {tuple(state[key].shape)} instead of {tuple(value.shape)}"
        for key, value in reference.items()
        if key in state and hasattr(state[key], "shape") and tuple(state[key].shape) != tuple(value.shape)
    ]
    if missing or unexpected or mismatched:
        details = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
                f"shape {', '.join(mismatched[:3])}" if mismatched else "",
            )
            if part
        )
        raise CheckpointError(
            f"{path} does not hold the {classes}-class {model} of width {width} that its hyperparameters "
            f"describe ({details}). It comes from another model or class count; {use} a checkpoint of a cifar_lit "
            "run instead."
        )


def find_last_checkpoint(logdir: Path) -> Path:
    """The most recently written last.ckpt under `logdir`."""
    candidates = [path for path in Path(logdir).glob(f"**/{CHECKPOINT_FOLDER}/{LAST_NAME}") if path.is_file()]
    if not candidates:
        raise CheckpointError(
            f"--resume last found no {CHECKPOINT_FOLDER}/{LAST_NAME} under {logdir}. Start a run first, point "
            "--logdir at the folder of the earlier runs, or give --resume the path of a checkpoint."
        )
    return max(candidates, key=lambda path: path.stat().st_mtime_ns)


def run_dir_of(checkpoint_path: Path) -> Path | None:
    """The run folder (version_N) a checkpoint belongs to, when it sits in that run's checkpoints/ folder."""
    folder = Path(checkpoint_path).resolve().parent
    return folder.parent if folder.name == CHECKPOINT_FOLDER else None


def callback_state(checkpoint: dict[str, Any], class_name: str) -> dict[str, Any] | None:
    """The saved state of the callback whose state key starts with `class_name`."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith(class_name):
            return state
    return None
