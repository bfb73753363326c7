"""The Manager's file methods: declaring, fetching, undeclaring files, and their stories.

TaskVine's ``declare_file``, ``declare_buffer``, ``declare_temp``, ``declare_url``,
``declare_minitask``, ``declare_untar``, ``declare_poncho``, ``fetch_file``,
``undeclare_file`` (and its old names ``remove_file``/``prune_file``),
``get_file_replica_count``; the kinds vinework does not have (starch packages,
xrootd, chirp) raise ``NotImplementedError`` saying so.

A mini-task file is made on the worker that needs it, by running its mini task
there (``worker/minitask.py``); its inputs (local files, buffers, URLs, other
mini-task files) are brought to that worker first. It is named by a hash of
the mini task, so the same task declared twice is the same file, shared by
every worker that has made it (with ``peer_transfer``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import weakref
from typing import Any

from .._later import not_yet
from ..constants import CacheLevel, cache_level
from ..core import FetchDone, FetchRequested, FileDeclared, FileReleased, FileSpec, FileUndeclared
from ..file import File, FileKind, check_remote_name
from .base import ManagerBase
from .localfiles import InputMissing, LocalFiles

DECLARED = 0  # the pseudo task id under which mini tasks' local inputs are read
STARCH_REFUSED = (
    "declare_starch: vinework cannot run starch packages (self-extracting archives made "
    "by cctools' starch tool); pack the software as a tarball and use declare_untar, or "
    "as a conda-pack environment and use declare_poncho")


class FileMethods(ManagerBase):
    """Files a task can consume and produce (see the module docstring)."""

    _files: LocalFiles  # names, writers and lifetimes (set by Manager.__init__)
    _holds_lock: threading.Lock  # guards _buffer_holds (set by Manager.__init__)
    _buffer_holds: dict[str, int]  # a buffer name -> the declared handles holding it

    def declare_file(self, path: str, cache: bool | str | int = False, peer_transfer: bool = True,
                     unlink_when_done: bool = False) -> File:
        """A file on the manager's filesystem, as a task input or output.

        Its cache name follows its content (checked at every submit that reads it). With
        ``unlink_when_done``, the file is deleted from the manager's disk once the File is
        released (``undeclare_file``, or no reference to it is left) and no unfinished
        task uses it."""
        f = File(FileKind.LOCAL, path=path, cache=cache_level(cache),
                 peer_transfer=peer_transfer, unlink_when_done=unlink_when_done)
        if unlink_when_done:
            self._files.watch_lifetime(f)
        return f

    def declare_buffer(self, buffer: bytes | str | None = None, cache: bool | str | int = False,
                       peer_transfer: bool = True) -> File:
        """Bytes held by the manager, as a task input or output (after the task that writes
        it comes back from ``wait()``, ``contents()`` gives what the task wrote)."""
        data = buffer.encode() if isinstance(buffer, str) else bytes(buffer or b"")
        f = File(FileKind.BUFFER, data=data, cache=cache_level(cache),
                 peer_transfer=peer_transfer)
        self._stage_buffer(f, data)
        return f

    def _stage_buffer(self, f: File, data: bytes) -> None:
        """Write a buffer's bytes to its staging file, hold its name, declare it.

        Buffers of the same bytes share one name and one staging file: counted, and the
        file deleted with the last handle (``undeclare_file``), under one lock. (Also a
        buffer submitted again after it was undeclared.)"""
        path = os.path.join(self._run.staging, f.cache_name)
        f.path = path
        with self._holds_lock:
            if not os.path.exists(path):
                tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
                with open(tmp, "wb") as out:
                    out.write(data)
                os.chmod(tmp, 0o755)  # buffers are executable by default, as in TaskVine
                os.replace(tmp, path)
            if f._held is None:
                self._buffer_holds[f.cache_name] = self._buffer_holds.get(f.cache_name, 0) + 1
                f._held = f.cache_name
            self._declare(f, size=len(data))

    def declare_temp(self, checkpoint: bool = False) -> File:
        """An intermediate file that stays on workers (``checkpoint=True`` also saves it)."""
        f = File(FileKind.TEMP, cache=CacheLevel.WORKFLOW, checkpoint=checkpoint)
        self._declare(f)
        return f

    # the kinds that come with the file-kinds work
    def declare_url(self, url: str, cache: bool | str | int = False,
                    peer_transfer: bool = True) -> File:
        """A file a worker fetches itself from ``url`` (``file://``, ``http://``,
        ``https://``): no byte goes through the manager. Named by its URL; a worker that
        holds a copy serves it to the others when ``peer_transfer`` (with ``cache=False``
        each task's copy goes with the task). A URL that cannot be fetched ends its tasks
        with result "forsaken": at once for HTTP 404/410 or a missing file, else after
        ``url-fetch-attempts`` (3) failed fetches. ``fetch_file`` of it has a worker fetch
        it (unless one holds it) and brings that copy back."""
        from ..worker.urlfetch import check_url

        f = File(FileKind.URL, url=check_url(url), cache=cache_level(cache),
                 peer_transfer=peer_transfer)
        self._declare_url(f)
        return f

    def _declare_url(self, f: File) -> None:
        """Tell the core about a URL file (its spec carries the URL)."""
        spec = FileSpec(name=f.cache_name, kind=FileKind.URL.value, url=f.url or "",
                        cache_level=int(f.cache), peer_transfer=f.peer_transfer)
        f._manager = self
        self._declared.add(spec.name)
        self._post(FileDeclared(now=time.monotonic(), spec=spec))

    def declare_untar(self, tarball: File | str, cache: bool | str | int = False,
                      peer_transfer: bool = True) -> File:
        """A directory: ``tarball`` (a File, or a path to one) unpacked on the worker that
        needs it. Plain, gzip, bzip2 and xz tars; members that would land outside the
        directory (absolute names, ``..``, links out of it) fail it with an error naming
        them (the waiting tasks end as for a URL that cannot be fetched)."""
        f = self._mini_source_file(tarball, "declare_untar")
        return self._declare_mini("untar", "", [(f, "tarball")], [], "", cache, peer_transfer,
                                  f"untar:{f.source()}")

    def declare_poncho(self, package: File | str, cache: bool | str | int = False,
                       peer_transfer: bool = True) -> File:
        """A software environment: ``package``, a conda-pack style tarball (``bin/``,
        ``lib/``, ...), unpacked on the worker (its ``bin/conda-unpack`` run there if it
        has one). ``task.add_environment(f)`` runs a command task with it active."""
        f = self._mini_source_file(package, "declare_poncho")
        return self._declare_mini("poncho", "", [(f, "package")], [], "", cache,
                                  peer_transfer, f"poncho:{f.source()}")

    def declare_starch(self, starch: File | str, cache: bool | str | int = False,
                       peer_transfer: bool = True) -> File:
        """Refused: vinework does not run starch packages (see the README)."""
        raise NotImplementedError(STARCH_REFUSED)

    def declare_minitask(self, minitask: Any, source: str, cache: bool | str | int = False,
                         peer_transfer: bool = True) -> File:
        """A file made on the worker that needs it by running ``minitask`` (a command
        ``Task`` with inputs, environment variables, no outputs) there: what it leaves
        at ``source`` in its sandbox, a file or a directory, is the file. Made once per
        worker and cached at ``cache``'s level; a failure is reported as for a URL (the
        waiting tasks run elsewhere, then end "forsaken" with the error)."""
        from ..task import PythonTask, Task

        if not isinstance(minitask, Task) or isinstance(minitask, PythonTask):
            raise TypeError("declare_minitask takes a command Task (a PythonTask cannot be "
                            f"a mini task), got {type(minitask).__name__}")
        if not minitask.command:
            raise ValueError("a mini task needs a command")
        if minitask.outputs:
            raise ValueError("a mini task makes one file, named by source=: it has no "
                             "outputs of its own")
        src = check_remote_name(source)
        env = sorted((k, v) for k, v in minitask.env.items() if v is not None)
        return self._declare_mini("command", minitask.command, list(minitask.inputs), env,
                                  src, cache, peer_transfer, f"minitask:{minitask.command}")

    def _mini_source_file(self, f: File | str, what: str) -> File:
        if isinstance(f, str):
            return self.declare_file(f, cache=True)
        if not isinstance(f, File):
            raise TypeError(f"{what} takes a File (or a path), got {type(f).__name__}")
        return f

    def _declare_mini(self, kind: str, command: str, inputs: list[tuple[File, str]],
                      env: list[tuple[str, str]], source: str, cache: bool | str | int,
                      peer_transfer: bool, what: str) -> File:
        """Declare a mini-task file: its inputs first, then the file (named by a hash of
        the whole mini task)."""
        names: list[tuple[str, str]] = []
        for f, remote in inputs:
            if f.kind is FileKind.TEMP:
                raise ValueError(f"a temp ({f!r}) cannot be an input of a mini task: its "
                                 "inputs are local files, buffers, URLs or mini-task files")
            if f.kind is FileKind.LOCAL:
                try:
                    name = self._files.input_name(f, DECLARED)
                except InputMissing as e:
                    raise FileNotFoundError(f"mini task input: {e}") from None
                f._manager = self
            elif f.cache_name not in self._declared:
                if f.kind in (FileKind.URL, FileKind.MINI):
                    raise ValueError(f"{f!r} was declared to another manager")
                self._declare(f)
                name = f.cache_name
            else:
                name = f.cache_name
            names.append((name, remote))
        key = repr((kind, command, names, env, source)).encode()
        name = f"mini-{hashlib.blake2b(key, digest_size=16).hexdigest()}"
        f = File(FileKind.MINI, cache=cache_level(cache), peer_transfer=peer_transfer)
        f._name = name
        f.mini_kind, f.mini_what = kind, what
        f._manager = self
        spec = FileSpec(name=name, kind=FileKind.MINI.value, url=f"mini://{name}",
                        cache_level=int(f.cache), peer_transfer=peer_transfer,
                        mini_kind=kind, mini_command=command, mini_inputs=tuple(names),
                        mini_env=tuple(env), mini_source=source)
        self._declared.add(name)
        self._post(FileDeclared(now=time.monotonic(), spec=spec))
        return f

    def declare_xrootd(self, source: str, proxy: Any = None, env: Any = None,
                       cache: Any = False, peer_transfer: bool = True) -> File:
        not_yet("declare_xrootd (file kinds: xrootd)")

    def declare_chirp(self, server: str, source: str, ticket: Any = None, env: Any = None,
                      cache: Any = False, peer_transfer: bool = True) -> File:
        not_yet("declare_chirp (file kinds: chirp)")

    def _declare(self, f: File, size: int = -1) -> None:
        spec = FileSpec(name=f.cache_name, kind=f.kind.value, path=f.path, size=size,
                        cache_level=int(f.cache), peer_transfer=f.peer_transfer,
                        checkpoint=f.checkpoint, mode=f.mode)
        f._manager = self
        f._size = size
        self._declared.add(spec.name)
        self._post(FileDeclared(now=time.monotonic(), spec=spec))
        if f.kind is FileKind.TEMP:
            # once the user drops every handle, the temp may be pruned when no task needs it
            weakref.finalize(f, self._release, spec.name)

    def _declare_spec(self, spec: FileSpec) -> None:
        """Tell the core about a file (or a new source of a known one)."""
        self._declared.add(spec.name)
        self._post(FileDeclared(now=time.monotonic(), spec=spec))

    def _redeclare(self, f: File) -> None:
        """A declared local file or buffer changed its mode (``File.set_mode``)."""
        if f._name is not None and f._name in self._declared:
            spec = FileSpec(name=f.cache_name, kind=f.kind.value, path=f.path, size=f._size,
                            cache_level=int(f.cache), peer_transfer=f.peer_transfer,
                            checkpoint=f.checkpoint, mode=f.mode)
            self._post(FileDeclared(now=time.monotonic(), spec=spec))

    def _release(self, name: str) -> None:
        if not self._closed and self._error is None:
            try:
                self._server.post(FileReleased(now=time.monotonic(), name=name))
            except RuntimeError:  # the loop is gone
                pass

    def _file_at_manager(self, name: str) -> str | tuple[str, int] | None:
        """For the manager's transfer server (its own threads): asked on the loop."""
        if self._closed or self._error is not None:
            return None
        try:
            return self._server.call(lambda: self._state.manager_source(name))  # type: ignore[return-value]
        except Exception:
            return None

    def undeclare_file(self, f: File) -> None:
        """Forget a file: delete it from every worker's cache. A local file declared with
        ``unlink_when_done`` is deleted too: at once if no unfinished task uses it, else
        (and only then is it forgotten) when the last one comes back from ``wait()``."""
        name = f._name if f.kind is FileKind.LOCAL else f.cache_name

        def undeclare() -> None:
            if name is not None and not self._closed and self._error is None:
                self._post(FileUndeclared(now=time.monotonic(), name=name))
                self._declared.discard(name)
        if f.kind is FileKind.BUFFER and name is not None:
            # under the lock that declare_buffer posts under: another thread's buffer of
            # the same bytes is declared wholly before or after this
            with self._holds_lock:
                if self._let_go(f, name):
                    self._files.released(f, undeclare)
                    self._drop_staged(name, f.path)
            return
        self._files.released(f, undeclare)
        if f.kind is FileKind.TEMP:  # a copy brought to the manager (fetch, no-peer route)
            try:
                os.unlink(os.path.join(self._run.staging, f.cache_name))
            except OSError:
                pass

    def _let_go(self, f: File, name: str) -> bool:
        """A buffer's handle is undeclared: whether no other declared buffer of the same
        bytes is left (then the name is forgotten). Undeclaring one handle twice counts
        once. (The caller holds ``_holds_lock``.)"""
        held, f._held = f._held, None
        if held is not None:  # (a task may have written it since: a name of its own)
            left = self._buffer_holds.get(held, 1) - 1
            if left > 0:
                self._buffer_holds[held] = left
            else:
                self._buffer_holds.pop(held, None)
        return self._buffer_holds.get(name, 0) == 0

    def _drop_staged(self, name: str, path: str | None) -> None:
        """Delete the manager's copy of a buffer nobody holds any more (the core no longer
        serves it; a transfer of it under way keeps its open file): its staging file, and
        the one a task wrote it into."""
        staged = os.path.join(self._run.staging, name)
        for p in {staged, path or staged}:
            if os.path.dirname(p) == self._run.staging:
                try:
                    os.unlink(p)
                except OSError:
                    pass

    def remove_file(self, f: File) -> None:
        """TaskVine's deprecated name of ``undeclare_file``."""
        self.undeclare_file(f)

    def prune_file(self, f: File) -> None:
        """TaskVine's ``prune_file``: delete a file from the workers (``undeclare_file``)."""
        self.undeclare_file(f)

    def fetch_file(self, f: File, timeout: float | None = None) -> bytes:
        """The bytes of a file, brought from a worker if only workers have it (TaskVine
        returns a str; see the README's differences)."""
        if f.kind is not FileKind.TEMP and f.path and os.path.exists(f.path) \
                and (f._name is None or f._name not in self._declared):
            with open(f.path, "rb") as fh:
                return fh.read()
        with self._cond:
            rid = self._next_fetch
            self._next_fetch += 1
        self._post(FetchRequested(now=time.monotonic(), request_id=rid, name=f.cache_name))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while rid not in self._fetches:
                if self._error is not None:
                    raise self._error
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"fetch_file({f!r}) timed out")
                self._cond.wait(left)
            done = self._fetches.pop(rid)
        if done.path is None:
            raise FileNotFoundError(f"cannot fetch {f!r}: {done.error}")
        if os.path.isdir(done.path):
            raise IsADirectoryError(f"{f!r} is a directory (brought back to {done.path}); "
                                    "fetch_file gives the bytes of a file")
        with open(done.path, "rb") as fh:
            return fh.read()

    def _on_fetch_done(self, c: FetchDone) -> None:
        with self._cond:
            self._fetches[c.request_id] = c
            self._cond.notify_all()

    def file_story(self, f: File) -> list[str]:
        """A file's history: who made it, where its copies are and were, what was recomputed
        (each line: time, what happened, and the stimulus that caused it)."""
        name = f.cache_name

        def lines() -> list[str]:
            st = self._state
            out = [f"{t:.3f} {text} [{stim}]" for t, text, stim in st.file_story(name)]
            holders = st.replicas.ready_workers(name)
            rec = st.files.get(name)
            where = ", ".join(sorted(holders)) or "no worker"
            if rec is not None and rec.at_manager:
                where += " and the manager"
            out.append(f"now: copies on {where}")
            return out
        return self._ask(lines)  # type: ignore[no-any-return]

    def get_file_replica_count(self, f: File) -> int:
        """How many workers hold a ready copy of ``f``."""
        name = f.cache_name
        return int(self._ask(lambda: self._state.replicas.count_ready(name)))
