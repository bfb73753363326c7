"""The worker's cache directory: the disk side of the cache entries in ``state.py``.

Every file a worker holds (inputs fetched for tasks, outputs tasks made,
temps kept for later tasks) lives in one flat directory under its cache name.
Files arrive under a temporary ``.part-*`` name and are renamed into place only
once complete, so a name in the directory is always a whole file. Which names
exist, their sizes and their pins are the core's business (``WorkerState``);
this module only does the file operations it asks for.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class CacheError(Exception):
    """A cache name is invalid or a file could not be stored."""


def check_cache_name(name: str) -> str:
    """Refuse names that could escape the cache directory (pure: no I/O)."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise CacheError(f"invalid cache name {name!r}")
    return name


class Cache:
    """File operations on one cache directory."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def scan(self) -> list[tuple[str, int]]:
        """The complete files present (name, size); leftover part files are deleted."""
        found = []
        for entry in os.scandir(self.dir):
            if entry.name.startswith(".part-"):
                os.unlink(entry.path)
            elif entry.is_file() and _NAME.match(entry.name) and ".." not in entry.name:
                found.append((entry.name, entry.stat().st_size))
        return found

    def path(self, name: str) -> str:
        return os.path.join(self.dir, check_cache_name(name))

    def lookup(self, name: str) -> str | None:
        """The path of a complete cached file, or None (for the transfer server's threads)."""
        try:
            path = self.path(name)
        except CacheError:
            return None
        return path if os.path.isfile(path) else None

    def part_path(self) -> str:
        """A fresh temporary path inside the cache for a file being written."""
        return os.path.join(self.dir, ".part-" + uuid.uuid4().hex)

    def commit(self, name: str, tmp_path: str) -> int:
        """Move a finished file into the cache under ``name``; return its size."""
        dest = self.path(name)
        os.replace(tmp_path, dest)
        return os.stat(dest).st_size

    def store_from(self, name: str, src: str) -> int:
        """Move (or copy, across filesystems) a task's output into the cache."""
        dest = self.path(name)
        if os.path.isdir(src):
            raise CacheError(f"output {src!r} is a directory")
        try:
            os.replace(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
        return os.stat(dest).st_size

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path(name))
        except (FileNotFoundError, CacheError):
            pass
