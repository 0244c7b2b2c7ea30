"""Crash-safe file writing shared by every job that writes shards.

A reader (or a resumed job) must never see half a file: each file is written
under a temporary name in the same directory and renamed into place, which is
atomic on POSIX file systems. Temp names carry the pid so two processes never
clobber each other's half-written files; ``remove_leftovers`` clears those of
killed runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


def atomic_write(path: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp)`` then rename ``tmp`` to ``path``; the temp file is removed on failure."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        # numpy reports a short write as "N requested and M written": say what it means.
        error = OSError(f"could not write {path}: {exc.strerror or exc} (disk full or file size limit?); "
                        "nothing was published, rerun to resume")
        error.errno = exc.errno  # callers may still branch on ENOSPC / EFBIG
        raise error from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(p: Path) -> None:
        with p.open("wb") as fh:
            np.save(fh, array)

    atomic_write(path, write)


def remove_leftovers(directory: Path, pattern: str = ".*.tmp-*") -> int:
    """Delete the temp files of killed runs under ``directory`` (recursively); returns how many."""
    count = 0
    for leftover in directory.rglob(pattern):
        if leftover.is_file():
            leftover.unlink()
            count += 1
    return count
