"""Files written whole or not at all: a temporary file beside the target, flushed to disk, then one rename.

Every writer in the project (checkpoints, the image cache, CSV/JSON/PNG/YAML outputs) goes through `atomic_file`,
so all have the same durability, and a writer killed half-way leaves a temporary file that the next writer of the
same target removes (`remove_stale_temporaries`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cifar_lit.reliability.disk import DiskFullError, disk_full_message, is_write_failure


def temporary_path(path: Path) -> Path:
    """`.<name>.<pid>.tmp` beside `path`: same file system (the rename is atomic) and tied to its writer."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files of `path` left by writers that were killed (their process no longer exists)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid = stale.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def fsync_directory(folder: Path) -> None:
    """Make a rename inside `folder` durable (best effort: not every file system allows it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary file beside it that, when the block ends normally, is
    flushed to disk and renamed over `path`, the rename made durable too. If the block or the write fails (or a
    kill comes), `path` keeps its previous content and the temporary file is removed (or, after a kill, cleaned up
    by the next writer of `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Replace `path` with `data` through `atomic_file`; a full disk becomes a DiskFullError naming `path`."""
    try:
        with atomic_file(path) as handle:
            handle.write(data)
    except OSError as error:
        if is_write_failure(error):
            raise DiskFullError(disk_full_message(path, error)) from None
        raise
    return Path(path)


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())
