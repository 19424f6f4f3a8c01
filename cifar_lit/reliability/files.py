"""Files written whole or not at all: a temporary file beside the target, then one rename.

Every writer in the project (checkpoints, the image cache, CSV/JSON/PNG outputs) names its temporary file with
`temporary_path`, so `remove_stale_temporaries` can clean up after any writer that was killed half-way.
"""

from __future__ import annotations

import os
from pathlib import Path

from cifar_lit.reliability.disk import DiskFullError, disk_full_message, is_out_of_space


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


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Replace `path` with `data` in one rename, so a reader or a kill never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as error:
        if is_out_of_space(error):
            raise DiskFullError(disk_full_message(path, error)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())
