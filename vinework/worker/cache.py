"""The worker's on-disk cache of named files.

Every file a worker holds (inputs fetched for tasks, outputs tasks made,
temps kept for later tasks) lives in one flat directory under its cache name.
Files arrive under a temporary name and are renamed into place only once
complete, so a name in the cache is always a whole file.
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
    """Refuse names that could escape the cache directory."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise CacheError(f"invalid cache name {name!r}")
    return name


class Cache:
    """A directory of complete, named files, with their sizes tracked."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.sizes: dict[str, int] = {}
        for entry in os.scandir(directory):
            if entry.name.startswith(".part-"):
                os.unlink(entry.path)
            elif entry.is_file() and _NAME.match(entry.name):
                self.sizes[entry.name] = entry.stat().st_size

    def path(self, name: str) -> str:
        return os.path.join(self.dir, check_cache_name(name))

    def has(self, name: str) -> bool:
        return name in self.sizes

    def lookup(self, name: str) -> str | None:
        """The path of a complete cached file, or None."""
        if name in self.sizes:
            return os.path.join(self.dir, name)
        return None

    def part_path(self) -> str:
        """A fresh temporary path inside the cache for a file being written."""
        return os.path.join(self.dir, ".part-" + uuid.uuid4().hex)

    def commit(self, name: str, tmp_path: str) -> int:
        """Move a finished file into the cache under ``name``; return its size."""
        dest = self.path(name)
        os.replace(tmp_path, dest)
        size = os.stat(dest).st_size
        self.sizes[name] = size
        return size

    def store_from(self, name: str, src: str) -> int:
        """Move (or copy, across filesystems) a task's output into the cache."""
        dest = self.path(name)
        if os.path.isdir(src):
            raise CacheError(f"output {src!r} is a directory")
        try:
            os.replace(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
        size = os.stat(dest).st_size
        self.sizes[name] = size
        return size

    def remove(self, name: str) -> None:
        if self.sizes.pop(name, None) is not None:
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass

    def used(self) -> int:
        return sum(self.sizes.values())

    def items(self) -> list[tuple[str, int]]:
        return list(self.sizes.items())
