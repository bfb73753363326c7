"""The worker's cache directory: the disk side of the cache entries in ``state.py``.

Every file a worker holds (inputs fetched for tasks, outputs tasks made,
temps kept for later tasks) lives in one flat directory under its cache name.
Files arrive under a temporary ``.part-*`` name and are renamed into place only
once complete, so a name in the directory is always a whole file. A directory
(an input, output or temp that is a tree: ``trees.py``) is an entry too: a
directory under its cache name, arriving whole the same way; its size is the
bytes of its files. Cached trees are never handed to tasks to write in place
(``sandbox.prepare`` copies them). Which names
exist, their sizes, levels and pins are the core's business (``WorkerState``);
this module only does the file operations it asks for.

Cache levels on disk: the names of the FOREVER entries are recorded in a small
index file (``FOREVER_INDEX``, one name a line, replaced atomically) in the
cache directory; the index name cannot be a cache name. A worker started on a
workdir keeps the files the index names and deletes every other file it finds
(whatever it was, it was meant to go with its manager or its worker process).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid

from ..trees import TreeError, copy_tree, remove_path, tree_size

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
FOREVER_INDEX = ".forever"  # names of the FOREVER entries (not a valid cache name)


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
                remove_path(entry.path)
            elif not _NAME.match(entry.name) or ".." in entry.name:
                continue
            elif entry.is_file(follow_symlinks=False):
                found.append((entry.name, entry.stat().st_size))
            elif entry.is_dir(follow_symlinks=False):
                try:
                    found.append((entry.name, tree_size(entry.path)))
                except (OSError, TreeError):
                    remove_path(entry.path)
        return found

    def read_forever(self) -> set[str]:
        """The names the FOREVER index records (empty if there is no index)."""
        try:
            with open(os.path.join(self.dir, FOREVER_INDEX), encoding="utf-8") as f:
                return {line.strip() for line in f if line.strip()}
        except OSError:
            return set()

    def write_forever(self, names: tuple[str, ...] | list[str]) -> None:
        """Record ``names`` as the FOREVER entries (atomically: a temp file renamed)."""
        tmp = self.part_path()
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(f"{n}\n" for n in names))
        os.replace(tmp, os.path.join(self.dir, FOREVER_INDEX))

    def load(self) -> list[tuple[str, int]]:
        """Start-up: keep the files the FOREVER index names, delete the others; return
        the kept ones (name, size)."""
        keep = self.read_forever()
        kept = []
        for name, size in self.scan():
            if name in keep:
                kept.append((name, size))
            else:
                self.remove(name)
        self.write_forever(sorted(n for n, _ in kept))
        return kept

    def prune(self, keep: set[str]) -> None:
        """Delete every cached file (and part file) whose name is not in ``keep``."""
        for name, _ in self.scan():
            if name not in keep:
                self.remove(name)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, check_cache_name(name))

    def lookup(self, name: str) -> str | None:
        """The path of a complete cached file or tree, or None (for the transfer server's
        threads)."""
        try:
            path = self.path(name)
        except CacheError:
            return None
        return path if os.path.isfile(path) or os.path.isdir(path) else None

    def part_path(self) -> str:
        """A fresh temporary path inside the cache for a file being written."""
        return os.path.join(self.dir, ".part-" + uuid.uuid4().hex)

    def commit(self, name: str, tmp_path: str) -> int:
        """Move a finished file (or tree) into the cache under ``name``; return its size."""
        dest = self.path(name)
        if os.path.isdir(tmp_path) and not os.path.islink(tmp_path):
            return self._replace_tree(tmp_path, dest)
        if os.path.isdir(dest) and not os.path.islink(dest):
            remove_path(dest)
        os.replace(tmp_path, dest)
        return os.stat(dest).st_size

    def _replace_tree(self, tree: str, dest: str) -> int:
        """Put the tree ``tree`` (in the cache directory) at ``dest``, replacing what is
        there; return its size."""
        size = tree_size(tree)
        if os.path.lexists(dest):
            old = self.part_path()
            os.replace(dest, old)
            os.replace(tree, dest)
            remove_path(old)
        else:
            os.replace(tree, dest)
        return size

    def store_from(self, name: str, src: str) -> int:
        """Move (or copy, across filesystems) a task's output into the cache."""
        dest = self.path(name)
        if os.path.isdir(src) and not os.path.islink(src):
            try:
                tree_size(src)  # refuses what a tree cannot hold (fifos, devices)
            except TreeError as e:
                raise CacheError(f"output {src!r}: {e}") from None
            part = self.part_path()
            try:
                try:
                    os.rename(src, part)
                except OSError:
                    copy_tree(src, part)
                return self._replace_tree(part, dest)
            except BaseException:
                remove_path(part)
                raise
        try:
            os.replace(src, dest)
        except OSError:
            part = self.part_path()  # never leave a partial copy under the name
            try:
                shutil.copyfile(src, part)
                os.replace(part, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(part)
                raise
        return os.stat(dest).st_size

    def remove(self, name: str) -> None:
        try:
            remove_path(self.path(name))
        except (FileNotFoundError, CacheError):
            pass
