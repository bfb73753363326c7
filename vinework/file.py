"""User-side File handles: local files, buffers, temps, URLs and mini-task files.

A File is only a handle: the manager's core (``vinework/core``) tracks where
its copies are. Each File has a ``cache_name`` that identifies its content on
every worker: a hash of a local file's bytes and mode (hashed once and
remembered while its path, size, mtime and inode stay the same: see
``contentnames.py``), a content hash for a buffer, a hash of the URL for a URL,
a hash of the mini task (its kind, command, inputs' names, environment and
source) for a mini-task file, a unique id for a temp.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable
from enum import Enum
from typing import Any

from .constants import CacheLevel

# A temp's name: 64 random bits drawn once per process, then a counter. Unique across the
# processes that share a worker's long-lived cache, and far cheaper than a uuid4 per temp
# (which reads os.urandom each time: about 65 us per temp on this kind of machine).
_TEMP_PREFIX = os.urandom(8).hex()
_temp_ids = itertools.count(1)
_file_tokens = itertools.count(1)


def _new_prefix() -> None:  # a forked child must not repeat its parent's names
    global _TEMP_PREFIX
    _TEMP_PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_prefix)


class FileKind(str, Enum):
    """What a File stands for."""

    LOCAL = "file"  # a path on the manager's filesystem
    BUFFER = "buffer"  # bytes held by the manager
    TEMP = "temp"  # an intermediate that lives on workers
    URL = "url"  # fetched by workers from a file://, http:// or https:// URL (named by it)
    MINI = "mini"  # made on the worker that needs it by a mini task (untar, poncho, command)


def _valid_remote_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"remote name must be a non-empty string, got {name!r}")
    if name.startswith("/") or "\x00" in name:
        raise ValueError(f"remote name {name!r} must be relative to the sandbox")
    parts = name.split("/")
    if any(p in ("..", "") for p in parts) or parts == ["."]:
        raise ValueError(f"remote name {name!r} escapes or is not inside the sandbox")
    return name


check_remote_name = _valid_remote_name


class File:
    """A file a task can take as input or produce as output."""

    def __init__(
        self,
        kind: FileKind,
        *,
        path: str | None = None,
        data: bytes | None = None,
        cache: CacheLevel = CacheLevel.TASK,
        peer_transfer: bool = True,
        unlink_when_done: bool = False,
        checkpoint: bool = False,
        url: str | None = None,
    ) -> None:
        self.kind = kind
        self.url = url  # a URL file's URL
        self.path = os.path.abspath(path) if path is not None else None
        self.cache = cache
        self.peer_transfer = peer_transfer
        self.unlink_when_done = unlink_when_done
        self.checkpoint = checkpoint
        self._data = data
        self._name: str | None = None
        self._manager: Any = None
        self._size = -1
        self._held: str | None = None  # the buffer name this handle holds (declare_buffer)
        self.mode = -1  # permission bits on workers (set_mode); -1: the source's
        self.mini_kind = ""  # a mini-task file: "command", "untar" or "poncho"
        self.mini_what = ""  # ... and what makes it, for source()
        self._token = next(_file_tokens)  # identifies this File in the manager's records
        if kind is FileKind.TEMP:
            self._name = f"temp-{_TEMP_PREFIX}-{next(_temp_ids)}"
        elif kind is FileKind.BUFFER:
            assert data is not None
            self._name = "buffer-" + hashlib.blake2b(data, digest_size=16).hexdigest()
        elif kind is FileKind.URL:  # named by its URL: the same URL is the same file
            assert url is not None
            self._name = "url-" + hashlib.blake2b(url.encode(), digest_size=16).hexdigest()

    @property
    def cache_name(self) -> str:
        """The name of this file's content in every worker's cache."""
        if self._name is None:
            self._name = self.compute_local_name()
        return self._name

    def compute_local_name(self) -> str:
        """Name a local file by its content: a hash of its bytes and of the mode bits it
        gets on workers (hashed once, then remembered while its path, size, mtime and
        inode are unchanged: ``vinework.contentnames``)."""
        assert self.path is not None
        from .contentnames import content_name
        return content_name(self.path, self.mode)

    def refresh_name(self) -> None:
        """Forget the computed name of a local file (its content may have changed): the
        next ``cache_name`` looks at the file again."""
        if self.kind is FileKind.LOCAL:
            self._name = None

    def source(self) -> str:
        """A readable description: the path, the URL, or the kind and name."""
        return self.path or self.url or self.mini_what or f"{self.kind.value}:{self._name}"

    def type(self) -> int:
        """TaskVine's file type: ``VINE_FILE`` (1), ``VINE_URL`` (2), ``VINE_TEMP`` (3),
        ``VINE_BUFFER`` (4) or ``VINE_MINI_TASK`` (5: mini tasks, untar, poncho)."""
        return {FileKind.LOCAL: 1, FileKind.URL: 2, FileKind.TEMP: 3, FileKind.BUFFER: 4,
                FileKind.MINI: 5}[self.kind]

    def set_mode(self, mode: int) -> None:
        """The permission bits the file gets on workers (e.g. ``0o755``), instead of the
        source's (a local file's own bits; 0755 for a buffer). Applies to local files and
        buffers; a temp keeps the bits of the file its task made, a URL file is 0644."""
        self.mode = int(mode) & 0o777
        if self._manager is not None and self.kind in (FileKind.LOCAL, FileKind.BUFFER):
            self._manager._redeclare(self)

    def contents(self, unserializer: Callable[[bytes], Any] | None = None) -> Any:
        """The file's bytes (a buffer's data, a local file's content, a temp fetched from a
        worker), passed through ``unserializer`` if given."""
        if self.kind is FileKind.BUFFER and self._data is not None:
            data = self._data
        elif self.kind is FileKind.TEMP or (self._manager is not None and self.path is None):
            if self._manager is None:
                raise ValueError(f"{self!r} was never declared to a manager")
            data = self._manager.fetch_file(self)
        else:
            assert self.path is not None
            with open(self.path, "rb") as f:
                data = f.read()
        return unserializer(data) if unserializer is not None else data

    def __len__(self) -> int:
        """The file's size in bytes (a temp is asked of the manager, or fetched)."""
        if self.kind is FileKind.BUFFER and self._data is not None:
            return len(self._data)
        if self.kind is FileKind.LOCAL and self.path is not None and os.path.exists(self.path):
            return os.stat(self.path).st_size
        return len(self.contents())

    def __bool__(self) -> bool:
        return True  # a File is a handle: an empty one is still there

    def __repr__(self) -> str:
        return f"File({self.kind.value}, {self.source()!r})"
