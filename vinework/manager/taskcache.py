"""The tasks cache behind ``Manager.enable_tasks_cache``: a task identical to one that already
succeeded, in this run or an earlier one, is not run again.

"Identical" means the same key: a sha256 over the task's kind; its command (a
PythonTask: its payload, the pickle of function and arguments, plus the source
files of the modules the function and any function passed as an argument come
from, since a function of an installed module is only named in the payload); its
environment variables; each input's remote name and content (local files: the
sha256 of their bytes, remembered per path, size, inode and mtime so a big input
is hashed once per process; buffers: their bytes); and each output's remote name. Resources, tags, category, priority,
retries and limits are left out: they change how a task runs, not what it
computes (TaskVine's fingerprint also leaves them out).

A task is not cacheable (``key`` answers None, and says why in a debug log) when
its result depends on bytes the manager does not hold: a temp input or output, a
PythonTask with temp output, a missing input, or a local input that is the output
of a task of this run still in flight (its file is not yet what the task will
read; once that task has been stored or restored here, its outputs are final and
are keyed by content). A later issue may key temps by the lineage of the task
that makes them.

Stability of PythonTask keys across runs (checked with cloudpickle 3.1 under
PYTHONHASHSEED 0, 1, 2 and random): a script's functions and lambdas, and
arguments made of numbers, strings, bytes, lists, tuples and dicts give the same
payload bytes in every run. Two things never do, so such tasks always miss
(never a wrong hit): instances of classes defined in the script (cloudpickle
tags a class pickled by value with a random id per process), and sets or
frozensets of strings (their order follows the string hash seed). Code reached
only by reference is not in the key beyond those module files: change a library
the function calls and the cache does not see it (clear the cache directory).
Undeclared dependencies (files read by absolute path, the network) are not seen
either, as in TaskVine.

On disk (one directory per entry, so nothing is loaded at start)::

    <cache_dir>/<key[:2]>/<key>/meta.json   results, and the size and sha256 of every blob
    <cache_dir>/<key[:2]>/<key>/out-<i>     the i-th local output, by remote name order
    <cache_dir>/<key[:2]>/<key>/result.p    a PythonTask's cloudpickled return value

An entry is written into a hidden staging directory next to its place and
renamed into place in one step: a reader (another manager on the same directory
included) sees a whole entry or none; when two managers store the same key, the
first rename wins and the other is discarded. Restoring copies every blob next
to its destination while checking its size and sha256, and only when all are
right moves them into place (``os.replace``); an entry that fails a check is
logged, removed and treated as a miss, never raised. There is no eviction.

How a hit is reported, as TaskVine's ``vine_cache``: the task comes back with
``hostname`` and ``addrport`` ``"CACHED"`` (TaskVine's test checks
``t.hostname == "CACHED"``), plus vinework's ``t.cached = True``; its result,
exit code, stdout and Python return value are those of the original run.

``log_file`` gets one JSON object per line, in the shape of TaskVine's cache
transaction log (``timestamp``, ``event``, ``task_id`` = the key): ``COMPLETED``
for a stored task, ``CACHED`` for a hit, and ``CORRUPT``, ``RESTORE_FAILED``,
``STORE_FAILED`` for entries that could not be used or written. The log is a
record, not the index (unlike TaskVine, which replays it into memory at start).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import cloudpickle

from ..constants import TaskResult
from ..file import File, FileKind
from ..task import PythonTask, Task

log = logging.getLogger("vinework.taskcache")

FORMAT = 1  # version of the key recipe and of meta.json; a change makes every entry a miss
CACHED_HOST = "CACHED"  # TaskVine's hostname and addrport of a task served from the cache
_CHUNK = 1 << 20
_HASH_MEMO_MAX = 65536


class TaskCache:
    """A persistent cache of successful tasks' results, shared by every manager using
    the same ``cache_dir``.

    Args:
        cache_dir: where entries live (created if missing).
        log_file: where hits and stores are recorded, one JSON object per line.

    Thread-safe: ``key``, ``restore`` and ``store`` may be called from several threads.
    ``hits``, ``misses``, ``stores`` and ``corrupt`` count what this instance did.
    """

    def __init__(self, cache_dir: str = "vine-cache-outputs",
                 log_file: str = "vine-cache.txlog") -> None:
        self.cache_dir = os.path.abspath(cache_dir)
        self.log_file = os.path.abspath(log_file)
        os.makedirs(self.cache_dir, exist_ok=True)
        os.makedirs(os.path.dirname(self.log_file), exist_ok=True)
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, int, int, int, int], str] = {}
        self._settled: set[str] = set()  # names of local outputs of stored/restored tasks
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self.corrupt = 0

    # ------------------------------------------------------------------ the key
    def key(self, t: Task) -> str | None:
        """The task's cache key, or None if it cannot be cached (the reason is logged at
        debug level). Call it at submit, after ``t.submit_finalize()`` (a PythonTask's
        payload is made there)."""
        try:
            return self._key(t)
        except _NotCacheable as why:
            log.debug("task %s (%s) is not cacheable: %s", t.id, t.command, why)
            return None

    def _key(self, t: Task) -> str:
        with self._lock:  # its local outputs are being written again: no longer final
            self._settled.difference_update(f._name for f, _ in t.outputs if f._name)
        if type(t).__module__.startswith("vinework.") and type(t) not in (Task, PythonTask):
            raise _NotCacheable(f"{type(t).__name__} tasks are not cached")
        h = hashlib.sha256()
        put = _Framer(h)
        put.text(f"vinework-task-{FORMAT}")
        if isinstance(t, PythonTask):
            if t.payload is None:
                raise _NotCacheable("its payload was not made yet (key() before submit)")
            if t.temp_output:
                raise _NotCacheable("its result stays on a worker (temp output)")
            put.text("python")
            put.blob(t.payload)
            put.text("serialized" if getattr(t, "serialize_output", True) else "raw")
            for path in _code_files(t):
                put.text(path)
                put.text(self._file_hash(path))
        else:
            put.text("command")
            put.text(t.command)
        env = sorted(t.env.items())
        put.count(len(env))
        for name, value in env:
            put.text(name)
            put.text("\0unset" if value is None else value)  # a NUL cannot be in a value
        inputs = sorted((remote, self._input_hash(f, remote)) for f, remote in t.inputs)
        put.count(len(inputs))
        for remote, digest in inputs:
            put.text(remote)
            put.text(digest)
        outputs = sorted(remote for f, remote in t.outputs if _output_ok(f, remote))
        put.count(len(outputs))
        for remote in outputs:
            put.text(remote)
        return h.hexdigest()

    def _input_hash(self, f: File, remote: str) -> str:
        if f.kind is FileKind.BUFFER:
            data = f._data
            if data is None:
                if not f.path:
                    raise _NotCacheable(f"buffer input {remote!r} holds no data")
                return "file:" + self._file_hash(f.path)
            return "buffer:" + hashlib.sha256(data).hexdigest()
        if f.kind is FileKind.LOCAL:
            if f._name is not None and f._name.startswith("file-out-"):
                with self._lock:
                    settled = f._name in self._settled
                if not settled:
                    raise _NotCacheable(f"input {remote!r} is the output of a task of this "
                                        "run not yet stored or restored")
            if not f.path:
                raise _NotCacheable(f"input {remote!r} has no path")
            return "file:" + self._file_hash(f.path)
        raise _NotCacheable(f"input {remote!r} is a {f.kind.value} file (its bytes live on workers)")

    def _file_hash(self, path: str) -> str:
        """sha256 of a local file's bytes, remembered by (path, device, inode, size, mtime)."""
        try:
            st = os.stat(path)
        except OSError as e:
            raise _NotCacheable(f"cannot read {path!r}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise _NotCacheable(f"{path!r} is not a regular file")
        memo = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._memo.get(memo)
        if known is not None:
            return known
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(_CHUNK), b""):
                    h.update(block)
            after = os.stat(path)
        except OSError as e:
            raise _NotCacheable(f"cannot read {path!r}: {e.strerror}") from None
        if (after.st_size, after.st_mtime_ns, after.st_ino) != (st.st_size, st.st_mtime_ns,
                                                                 st.st_ino):
            raise _NotCacheable(f"{path!r} changed while it was read")
        digest = h.hexdigest()
        with self._lock:
            if len(self._memo) >= _HASH_MEMO_MAX:
                self._memo.pop(next(iter(self._memo)))
            self._memo[memo] = digest
        return digest

    # ------------------------------------------------------------------ hits
    def restore(self, t: Task, key: str) -> bool:
        """On a hit, write the task's local output files (atomically, at each ``f.path``),
        fill its result fields as the original run left them, mark it cached and return
        True. On a miss, or an entry that cannot be used (logged), change nothing and
        return False. Never raises for a bad entry.

        The manager still has to complete the task itself (``_done``, its queue of
        finished tasks) so that ``wait()`` returns it.
        """
        entry = self._entry(key)
        try:
            with open(os.path.join(entry, "meta.json"), encoding="utf-8") as fh:
                raw = fh.read()
        except FileNotFoundError:
            self._count("misses")
            return False
        except OSError as e:
            self._count("misses")
            self._event("RESTORE_FAILED", key, t, error=f"cannot read the entry: {e}")
            return False
        try:
            meta = _check_meta(json.loads(raw), key, t)
        except (ValueError, KeyError, TypeError) as e:
            self._reject(key, t, entry, f"bad meta.json: {e}")
            return False
        staged: list[tuple[str, str]] = []  # (temp path, destination)
        try:
            value: Any = None
            if meta["python"] is not None:
                blob = _read_checked(entry, meta["python"])
                try:
                    value = cloudpickle.loads(blob)
                except Exception as e:  # a class gone from this run, say: not the entry's fault
                    self._count("misses")
                    self._event("RESTORE_FAILED", key, t, error=f"cannot unpickle the result: {e}")
                    return False
            by_remote = {o["remote"]: o for o in meta["outputs"]}
            for f, remote in t.outputs:
                assert f.path is not None  # _check_meta made sure of that
                staged.append((_copy_checked(entry, by_remote[remote], f.path), f.path))
        except _BadEntry as e:
            _unlink_all(tmp for tmp, _ in staged)
            self._reject(key, t, entry, str(e))
            return False
        except OSError as e:
            _unlink_all(tmp for tmp, _ in staged)
            self._count("misses")
            self._event("RESTORE_FAILED", key, t, error=f"cannot write an output: {e}")
            return False
        for tmp, dest in staged:
            os.replace(tmp, dest)
        _fill(t, meta, value)
        self._settle(t)
        self._count("hits")
        self._event("CACHED", key, t)
        return True

    def _reject(self, key: str, t: Task, entry: str, why: str) -> None:
        """A damaged entry: log it, move it out of the way (so a later store can replace
        it) and count a miss."""
        self._count("misses")
        self._count("corrupt")
        log.warning("tasks cache: entry %s is damaged (%s); running task %s", key, why, t.id)
        self._event("CORRUPT", key, t, error=why)
        aside = f"{entry}.corrupt-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.rename(entry, aside)
        except OSError:
            return  # already gone (another manager moved it)
        shutil.rmtree(aside, ignore_errors=True)

    # ------------------------------------------------------------------ stores
    def store(self, t: Task, key: str) -> bool:
        """Save a finished task's local outputs and results under ``key``; True if this call
        wrote the entry. Only a successful task (result SUCCESS, exit code 0) is stored; an
        entry already there (another manager, an identical task) is kept. Never raises:
        a failure to write is logged and the cache just misses next time.

        Call it before the user can touch the outputs (when ``wait()`` hands the task over)
        and preferably not on the manager's event loop: it copies every local output.
        """
        if getattr(t, "cached", False):
            return False
        if int(t.result) != int(TaskResult.SUCCESS) or t.exit_code != 0:
            log.debug("task %s not stored: result %s, exit code %s", t.id, t.result, t.exit_code)
            return False
        entry = self._entry(key)
        if os.path.exists(entry):  # an identical task was stored already
            self._settle(t)
            return False
        stage = os.path.join(os.path.dirname(entry),
                             f".tmp-{key}-{os.getpid()}-{os.urandom(6).hex()}")
        try:
            os.makedirs(stage)
            outputs = []
            for i, (f, remote) in enumerate(sorted(t.outputs, key=lambda o: o[1])):
                if not _output_ok(f, remote) or f.path is None:
                    raise _NotCacheable(f"output {remote!r} is not a local file")
                size, digest = _copy_hashing(f.path, os.path.join(stage, f"out-{i}"))
                outputs.append({"remote": remote, "blob": f"out-{i}", "size": size,
                                "sha256": digest})
            python = None
            if isinstance(t, PythonTask):
                blob = cloudpickle.dumps(t._output)
                with open(os.path.join(stage, "result.p"), "wb") as fh:
                    fh.write(blob)
                python = {"blob": "result.p", "size": len(blob),
                          "sha256": hashlib.sha256(blob).hexdigest()}
            meta = {
                "format": FORMAT, "key": key, "kind": "python" if python else "command",
                "command": t.command, "result": int(t.result), "exit_code": t.exit_code,
                "std_output": t.std_output, "outputs": outputs, "python": python,
                "wall_time": t.wall_time, "hostname": t.hostname, "stored_at": time.time(),
            }
            with open(os.path.join(stage, "meta.json"), "w", encoding="utf-8") as fh:
                json.dump(meta, fh)
            try:
                os.rename(stage, entry)
            except OSError:
                if os.path.isdir(entry):  # another manager stored it first: keep theirs
                    self._settle(t)
                    return False
                raise
        except Exception as e:  # disk full, output gone, unpicklable result, ...
            log.warning("tasks cache: task %s not stored: %s", t.id, e)
            self._event("STORE_FAILED", key, t, error=str(e))
            return False
        finally:
            if os.path.isdir(stage):
                shutil.rmtree(stage, ignore_errors=True)
        self._settle(t)
        self._count("stores")
        self._event("COMPLETED", key, t, exit_code=t.exit_code, result=int(t.result))
        return True

    # ------------------------------------------------------------------ plumbing
    def _settle(self, t: Task) -> None:
        """The task's local outputs are final: a consumer may be keyed by their content."""
        with self._lock:
            self._settled.update(f._name for f, _ in t.outputs if f._name)

    def _entry(self, key: str) -> str:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a task cache key: {key!r}")
        return os.path.join(self.cache_dir, key[:2], key)

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _event(self, event: str, key: str, t: Task, **data: Any) -> None:
        """Append one JSON line to the log: a single O_APPEND write, so lines from several
        managers sharing the file do not interleave."""
        record = {"timestamp": time.time(), "event": event, "task_id": key,
                  "vine_task_id": t.id, "command": t.command, **data}
        line = (json.dumps(record) + "\n").encode()
        try:
            fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("tasks cache: cannot write %s: %s", self.log_file, e)


