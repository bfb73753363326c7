"""The user-facing Manager: TaskVine's synchronous API over the manager's loop thread.

Threading model: the core (``vinework.core``) belongs to one event-loop thread
(``server.py``) that does the I/O, so transfers proceed while user code runs.
Nothing here reads or writes the core from the user's thread: every change
(submit, cancel, tune, hoist, undeclare, wait's hand-over) is an event posted
to the loop, and every query (stats, status, hungry, task_state, stories) is
answered on the loop. What this module keeps itself is the user's side of the
bargain: the Task objects submitted and not yet returned by ``wait()``, which
makes ``empty()`` exact. A Task's result fields are filled in on the loop
thread before ``wait()`` can return it. If the core fails, every later call
that needs it raises the ``ManagerError`` the shell recorded.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import threading
import time
import weakref
from typing import Any

import cloudpickle

from ..constants import (
    VINE_DEFAULT_PORT,
    VINE_TASK_DONE,
    VINE_TASK_INITIAL,
    CacheLevel,
    TaskResult,
    cache_level,
)
from ..core import (
    Event,
    FetchDone,
    FetchRequested,
    FileDeclared,
    FileReleased,
    FileSpec,
    FileUndeclared,
    HoistRequested,
    ManagerState,
    ManagerStats,
    TaskCancelled,
    TaskCollected,
    TaskReturned,
    TaskSpec,
    TaskSubmitted,
    Tunables,
    Tuned,
)
from ..file import File, FileKind
from ..task import PythonTask, RemoteTaskError, Task
from ..txnlog import TxnLog
from .errors import ManagerError
from .server import ManagerServer

log = logging.getLogger("vinework.manager")


class Manager:
    """Schedules tasks on connected workers; TaskVine's ``Manager``.

    Args:
        port: 9123 by default; 0 picks any free port; a (low, high) tuple picks
            the first free port in that range.
        name: a project name, shown to workers and in logs.
        run_info_path: where per-run directories (transaction log, staging) go.
        staging_path: where the manager keeps buffers, fetched and checkpointed files
            (default: inside this run's directory).
    """

    def __init__(
        self,
        port: int | tuple[int, int] = VINE_DEFAULT_PORT,
        name: str | None = None,
        run_info_path: str = "vine-run-info",
        staging_path: str | None = None,
    ) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S.%f")
        self.run_dir = os.path.abspath(os.path.join(run_info_path, stamp))
        self.staging_dir = os.path.abspath(staging_path or os.path.join(self.run_dir, "staging"))
        os.makedirs(self.staging_dir, exist_ok=True)
        self.name = name or ""
        self.txn_path = os.path.join(self.run_dir, "vine-logs", "transactions")
        self._txn = TxnLog(self.txn_path)
        self._txn.write("MANAGER", ("START", self.name or "-"))
        tunables = Tunables()
        if os.environ.get("VINEWORK_VALIDATE") == "1":  # check every invariant (test suites)
            tunables.validate = True
        self._state = ManagerState(self.staging_dir, tunables)
        self._tasks: dict[int, Task] = {}
        self._next_id = 1
        self._done: collections.deque[Task] = collections.deque()
        self._cond = threading.Condition()
        self._fetches: dict[int, FetchDone] = {}
        self._next_fetch = 1
        self._declared: set[str] = set()
        self._closed = False
        self._error: ManagerError | None = None
        self.notices: list[str] = []  # hints the manager gave (explained waits)
        self._server = ManagerServer(
            self._state, port, self._txn, self._file_at_manager, self._on_task_returned,
            self._on_fetch_done, self._on_error, self._on_notice, name=self.name,
        )

    # ------------------------------------------------------------------ loop plumbing
    def _post(self, event: Event) -> None:
        """Hand an event to the loop thread (raises the core's error, if it failed)."""
        if self._error is not None:
            raise self._error
        self._server.post(event)

    def _ask(self, fn: Any) -> Any:
        """Answer a query on the loop thread, where the core lives."""
        if self._error is not None:
            raise self._error
        return self._server.call(fn)

    def _on_error(self, err: ManagerError) -> None:
        with self._cond:
            self._error = err
            self._cond.notify_all()

    def _on_notice(self, text: str) -> None:
        self.notices.append(text)
        log.warning("%s", text)

    # ------------------------------------------------------------------ basics
    @property
    def port(self) -> int:
        """The port workers connect to."""
        return self._server.port

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Tell workers to exit, stop the loop thread, and flush the log."""
        if self._closed:
            return
        self._closed = True
        self._server.close()
        self._txn.write("MANAGER", ("END", self.name or "-"))
        self._txn.close()

    # ------------------------------------------------------------------ files
    def declare_file(self, path: str, cache: bool | str | int = False, peer_transfer: bool = True,
                     unlink_when_done: bool = False) -> File:
        """A file on the manager's filesystem, as a task input or output."""
        return File(FileKind.LOCAL, path=path, cache=cache_level(cache),
                    peer_transfer=peer_transfer, unlink_when_done=unlink_when_done)

    def declare_buffer(self, buffer: bytes | str | None = None, cache: bool | str | int = False,
                       peer_transfer: bool = True) -> File:
        """Bytes held by the manager, as a task input."""
        data = buffer.encode() if isinstance(buffer, str) else bytes(buffer or b"")
        f = File(FileKind.BUFFER, data=data, cache=cache_level(cache),
                 peer_transfer=peer_transfer)
        path = os.path.join(self.staging_dir, f.cache_name)
        if not os.path.exists(path):
            tmp = path + ".tmp"
            with open(tmp, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        f.path = path
        self._declare(f, size=len(data))
        return f

    def declare_temp(self, checkpoint: bool = False) -> File:
        """An intermediate file that stays on workers (``checkpoint=True`` also saves it)."""
        f = File(FileKind.TEMP, cache=CacheLevel.WORKFLOW, checkpoint=checkpoint)
        self._declare(f)
        return f

    def _declare(self, f: File, size: int = -1) -> None:
        spec = FileSpec(name=f.cache_name, kind=f.kind.value, path=f.path, size=size,
                        cache_level=int(f.cache), peer_transfer=f.peer_transfer,
                        checkpoint=f.checkpoint)
        self._declared.add(spec.name)
        self._post(FileDeclared(now=time.monotonic(), spec=spec))
        if f.kind is FileKind.TEMP:
            # once the user drops every handle, the temp may be pruned when no task needs it
            weakref.finalize(f, self._release, spec.name)

    def _release(self, name: str) -> None:
        if not self._closed and self._error is None:
            try:
                self._server.post(FileReleased(now=time.monotonic(), name=name))
            except RuntimeError:  # the loop is gone
                pass

    def _file_at_manager(self, name: str) -> str | None:
        """For the manager's transfer server (its own threads): asked on the loop."""
        if self._closed or self._error is not None:
            return None
        try:
            return self._server.call(lambda: self._state.manager_path(name))  # type: ignore[return-value]
        except Exception:
            return None

    def undeclare_file(self, f: File) -> None:
        """Forget a file: delete it from every worker's cache."""
        self._post(FileUndeclared(now=time.monotonic(), name=f.cache_name))
        self._declared.discard(f.cache_name)
        if f.kind is FileKind.LOCAL and f.unlink_when_done and f.path:
            try:
                os.unlink(f.path)
            except OSError:
                pass
        if f.kind is FileKind.TEMP:  # a copy brought to the manager (fetch, no-peer route)
            try:
                os.unlink(os.path.join(self.staging_dir, f.cache_name))
            except OSError:
                pass

    def fetch_file(self, f: File, timeout: float | None = None) -> bytes:
        """The bytes of a file, brought from a worker if only workers have it."""
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

    def task_story(self, t: Task | int) -> list[str]:
        """A task's history: every state change with its time and cause (stimulus id),
        including recovery runs made after it was returned."""
        task_id = t if isinstance(t, int) else t.id
        rows = self._ask(lambda: self._state.task_story(task_id))
        if not rows and not isinstance(t, int):
            rows = list(t._story)
        return [f"{when:.3f} {old or '-'} -> {new} [{why}]" for when, old, new, why in rows]

    def task_state(self, task_id: int) -> int:
        """TaskVine's state of a task (``VINE_TASK_*``: INITIAL 0, READY 1, RUNNING 2,
        WAITING_RETRIEVAL 3, RETRIEVED 4, DONE 5); UNKNOWN (-1) for an id never submitted."""
        with self._cond:
            t = self._tasks.get(task_id)
            returned = task_id < self._next_id and t is None
        if returned:
            return VINE_TASK_DONE  # wait() returned it (the core may have forgotten it)
        v = self._ask(lambda: self._state.task_state(task_id))
        if v is None:  # submitted, not yet seen by the loop; or never submitted
            return VINE_TASK_INITIAL if t is not None else -1
        return int(v)

    def get_file_replica_count(self, f: File) -> int:
        """How many workers hold a ready copy of ``f``."""
        name = f.cache_name
        return int(self._ask(lambda: self._state.replicas.count_ready(name)))

    # ------------------------------------------------------------------ tasks
    def submit(self, t: Task) -> int:
        """Queue a task; returns its id. Raises if a local input file does not exist."""
        if self._closed:
            raise RuntimeError("the manager is closed")
        if self._error is not None:
            raise self._error
        if t.id and self._tasks.get(t.id) is t:
            raise ValueError(f"task {t.id} is already submitted")
        inputs = []
        for f, remote in t.inputs:
            if f.kind is FileKind.LOCAL and (f._name is None or f._name not in self._declared):
                if not f.path or not os.path.isfile(f.path):
                    raise FileNotFoundError(
                        f"input file {f.path!r} (as {remote!r}) of task {t.command!r} does not exist"
                    )
                f.refresh_name()
                self._declare(f, size=os.stat(f.path).st_size)
            elif f.cache_name not in self._declared:
                self._declare(f)
            inputs.append((f.cache_name, remote))
        outputs = []
        for f, remote in t.outputs:
            if f.kind is FileKind.LOCAL and (f._name is None or f._name not in self._declared):
                f._name = "file-out-" + os.urandom(12).hex()
                self._declare(f)
            elif f.cache_name not in self._declared:
                self._declare(f)
            outputs.append((f.cache_name, remote))
        t.id = self._next_id
        self._next_id += 1
        t._reset_results()
        payload = None
        py_out = ""
        temp = False
        if isinstance(t, PythonTask):
            payload = t.payload
            temp = t.temp_output
            if temp:
                py_out = t.output_file.cache_name
                if py_out not in self._declared:
                    self._declare(t.output_file)
        spec = TaskSpec(
            task_id=t.id, command=t.command, inputs=inputs, outputs=outputs,
            env=sorted(t.env.items()), cores=t.cores, memory=t.memory, disk=t.disk, gpus=t.gpus,
            priority=t.priority, max_retries=t.max_retries, time_max=t.time_max, tag=t.tag,
            category=t.category, python_payload=payload, python_output=py_out, temp_output=temp,
            python_mode=getattr(t, "exec_mode", ""),
        )
        with self._cond:
            self._tasks[t.id] = t
        self._post(TaskSubmitted(now=time.monotonic(), spec=spec))
        return t.id

    def _on_task_returned(self, c: TaskReturned) -> None:
        with self._cond:
            t = self._tasks.get(c.task_id)
        if t is None:
            return
        t.result = TaskResult(c.result)
        t.exit_code = c.exit_code
        t.std_output = c.output
        t.worker = c.worker_id
        t.hostname = c.hostname
        t.start_time, t.end_time = c.start, c.end
        t.wall_time = max(0.0, c.end - c.start)
        t.retries = c.attempts - 1
        t.error_message = c.message
        t._story = c.story
        if isinstance(t, PythonTask):
            t._output = self._python_output(t, c)
        t._done = True
        with self._cond:
            self._done.append(t)
            self._cond.notify_all()

    def _python_output(self, t: PythonTask, c: TaskReturned) -> Any:
        blob = c.python_result
        if c.python_result_path:
            try:
                with open(c.python_result_path, "rb") as f:
                    blob = f.read()
                os.unlink(c.python_result_path)
            except OSError as e:
                return RemoteTaskError(f"result of task {t.id} could not be read: {e}")
        if c.python_error:
            t.remote_traceback = c.python_error
            exc: Any = None
            if blob:
                try:
                    exc = cloudpickle.loads(blob)
                except Exception:
                    exc = None
            if not isinstance(exc, BaseException):
                exc = RemoteTaskError(c.python_error.strip().splitlines()[-1] if c.python_error
                                      else "the task failed")
            exc.remote_traceback = c.python_error  # type: ignore[attr-defined]
            exc.add_note("Remote traceback (on worker " + c.worker_id + "):\n" + c.python_error)
            return exc
        if blob is None:
            if c.result != TaskResult.SUCCESS:
                return RemoteTaskError(f"task {t.id} ended with result '{TaskResult(c.result)}'"
                                       + (f": {c.message}" if c.message else ""))
            return None
        try:
            return cloudpickle.loads(blob)
        except Exception as e:
            return RemoteTaskError(f"the result of task {t.id} could not be unpickled: {e}")

    def wait(self, timeout: float | None = 5) -> Task | None:
        """The next finished task, waiting up to ``timeout`` seconds (None: forever).

        Returns None at once when no submitted task is left to return. Raises the
        ``ManagerError`` if the manager's core failed.
        """
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + float(timeout)
        with self._cond:
            while not self._done:
                if self._error is not None:
                    raise self._error
                if not self._tasks:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            t = self._done.popleft()
            # handed back: like TaskVine, forget it, so that its files can be released
            # (and temps pruned) with it
            self._tasks.pop(t.id, None)
        self._post(TaskCollected(now=time.monotonic(), task_id=t.id))
        return t

    def empty(self) -> bool:
        """True when every submitted task has been returned by ``wait()`` (cancelled ones
        included: they come back with result "cancelled")."""
        with self._cond:
            if self._error is not None:
                raise self._error
            return not self._tasks

    def hungry(self) -> int:
        """How many more tasks the manager would like now (0 when it has enough waiting);
        TaskVine's ``hungry``, usable as a bool."""
        return int(self._ask(self._state.hungry))

    def cancel_by_task_id(self, task_id: int) -> bool:
        """Cancel a task; it comes back from ``wait()`` with result "cancelled"."""
        with self._cond:
            t = self._tasks.get(task_id)
        if t is None or t._done:
            return False
        self._post(TaskCancelled(now=time.monotonic(), task_id=task_id))
        return True

    def cancel_by_task_tag(self, tag: str) -> int:
        """Cancel every unfinished task with this tag; returns how many."""
        n = 0
        with self._cond:
            tasks = list(self._tasks.values())
        for t in tasks:
            if t.tag == tag and not t._done and self.cancel_by_task_id(t.id):
                n += 1
        return n

    # ------------------------------------------------------------------ tuning & stats
    def tune(self, name: str, value: Any) -> None:
        """Set a parameter; an unknown name or a bad value raises ValueError (checked here,
        in the caller's thread; the change itself is an event on the loop)."""
        Tunables().set(name, value)
        self._post(Tuned(now=time.monotonic(), name=name, value=value))

    def disable_peer_transfers(self) -> None:
        """Move every file through the manager (the comparison baseline)."""
        self.tune("peer-transfers", False)

    def enable_peer_transfers(self) -> None:
        """Let workers fetch files from each other (the default)."""
        self.tune("peer-transfers", True)

    @property
    def stats(self) -> ManagerStats:
        """A snapshot of the manager's counters."""
        def snap() -> ManagerStats:
            st = self._state.stats.copy()
            st.bytes_control_in = self._server.bytes_in
            st.bytes_control_out = self._server.bytes_out
            return st
        return self._ask(snap)  # type: ignore[no-any-return]

    def worker_stats(self) -> list[dict[str, Any]]:
        """One row per connected worker: resources, running tasks, bytes in and out."""
        def rows() -> list[dict[str, Any]]:
            out = []
            for w in self._state.workers.values():
                out.append({
                    "worker_id": w.worker_id, "host": w.host, "hostname": w.hostname,
                    "cores": w.total.cores, "memory": w.total.memory, "disk": w.total.disk,
                    "gpus": w.total.gpus, "running": len(w.running), "tasks_done": w.tasks_done,
                    "bytes_in": w.bytes_in, "bytes_out": w.bytes_out, "disk_used": w.disk_used,
                    "files": len(self._state.replicas.files_on(w.worker_id)),
                    "draining": w.draining,
                })
            return out
        return self._ask(rows)  # type: ignore[no-any-return]

    def status(self, what: str = "workers") -> list[dict[str, Any]]:
        """TaskVine's ``status``: "workers" (see ``worker_stats``) or "tasks" (every task
        the core holds: state, worker, attempt, and why it waits when it cannot run)."""
        if what == "workers":
            return self.worker_stats()
        if what == "tasks":
            def rows() -> list[dict[str, Any]]:
                return [{"task_id": tid, "state": t.state.value, "worker": t.worker or "",
                         "attempt": t.attempt, "category": t.spec.category,
                         "recovery": t.run.recovery, "message": t.message}
                        for tid, t in self._state.tasks.items()]
            return self._ask(rows)  # type: ignore[no-any-return]
        raise ValueError(f"unknown status {what!r}; use 'workers' or 'tasks'")

    def hoist_modules(self, *modules: str) -> None:
        """Have every worker's warm interpreter import these modules (TaskVine's hoisting)."""
        self._post(HoistRequested(now=time.monotonic(), modules=list(modules)))

    @property
    def workers_connected(self) -> int:
        return int(self._ask(lambda: len(self._state.workers)))
