"""The manager's records of local files and buffers: their names, their writers, their lifetimes.

A local file's cache name follows its content (``contentnames.py``), decided
again at every submit that reads it: a file changed since the last submit gets
a new name and is sent again; an unchanged one keeps its name (and its copies on
workers). What a task writes into a local file or a buffer gets a fresh name
(``file-out-...``, ``buffer-out-...``) when the task is submitted, and from then
on that name is the File's: a task submitted later that reads the File waits
for the writer and reads what it wrote, while a task submitted earlier keeps
the name of the old content. So that the old content stays readable when the
writer's output replaces the file, a name still needed by an unfinished task is
first given a snapshot of the file in the staging directory (a hard link; a
copy across filesystems) to be served from.

When the writer comes back from ``wait()``, its output is settled: for a local
file, the name it was written under is remembered with the file's stat key (a
later submit keeps that name while the file is unchanged, so the workers'
copies are used); for a buffer, the bytes are read into the File
(``f.contents()``, ``len(f)``) and it takes the content name of those bytes, as
a buffer declared with them would have. A writer that failed, was cancelled, or
did not bring the output back (``failure_only``/``success_only``) leaves the File
as it was.

A local directory (input or output) is handled like a file, but is named by a
hash over its whole tree at every submit that reads it (``contentnames``), so
an unchanged tree keeps its name and a changed one is sent again.

``unlink_when_done`` (TaskVine's rule): a local file declared with it is deleted
from the manager's disk once it is released (``undeclare_file``, or the user
dropped every reference to the File) and no task that uses it (as input or
output) is still unfinished: the last one coming back from ``wait()``,
cancelled ones included, deletes it.

Everything here is called from the user's thread (``submit``, ``wait``,
``undeclare_file``) or from a garbage-collector finalizer; one lock guards it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ..constants import CacheLevel
from ..contentnames import DISK_MEMO_NAME, ContentNames, StatKey, stat_key
from ..core import FileSpec
from ..file import File, FileKind
from ..trees import TreeError, copy_tree, remove_path, tree_size

Declare = Callable[[FileSpec], None]


class InputMissing(Exception):
    """A local input cannot be read at submit (the task comes back "input missing")."""


@dataclass(slots=True)
class _Writer:
    """A task submitted to write a File: the output's name, where it lands."""

    task_id: int
    name: str
    path: str  # the local file, or the buffer's staging file
    before: StatKey | None  # the local file's stat key at submit (None: absent)
    spec: FileSpec  # as declared to the core
    read: bool = False  # a task reads it (so workers keep it after it is brought back)


@dataclass(slots=True)
class _Lifetime:
    """An ``unlink_when_done`` file: the unfinished tasks using it, and whether the user
    has let it go."""

    path: str
    users: set[int] = field(default_factory=set)
    released: bool = False
    on_done: Callable[[], None] | None = None  # the undeclaration put off until then


@dataclass(slots=True)
class _TaskFiles:
    """What a submitted task holds until ``wait()`` hands it back."""

    reads: list[str] = field(default_factory=list)  # local names it reads
    writes: list[tuple[object, _Writer]] = field(default_factory=list)
    lifetimes: list[int] = field(default_factory=list)  # File tokens


def _writer_key(f: File) -> object:
    return ("path", f.path) if f.kind is FileKind.LOCAL else ("buffer", f._token)


