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

The directory is private (mode 0700), whoever made it. A task's output enters
the cache only as what it is in the sandbox: ``store_from`` with the sandbox
as root reaches it through real directories only and refuses an output that
is a symbolic link, lies under one, or is a fifo, a device or a socket, so
nothing outside the sandbox is ever moved in or sent back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import uuid

from ..trees import TreeError, copy_file, copy_tree, open_under, remove_path, tree_size

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
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)

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
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return None
        return path if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else None

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

    def store_from(self, name: str, src: str, root: str | None = None) -> int:
        """Move (or copy, across filesystems) a task's output into the cache.

        ``root``: the sandbox ``src`` lies in; ``src`` is then reached through real
        directories only (a directory of it that is a symlink is refused). Without
        it only ``src`` itself is checked. Refused (CacheError, with the reason): a
        symbolic link (wherever it points), a fifo, device or socket, and a tree
        holding one of those but links.
        """
        dest = self.path(name)
        try:
            if root is not None:
                dfd, base = open_under(root, os.path.relpath(src, root))
            else:
                base = os.path.basename(src)
                dfd = os.open(os.path.dirname(src) or ".",
                              os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except TreeError as e:
            raise CacheError(f"output {src!r} refused: {e}") from None
        try:
            st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(base, dir_fd=dfd)
                raise CacheError(f"output {src!r} refused: it is a symbolic link (to "
                                 f"{target!r}); outputs are never followed")
            if stat.S_ISDIR(st.st_mode):
                return self._store_tree(dest, src, dfd, base)
            if not stat.S_ISREG(st.st_mode):
                raise CacheError(f"output {src!r} refused: it is {_kind_of(st.st_mode)}, "
                                 "not a file or a directory")
            try:
                os.rename(base, dest, src_dir_fd=dfd)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                part = self.part_path()  # never leave a partial copy under the name
                try:
                    copy_file(base, part, dir_fd=dfd)
                    os.replace(part, dest)
                except TreeError as e2:
                    with contextlib.suppress(OSError):
                        os.unlink(part)
                    raise CacheError(f"output {src!r} refused: {e2}") from None
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(part)
                    raise
                return os.stat(dest).st_size
            now = os.lstat(dest)
            if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev) or not stat.S_ISREG(
                    now.st_mode):  # swapped under us by something still running
                remove_path(dest)
                raise CacheError(f"output {src!r} refused: it changed while it was stored")
            return now.st_size
        finally:
            os.close(dfd)

    def _store_tree(self, dest: str, src: str, dfd: int, base: str) -> int:
        part = self.part_path()
        try:
            try:
                os.rename(base, part, src_dir_fd=dfd)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                copy_tree(f"/proc/self/fd/{dfd}/{base}", part)
            if stat.S_ISLNK(os.lstat(part).st_mode):
                raise CacheError(f"output {src!r} refused: it changed while it was stored")
            try:
                tree_size(part)  # refuses what a tree cannot hold (fifos, devices)
            except TreeError as e:
                raise CacheError(f"output {src!r} refused: {e}") from None
            return self._replace_tree(part, dest)
        except TreeError as e:
            remove_path(part)
            raise CacheError(f"output {src!r} refused: {e}") from None
        except BaseException:
            remove_path(part)
            raise

    def remove(self, name: str) -> None:
        try:
            remove_path(self.path(name))
        except (FileNotFoundError, CacheError):
            pass


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"