class _NotCacheable(Exception):
    pass


class _BadEntry(Exception):
    pass


class _Framer:
    """Feeds length-prefixed fields into a hash, so no two field lists hash alike."""

    def __init__(self, h: Any) -> None:
        self.h = h

    def blob(self, data: bytes) -> None:
        self.h.update(len(data).to_bytes(8, "little"))
        self.h.update(data)

    def text(self, s: str) -> None:
        self.blob(s.encode("utf-8", "surrogatepass"))

    def count(self, n: int) -> None:
        self.h.update(n.to_bytes(8, "little"))


def _output_ok(f: File, remote: str) -> bool:
    if f.kind is not FileKind.LOCAL:
        raise _NotCacheable(f"output {remote!r} is a {f.kind.value} file (it stays on workers)")
    return True


def _code_files(t: PythonTask) -> list[str]:
    """Source files of the code a PythonTask's payload names by reference only: the
    function's module, and the modules of functions passed as arguments (one level
    into lists, tuples and dict values)."""
    fns: list[Any] = [t.function]
    args = list(getattr(t, "_args", ())) + list(getattr(t, "_kwargs", {}).values())
    for a in args:
        items = a.values() if isinstance(a, dict) else a if isinstance(a, list | tuple) else [a]
        fns.extend(x for x in items if callable(x))
    files = set()
    for fn in fns:
        fn = getattr(fn, "__func__", fn)  # a bound method: its function
        mod = sys.modules.get(getattr(fn, "__module__", None) or "")
        path = getattr(mod, "__file__", None) if mod is not None else None
        if mod is not None and mod.__name__ != "__main__" and path and path.endswith(".py"):
            files.add(os.path.abspath(path))
    return sorted(files)