class LocalFiles:
    """Names, writers and lifetimes of the local files and buffers tasks use.

    Args:
        staging: the manager's staging directory (snapshots, buffer outputs).
        cache_dir: where the on-disk content-name memo lives (None: in memory only).
        declare: tells the core about a file (posts ``FileDeclared``).
        release: tells the core a name is no longer the user's (``FileReleased``).
    """

    def __init__(self, staging: str, cache_dir: str | None, declare: Declare,
                 release: Callable[[str], None]) -> None:
        self.staging = staging
        self.names = ContentNames(os.path.join(cache_dir, DISK_MEMO_NAME) if cache_dir
                                  else None)
        self._declare = declare
        self._release = release
        self._lock = threading.RLock()
        self._sources: dict[str, tuple[FileSpec, StatKey]] = {}  # name -> how it is served
        self._by_path: dict[str, str] = {}  # local path -> the name last served from it
        self._made: dict[str, tuple[StatKey, str]] = {}  # path -> (stat key, output name)
        self._writers: dict[object, _Writer] = {}  # File key -> the latest writer
        self._reads: dict[str, int] = {}  # name -> unfinished tasks reading it
        self._lifetimes: dict[int, _Lifetime] = {}  # File token -> lifetime
        self._tasks: dict[int, _TaskFiles] = {}

    # ------------------------------------------------------------------ submit
    def check_input(self, f: File, remote: str) -> str:
        """Why a local input cannot be used ("" if it can)."""
        with self._lock:
            if _writer_key(f) in self._writers:
                return ""  # a task submitted earlier writes it: this one waits for it
        if not f.path or not os.path.exists(f.path):
            return f"input file {f.path!r} (as {remote!r}) does not exist"
        return ""

    def input_name(self, f: File, task_id: int) -> str:
        """The cache name task ``task_id`` reads ``f`` (a local file or a buffer) under,
        declared to the core if it is new or now served from elsewhere.

        Raises:
            InputMissing: a local file that cannot be read.
        """
        with self._lock:
            w = self._writers.get(_writer_key(f))
            if w is not None:
                name = w.name
                if not w.read and w.spec.cache_level < CacheLevel.WORKFLOW:
                    # read before it is brought back: the worker that made it must not
                    # drop it when the manager has its copy (a task-level file would be)
                    w.read = True
                    w.spec = replace(w.spec, cache_level=int(CacheLevel.WORKFLOW))
                    self._declare(w.spec)
            elif f.kind is FileKind.BUFFER:
                return f.cache_name  # (its bytes are in the staging directory already)
            else:
                name = self._local_name(f)
            f._name = name
            self._task(task_id).reads.append(name)
            self._reads[name] = self._reads.get(name, 0) + 1
            return name

    def _local_name(self, f: File) -> str:
        assert f.path is not None
        path = f.path
        try:
            st = os.stat(path)
            key = stat_key(st)
            size = st.st_size
            if stat.S_ISDIR(st.st_mode):
                # a tree: named by its content every time (its own stat key does not
                # follow changes deep inside it; the files' digests are memoized)
                name = self.names.tree_name(path)
                size = tree_size(path)
            elif not stat.S_ISREG(st.st_mode):
                raise InputMissing(f"input {path!r} is not a regular file or a directory")
            else:
                made = self._made.get(path)
                if made is not None and made[0] == key:
                    name = made[1]  # what a task wrote here, unchanged since
                else:
                    name = self.names.name(path, f.mode, st)
        except TreeError as e:
            raise InputMissing(f"input directory {path!r} cannot be sent: {e}") from None
        except OSError as e:
            raise InputMissing(f"input file {path!r} cannot be read: {e.strerror}") from None
        known = self._sources.get(name)
        if known is None or known[0].path != path or known[1] != key \
                or known[0].mode != f.mode:
            spec = self._spec(f, name, path, size)
            self._sources[name] = (spec, key)
            self._declare(spec)
        self._by_path[path] = name
        return name

    def output_name(self, f: File, task_id: int) -> str:
        """A fresh name for what task ``task_id`` writes into ``f`` (a local file or a
        buffer), declared to the core as a file the manager brings back."""
        tag = "file-out-" if f.kind is FileKind.LOCAL else "buffer-out-"
        name = tag + os.urandom(12).hex()
        with self._lock:
            if f.kind is FileKind.LOCAL:
                assert f.path is not None
                path = f.path
                self._keep_old_content(path)
                try:
                    before: StatKey | None = stat_key(os.stat(path))
                except OSError:
                    before = None
            else:
                path = os.path.join(self.staging, name)
                before = None
            w = _Writer(task_id, name, path, before, self._spec(f, name, path, -1, kind="file"))
            key = _writer_key(f)
            self._writers[key] = w
            self._task(task_id).writes.append((key, w))
            f._name = name
        self._declare(w.spec)
        return name

    def _keep_old_content(self, path: str) -> None:
        """``path`` is about to be replaced by a task's output: a name of its present
        content that an unfinished task still needs is served from a snapshot."""
        name = self._by_path.pop(path, None)
        if name is None or not self._reads.get(name):
            return
        known = self._sources.get(name)
        if known is None or known[0].path != path:
            return
        snap = os.path.join(self.staging, name)
        try:
            if not os.path.exists(snap):
                tmp = f"{snap}.tmp-{os.getpid()}"
                if os.path.isdir(path) and not os.path.islink(path):
                    copy_tree(path, tmp)  # a tree: its content as it is now
                else:
                    try:
                        os.link(path, tmp)
                    except OSError:
                        shutil.copy2(path, tmp)
                os.replace(tmp, snap)
        except OSError:
            with contextlib.suppress(OSError):
                remove_path(f"{snap}.tmp-{os.getpid()}")
            return  # (the file is gone: the core finds out when it tries to send it)
        spec = replace(known[0], path=snap)
        self._sources[name] = (spec, known[1])
        self._declare(spec)

    def track_lifetimes(self, task_id: int, files: Iterable[File]) -> None:
        """Task ``task_id`` uses these Files until ``wait()`` hands it back."""
        with self._lock:
            for f in files:
                if f.kind is FileKind.LOCAL and f.unlink_when_done and f.path:
                    rec = self._lifetime(f)
                    if task_id not in rec.users:
                        rec.users.add(task_id)
                        self._task(task_id).lifetimes.append(f._token)

    # ------------------------------------------------------------------ hand-over
    def handed_over(self, task_id: int, files: Iterable[File]) -> None:
        """``wait()`` returned task ``task_id`` (``files``: its outputs): settle what it
        wrote and let go of what it used."""
        with self._lock:
            rec = self._tasks.pop(task_id, None)
        if rec is None:
            return
        by_key = {_writer_key(f): f for f in files}
        for key, w in rec.writes:
            self._settle_output(key, w, by_key.get(key))
        with self._lock:
            for name in rec.reads:
                n = self._reads.get(name, 0) - 1
                if n > 0:
                    self._reads[name] = n
                else:
                    self._reads.pop(name, None)
            for token in rec.lifetimes:
                life = self._lifetimes.get(token)
                if life is not None:
                    life.users.discard(task_id)
                    self._maybe_unlink(token, life)

    def _settle_output(self, key: object, w: _Writer, f: File | None) -> None:
        with self._lock:
            current = self._writers.get(key) is w
            if current:
                del self._writers[key]
        if f is None or not current:
            return  # a later writer's output is the File's now
        try:
            st = os.stat(w.path)
        except OSError:
            return  # not brought back (failed, cancelled, an optional output)
        after = stat_key(st)
        if f.kind is FileKind.LOCAL:
            if after == w.before or stat.S_ISDIR(st.st_mode):
                return  # not brought back, or a tree (named by its content at each submit)
            with self._lock:
                self._made[w.path] = (after, w.name)
                self._by_path[w.path] = w.name
                self._sources[w.name] = (self._spec(f, w.name, w.path, st.st_size), after)
            return
        try:  # a buffer: its bytes, under the content name a buffer of them has
            with open(w.path, "rb") as fh:
                data = fh.read()
        except OSError:
            return
        f._data = data
        probe = File(FileKind.BUFFER, data=data)
        name = probe.cache_name
        dest = os.path.join(self.staging, name)
        try:
            if not os.path.exists(dest):
                os.link(w.path, dest)
        except OSError:
            dest = w.path
        f._name, f.path, f._size = name, dest, len(data)
        spec = self._spec(f, name, dest, len(data), kind="buffer")
        with self._lock:
            self._sources[name] = (spec, after)
        self._declare(spec)
        self._release(w.name)

    # ------------------------------------------------------------------ unlink_when_done
    def watch_lifetime(self, f: File) -> None:
        """Start following an ``unlink_when_done`` local file (at its declaration)."""
        if f.kind is FileKind.LOCAL and f.unlink_when_done and f.path:
            with self._lock:
                self._lifetime(f)

    def released(self, f: File, undeclare: Callable[[], None]) -> None:
        """The user undeclared ``f``: ``undeclare`` (forget it in the core) runs now, or,
        for an ``unlink_when_done`` file some unfinished task uses, when the last one
        comes back (TaskVine: the file lives while a task refers to it); then the local
        file is deleted."""
        with self._lock:
            life = self._lifetimes.get(f._token)
            if life is None and f.kind is FileKind.LOCAL and f.unlink_when_done and f.path:
                life = self._lifetime(f)
            if life is None or not life.users:
                undeclare()
                if life is not None:
                    life.released = True
                    self._maybe_unlink(f._token, life)
                return
            life.released = True
            life.on_done = undeclare

    def _dropped(self, token: int) -> None:
        """The user dropped every reference to an ``unlink_when_done`` File."""
        with self._lock:
            life = self._lifetimes.get(token)
            if life is not None:
                life.released = True
                self._maybe_unlink(token, life)

    def _lifetime(self, f: File) -> _Lifetime:
        life = self._lifetimes.get(f._token)
        if life is None:
            assert f.path is not None
            life = self._lifetimes[f._token] = _Lifetime(f.path)
            weakref.finalize(f, self._dropped, f._token)
        return life

    def _maybe_unlink(self, token: int, life: _Lifetime) -> bool:
        if not life.released or life.users:
            return False
        del self._lifetimes[token]
        if life.on_done is not None:
            life.on_done()
        try:
            os.unlink(life.path)
        except OSError:
            return False
        return True

    def uses(self, f: File) -> int:
        """How many unfinished tasks use ``f`` (an ``unlink_when_done`` file; else 0)."""
        with self._lock:
            life = self._lifetimes.get(f._token)
            return len(life.users) if life is not None else 0

    # ------------------------------------------------------------------ helpers
    def _task(self, task_id: int) -> _TaskFiles:
        rec = self._tasks.get(task_id)
        if rec is None:
            rec = self._tasks[task_id] = _TaskFiles()
        return rec

    @staticmethod
    def _spec(f: File, name: str, path: str, size: int, kind: str = "") -> FileSpec:
        return FileSpec(name=name, kind=kind or f.kind.value, path=path, size=size,
                        cache_level=int(f.cache), peer_transfer=f.peer_transfer,
                        checkpoint=f.checkpoint, mode=f.mode)
