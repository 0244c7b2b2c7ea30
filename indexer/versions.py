"""Versioned index directories with an atomic ``CURRENT`` switch.

Layout::

    INDEX_DIR/CURRENT              one line: the live version's name (e.g. v0003)
    INDEX_DIR/v0003/               a finished, immutable version
    INDEX_DIR/.staging/<key>/      a build in progress (resumable; never served)
    INDEX_DIR/cache/               reusable work (patch features) across builds

Why: the search service reads ``CURRENT`` and opens that version; a build
writes elsewhere, renames its finished staging directory to the next version
name and only then replaces ``CURRENT`` (write to a temp file, fsync, rename).
A build that is killed or runs out of disk at any point leaves ``CURRENT``
naming the previous complete version.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

CURRENT_FILE = "CURRENT"
STAGING_DIR = ".staging"
CACHE_DIR = "cache"
_VERSION = re.compile(r"^v(\d{4,})$")


class NoIndexError(FileNotFoundError):
    """The directory has no published version (``CURRENT`` missing or dangling)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IndexDir:
    """One index root: its published versions, the live one and the staging area."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ------------------------------------------------------------------ reading
    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(names, key=lambda n: int(_VERSION.match(n).group(1)))  # type: ignore[union-attr]

    def current(self) -> str | None:
        """The live version's name, or None when nothing was published yet."""
        path = self.root / CURRENT_FILE
        if not path.is_file():
            return None
        name = path.read_text().strip()
        return name or None

    def current_path(self) -> Path:
        """Directory of the live version; :class:`NoIndexError` when there is none."""
        name = self.current()
        if name is None:
            raise NoIndexError(f"{self.root} has no published index (no {CURRENT_FILE}); run `fashionbert index` first")
        path = self.root / name
        if not path.is_dir():
            raise NoIndexError(f"{self.root}/{CURRENT_FILE} names {name!r}, which does not exist")
        return path

    # ------------------------------------------------------------------ writing
    def staging(self, key: str) -> Path:
        """Staging directory of a build; the same key finds the same (resumable) directory."""
        path = self.root / STAGING_DIR / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cache(self, name: str) -> Path:
        path = self.root / CACHE_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def next_version(self) -> str:
        existing = [int(_VERSION.match(n).group(1)) for n in self.versions()]  # type: ignore[union-attr]
        return f"v{(max(existing) + 1) if existing else 1:04d}"

    def publish(self, staging: Path) -> str:
        """Make a finished staging directory the next version and switch ``CURRENT`` to it."""
        version = self.next_version()
        target = self.root / version
        os.replace(staging, target)
        _fsync_dir(self.root)
        self.switch(version)
        return version

    def switch(self, version: str) -> None:
        """Atomically point ``CURRENT`` at an existing version (also the rollback command)."""
        if not (self.root / version).is_dir():
            raise NoIndexError(f"no version {version!r} under {self.root}")
        tmp = self.root / f".{CURRENT_FILE}.tmp-{os.getpid()}"
        with tmp.open("w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / CURRENT_FILE)
        _fsync_dir(self.root)

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest versions beyond ``keep``, never the live one; returns the deleted names."""
        if keep < 1:
            raise ValueError("keep must be >= 1")
        live = self.current()
        old = [v for v in self.versions() if v != live]
        doomed = old[: max(0, len(old) - (keep - 1))]
        for name in doomed:
            shutil.rmtree(self.root / name, ignore_errors=True)
        return doomed