def _check_meta(meta: Any, key: str, t: Task) -> dict[str, Any]:
    """The entry's metadata, if it is whole and fits the task; raises ValueError if not."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
        raise ValueError("another format or another key")
    int(meta["result"]), int(meta["exit_code"])
    if not isinstance(meta["std_output"], str):
        raise ValueError("std_output is not text")
    python = meta["python"]
    if (python is not None) != isinstance(t, PythonTask):
        raise ValueError("the entry is for another kind of task")
    for blob in ([python] if python is not None else []) + list(meta["outputs"]):
        if not isinstance(blob["blob"], str) or "/" in blob["blob"] or blob["blob"] in ("", ".", ".."):
            raise ValueError(f"bad blob name {blob['blob']!r}")
        int(blob["size"]), str(blob["sha256"])
    remotes = {o["remote"] for o in meta["outputs"]}
    if remotes != {remote for _, remote in t.outputs} or any(f.path is None for f, _ in t.outputs):
        raise ValueError("the entry's outputs are not the task's")
    return meta


def _read_checked(entry: str, blob: dict[str, Any]) -> bytes:
    try:
        with open(os.path.join(entry, blob["blob"]), "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise _BadEntry(f"{blob['blob']}: {e.strerror}") from None
    if len(data) != int(blob["size"]) or hashlib.sha256(data).hexdigest() != blob["sha256"]:
        raise _BadEntry(f"{blob['blob']} does not match its checksum")
    return data


def _copy_checked(entry: str, blob: dict[str, Any], dest: str) -> str:
    """Copy a blob next to ``dest`` while checking it; the temp copy's path. _BadEntry if
    the blob is damaged, OSError if the destination cannot be written."""
    src = os.path.join(entry, blob["blob"])
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    tmp = os.path.join(os.path.dirname(dest) or ".",
                       f".{os.path.basename(dest)}.vinework-cache-{os.urandom(6).hex()}")
    try:
        fin = open(src, "rb")  # noqa: SIM115
    except OSError as e:
        raise _BadEntry(f"{blob['blob']}: {e.strerror}") from None
    h = hashlib.sha256()
    size = 0
    try:
        with fin, open(tmp, "wb") as fout:
            while True:
                try:
                    block = fin.read(_CHUNK)
                except OSError as e:
                    raise _BadEntry(f"{blob['blob']}: {e.strerror}") from None
                if not block:
                    break
                h.update(block)
                size += len(block)
                fout.write(block)
        if size != int(blob["size"]) or h.hexdigest() != blob["sha256"]:
            raise _BadEntry(f"{blob['blob']} does not match its checksum")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _copy_hashing(src: str, dest: str) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        for block in iter(lambda: fin.read(_CHUNK), b""):
            h.update(block)
            size += len(block)
            fout.write(block)
    return size, h.hexdigest()


def _unlink_all(paths: Iterable[str]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            os.unlink(p)


def _fill(t: Task, meta: dict[str, Any], value: Any) -> None:
    """Set the task's result fields as the original run left them."""
    code = int(meta["result"])
    t.result = _result(code)
    t.exit_code = int(meta["exit_code"])
    t.std_output = meta["std_output"]
    t.hostname = CACHED_HOST
    t.addrport = CACHED_HOST
    t.worker = ""
    t.retries = 0
    t.error_message = ""
    t.wall_time = 0.0  # nothing ran
    t.cached = True
    if isinstance(t, PythonTask):
        t._output = value
        t.remote_traceback = ""


def _result(code: int) -> Any:
    """The value ``t.result`` holds for a result number (a ``ResultString`` where the
    constants have it, else the ``TaskResult``)."""
    from .. import constants
    make = getattr(constants, "result_string", None)
    return make(code) if make is not None else TaskResult(code)
