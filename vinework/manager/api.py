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

The Manager is made of parts (``base.py`` explains): files (``declare.py``),
controls (``control.py``), information (``info.py``); this module holds the
constructor, submitting, waiting and cancelling.
"""

from __future__ import annotations

import collections
import functools
import gc
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from .._later import not_yet
from ..constants import VINE_DEFAULT_PORT, VINE_TASK_DONE, VINE_TASK_INITIAL, TaskResult
from ..constants import result_string as _result_string
from ..core import ManagerState, TaskCancelled, TaskCollected, TaskReturned, TaskSpec, TaskSubmitted
from ..core.tunables import Tunables
from ..file import FileKind
from ..observe.dashboard import Dashboard
from ..observe.metrics import MetricsServer
from ..observe.progress import ProgressDisplay
from ..observe.status import status_json
from ..serverless import FunctionCall, LibraryTask
from ..task import PythonTask, RemoteTaskError, Task, environment_command
from ..tlsconf import manager_tls
from ..txnlog import TxnLog
from .control import ControlMethods
from .declare import FileMethods
from .info import InfoMethods
from .libraries import LibraryMethods
from .localfiles import InputMissing, LocalFiles
from .rundir import RunInfo
from .server import ManagerServer

log = logging.getLogger("vinework.manager")

WAIT_FOREVER_NAMES = ("wait_forever", "forever")


def _ports(port: int | tuple[int, int] | list[int]) -> int | tuple[int, int]:
    """TaskVine's port forms: an int (0 = any; with TCP_LOW_PORT/TCP_HIGH_PORT set, any
    in that range), or a (low, high) tuple or list, which also sets those variables."""
    if isinstance(port, tuple | list):
        if len(port) != 2:
            raise ValueError(f"a port range is (low, high), got {port!r}")
        lo, hi = int(port[0]), int(port[1])
        os.environ["TCP_LOW_PORT"], os.environ["TCP_HIGH_PORT"] = str(lo), str(hi)
        return lo, hi
    p = int(port)
    if p == 0 and os.environ.get("TCP_LOW_PORT") and os.environ.get("TCP_HIGH_PORT"):
        return int(os.environ["TCP_LOW_PORT"]), int(os.environ["TCP_HIGH_PORT"])
    return p


def _tune_gc() -> None:
    """Make the garbage collector's first generation larger (700 -> 10,000 allocations),
    unless the program already changed it. The manager makes a few dozen objects per task
    and keeps a record of every task it holds: with the default, a collection ran every
    few tasks and the full ones walked every record (measured with 10,000 FunctionCalls in
    flight: about 30 us per call, a quarter of the manager's time; 6 us after)."""
    if gc.get_threshold()[0] == 700:
        gc.set_threshold(10_000, 10, 10)


def _timeout(timeout: Any) -> float | None:
    """TaskVine's wait timeouts: "wait_forever", -1 (or None) wait forever; 0 polls; any
    other negative number means 5 s; seconds may be fractional."""
    if timeout is None or (isinstance(timeout, str) and timeout in WAIT_FOREVER_NAMES):
        return None
    t = float(timeout)
    if t == -1:
        return None
    return 5.0 if t < 0 else t


class Manager(FileMethods, ControlMethods, InfoMethods, LibraryMethods):
    """Schedules tasks on connected workers; TaskVine's ``Manager``.

    Args:
        port: 9123 by default; 0 picks any free port; a (low, high) tuple or list picks
            the first free port in that range.
        name: a project name, shown in logs and status (no catalog is contacted).
        shutdown: tell the workers to exit when the manager closes. False by default, as
            TaskVine: workers wait for the next manager on the same address and keep
            the files cached at the "worker" and "forever" levels.
        run_info_path: where per-run directories go (see ``rundir.py``).
        run_info_template: the run directory's name instead of the time stamp.
        staging_path: where ``vine-staging`` (buffers, fetched files) goes (default: in
            this run's directory).
        ssl: TLS for worker connections and peer transfers: True (a throwaway key and
            certificate for this run) or (key_file, cert_file); workers need ``--ssl``
            (and ``--ssl-ca FILE`` to verify the manager). See ``tlsconf.py``.
        init_fn: called with the manager once it is ready.
        status_display_interval: the Jupyter status widget's period (not supported: logged).
        prometheus_port: serve Prometheus metrics (``observe/metrics.py``) on this port
            (0: any free port; the bound one is ``m.prometheus_port``).
        prometheus_host: the address the metrics listen on (loopback unless told).
        dashboard: serve a live web page (``observe/dashboard.py``) on this port (0: any
            free port; the bound one is ``m.dashboard_port``, the address ``m.dashboard_url``).
        dashboard_host: the address the dashboard listens on (loopback unless told).
        progress: draw a progress display inside ``wait()`` when stdout is a terminal
            (``observe/progress.py``; also ``m.enable_progress()``).
    """

    def __init__(
        self,
        port: int | tuple[int, int] | list[int] = VINE_DEFAULT_PORT,
        name: str | None = None,
        shutdown: bool = False,
        run_info_path: str = "vine-run-info",
        run_info_template: str | None = None,
        staging_path: str | None = None,
        ssl: Any = None,
        init_fn: Callable[[Manager], Any] | None = None,
        status_display_interval: float | None = None,
        prometheus_port: int | None = None,
        prometheus_host: str = "127.0.0.1",
        progress: bool = False,
        dashboard: int | None = None,
        dashboard_host: str = "127.0.0.1",
    ) -> None:
        self._closed = True  # until the end of __init__ (close() then has nothing to do)
        self._metrics: MetricsServer | None = None
        self._dashboard: Dashboard | None = None
        self._progress: ProgressDisplay | None = None
        listen = _ports(port)
        _tune_gc()
        self._once: set[str] = set()
        self._run = RunInfo(run_info_path, run_info_template, staging_path)
        tls = None if ssl in (None, False, (None, None)) else \
            manager_tls(ssl, os.path.join(self._run.runtime, "tls"))
        self._run.start_debug_log()
        self.run_dir = self._run.runtime
        self.staging_dir = self._run.staging
        self.txn_path = self._run.transactions
        self.name = name
        self.shutdown = bool(shutdown)
        self._properties: dict[str, str] = {}
        self._tuned: dict[str, Any] = {}
        self._category_modes: dict[str, int] = {}
        self._monitoring = False
        self._started = time.time()
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
        self._fetches = {}
        self._next_fetch = 1
        self._declared: set[str] = set()
        self._holds_lock = threading.Lock()
        # tags of the DaskVine runs under way: their tasks come back only to the run
        # (wait_for_tag), never to a plain wait() of the user's (another thread's)
        self._private_tags: frozenset[str] = frozenset()
        self._buffer_holds: dict[str, int] = {}
        self._error = None
        self._task_cache: Any = None
        self._cache_keys: dict[int, str] = {}
        self._local: set[int] = set()  # ids finished without the core (not to collect)
        self._cancelled: set[int] = set()  # ids asked to cancel, not yet returned
        self._local_counts = [0, 0]
        self.notices: list[str] = []  # hints the manager gave (explained waits)
        # names, writers and lifetimes of local files and buffers (localfiles.py)
        self._files = LocalFiles(self._run.staging, self._run.cache, self._declare_spec,
                                 self._release)
        self._server = ManagerServer(
            self._state, listen, self._txn, self._file_at_manager, self._on_task_returned,
            self._on_fetch_done, self._on_error, self._on_notice, name=self.name or "",
            tls=tls,
        )
        self._server.status_source = functools.partial(status_json, self)  # vinework status
        self._init_libraries()
        self._closed = False
        if prometheus_port is not None:
            try:
                self._metrics = MetricsServer(self, prometheus_port, prometheus_host)
            except BaseException:
                self.close()
                raise
        self.prometheus_port: int | None = self._metrics.port if self._metrics else None
        if dashboard is not None:
            try:
                self._dashboard = Dashboard(self, dashboard, dashboard_host)
            except BaseException:
                self.close()
                raise
        self.dashboard_port: int | None = self._dashboard.port if self._dashboard else None
        self.dashboard_url: str | None = self._dashboard.url if self._dashboard else None
        if progress:
            self.enable_progress()
        if status_display_interval is not None:
            self._say_once("display", "status_display_interval: vinework has no Jupyter "
                           "status display (use m.status() or m.stats)")
        if init_fn is not None:
            init_fn(self)

    # ------------------------------------------------------------------ basics
    @property
    def hostname(self) -> str:
        """The name of the machine the manager runs on."""
        import socket
        return socket.gethostname()

    @property
    def addrport(self) -> str:
        """``host:port`` workers connect to."""
        return f"{self.hostname}:{self.port}"

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
        """Stop the loop thread and flush the log; with ``shutdown=True`` tell the workers to
        exit first (otherwise they wait for the next manager)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if getattr(self, "_progress", None) is not None:
            self._progress.stop()  # type: ignore[union-attr]
        if getattr(self, "_metrics", None) is not None:
            self._metrics.close()  # type: ignore[union-attr]
        if getattr(self, "_dashboard", None) is not None:
            self._dashboard.close()  # type: ignore[union-attr]
        self._close_libraries()  # (their logs come back before the connections close)
        self._server.close(shutdown=self.shutdown)
        self._txn.write("MANAGER", ("END", self.name or "-"))
        self._txn.close()
        self._run.close()

    # ------------------------------------------------------------------ tasks
    def task_state(self, task_id: int) -> int:
        """TaskVine's state of a task (``VINE_TASK_*``: INITIAL 0, READY 1, RUNNING 2,
        WAITING_RETRIEVAL 3, RETRIEVED 4, DONE 5); UNKNOWN (-1) for an id never submitted."""
        with self._cond:
            t = self._tasks.get(task_id)
            returned = task_id < self._next_id and t is None
            finished = t is not None and t._done
        if returned:
            return VINE_TASK_DONE  # wait() returned it (the core may have forgotten it)
        v = self._ask(lambda: self._state.task_state(task_id))
        if v is None:  # submitted, not yet seen by the loop; done locally; never submitted
            if finished:
                return 4  # RETRIEVED: finished (e.g. a missing input), not yet returned
            return VINE_TASK_INITIAL if t is not None else -1
        return int(v)

    def submit(self, t: Task) -> int:
        """Queue a task; returns its id. A task whose local input file is missing comes back
        from ``wait()`` with result "input missing" (as TaskVine), without running."""
        if self._closed:
            raise RuntimeError("the manager is closed")
        if self._error is not None:
            raise self._error
        if t.id and self._tasks.get(t.id) is t:
            raise ValueError(f"task {t.id} is already submitted")
        if isinstance(t, LibraryTask):
            raise TypeError("a LibraryTask is installed (m.install_library), not submitted")
        t._manager = self
        t.submit_finalize()
        missing = ""
        for f, remote in t.inputs:
            if f.kind is FileKind.LOCAL:
                missing = self._files.check_input(f, remote)
                if missing:
                    break
        with self._cond:
            t.id = self._next_id
            self._next_id += 1
        t._reset_results()
        t._submit_time = time.time()
        self._files.track_lifetimes(t.id, [f for f, _ in t.inputs + t.outputs])
        if missing:
            self._finish_locally(t, TaskResult.INPUT_MISSING, -1, missing)
            return t.id
        if self._task_cache is not None:
            key = self._task_cache.key(t)
            if key is not None:
                if self._task_cache.restore(t, key):
                    t.cached = True
                    self._finish_locally(t, 0, 0, "", keep=True)
                    return t.id
                self._cache_keys[t.id] = key
        inputs = []
        for f, remote in t.inputs:
            if f.kind is FileKind.LOCAL or f.kind is FileKind.BUFFER:
                try:
                    name = self._files.input_name(f, t.id)
                except InputMissing as e:
                    self._finish_locally(t, TaskResult.INPUT_MISSING, -1, f"{e} (as {remote!r})")
                    return t.id
                f._manager = self
                if name not in self._declared:  # a buffer made by hand, not declared, or
                    if f.kind is FileKind.BUFFER and f._data is not None \
                            and name == f.cache_name:  # one undeclared since: staged again
                        self._stage_buffer(f, f._data)
                    else:
                        self._declare(f)
            elif f.cache_name not in self._declared:
                self._declare(f)
            inputs.append((f.cache_name, remote))
        outputs = []
        for f, remote in t.outputs:
            if f.kind is FileKind.LOCAL or f.kind is FileKind.BUFFER:
                f._manager = self
                outputs.append((self._files.output_name(f, t.id), remote))
                continue
            if f.cache_name not in self._declared:
                self._declare(f)
            outputs.append((f.cache_name, remote))
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
        if t.env:
            env = sorted((k, v) for k, v in t.env.items() if v is not None)
            unset = sorted(k for k, v in t.env.items() if v is None)
        else:
            env, unset = [], []
        mono = time.monotonic() - time.time() if t.time_end or t.time_start else 0.0
        spec = TaskSpec(
            task_id=t.id, command=environment_command(t.command, t.environments),
            inputs=inputs, outputs=outputs,
            env=env, env_unset=unset, cores=t.cores, memory=t.memory, disk=t.disk,
            gpus=t.gpus, priority=t.priority, retries=t.retries_max,
            max_forsaken=t.max_forsaken, time_max=t.time_max, time_end=t.time_end,
            end_by=t.time_end + mono if t.time_end else 0.0,
            start_after=t.time_start + mono if t.time_start else 0.0,
            features=tuple(t.features), scheduler=t.scheduler, tag=t.tag,
            category=t.category, python_payload=payload, python_output=py_out,
            temp_output=temp, python_mode=getattr(t, "exec_mode", ""),
            mount_flags=tuple(sorted(t.mount_flags.items())),
            library=getattr(t, "library_name", "") if isinstance(t, FunctionCall) else "",
            function=t.fn_name if isinstance(t, FunctionCall) else "",
        )
        with self._cond:
            self._tasks[t.id] = t
        self._post(TaskSubmitted(now=time.monotonic(), spec=spec))
        return t.id

    def _finish_locally(self, t: Task, result: int, exit_code: int, message: str,
                        keep: bool = False) -> None:
        """A task settled without the core (missing input, a task-cache hit): ``wait()``
        returns it like any other."""
        if not keep:
            t.result = _result_string(result)
            t.exit_code = exit_code
            t.error_message = message
            if isinstance(t, PythonTask):
                t._output = t._no_result(message)
        self._local.add(t.id)
        if not keep:  # a missing input: TaskVine counts it; a tasks-cache hit it does not
            self._local_counts[0] += 1
            self._local_counts[1] += 1
        now = time.time()
        t._times = (now, 0.0, 0.0, now)
        t._done = True
        with self._cond:
            self._tasks[t.id] = t
            self._done.append(t)
            self._cond.notify_all()

    def _on_task_returned(self, c: TaskReturned) -> None:
        with self._cond:
            t = self._tasks.get(c.task_id)
        if t is None:
            return
        t.result = _result_string(c.result)
        t.exit_code = c.exit_code
        t.std_output = c.output
        t._stdout_path = c.stdout_path  # type: ignore[attr-defined]
        t.worker = c.worker_id
        t.hostname = c.hostname
        t.start_time, t.end_time = c.start, c.end
        t.wall_time = max(0.0, c.end - c.start)
        t.retries = c.attempts - 1
        t.error_message = c.message
        t._story = c.story
        self._fill_resources(t, c)
        if isinstance(t, PythonTask):  # unpickled when the user reads it, in its thread
            t._output_later(functools.partial(self._python_output, t, c))
            if c.python_error:
                t.remote_traceback = c.python_error
        t._done = True
        with self._cond:
            self._done.append(t)
            self._cond.notify_all()

    def _fill_resources(self, t: Task, c: TaskReturned) -> None:
        """What ``resources_measured``, ``resources_allocated``, ``limits_exceeded`` and the
        task metrics are made from (on demand)."""
        t._raw = (c.measured, c.allocated, c.start, c.end)
        t._times = (t._submit_time, c.start, c.end, time.time())

    def _python_output(self, t: PythonTask, c: TaskReturned) -> Any:
        blob = c.python_result
        if c.python_result_path:
            try:
                with open(c.python_result_path, "rb") as f:
                    blob = f.read()
                os.unlink(c.python_result_path)
            except OSError as e:
                return t._no_result(f"result of task {t.id} could not be read: {e}")
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
                return t._no_result(f"task {t.id} ended with result "
                                          f"'{_result_string(c.result)}'"
                                          + (f": {c.message}" if c.message else ""))
            return None
        if not t.serialize_output:
            return blob  # the function's own bytes
        try:
            return cloudpickle.loads(blob)
        except Exception as e:
            return t._no_result(f"the result of task {t.id} could not be unpickled: {e}")

    # ------------------------------------------------------------------ waiting
    def wait(self, timeout: Any = "wait_forever") -> Task | None:
        """The next finished task, waiting up to ``timeout`` seconds ("wait_forever" or -1:
        forever, the default; 0: just look). Returns None on timeout, or at once when no
        submitted task is left to return. Raises the ``ManagerError`` if the core failed."""
        if self._progress is not None and self._progress.active:
            return self._progress.wait(lambda s: self._wait_for(None, s), _timeout(timeout))
        return self._wait_for(None, timeout)

    def enable_progress(self, console: Any = None) -> bool:
        """Draw a progress display (tasks done, failed, running, waiting; bytes moved)
        inside ``wait()``; ``console``: a rich Console (default: stdout). Off when that
        is not a terminal; returns whether it is on."""
        from ..observe.progress import ProgressDisplay
        if self._progress is not None:
            self._progress.stop()
        self._progress = ProgressDisplay(self, console)
        return self._progress.active

    def disable_progress(self) -> None:
        """Stop drawing the progress display."""
        if self._progress is not None:
            self._progress.stop()
        self._progress = None

    def _not_private(self, t: Task) -> bool:
        return t.tag not in self._private_tags

    def _users_tasks_left(self) -> bool:
        """Whether a task not of a DaskVine run under way is unreturned (under _cond):
        a plain ``wait()`` and ``empty()`` see only those."""
        if not self._private_tags:
            return bool(self._tasks)
        return any(t.tag not in self._private_tags for t in self._tasks.values())

    def _keep_private(self, tag: str, private: bool = True) -> None:
        """Tasks with ``tag`` are (or, with False, no longer are) a DaskVine run's own."""
        with self._cond:
            self._private_tags = (self._private_tags | {tag}) if private \
                else (self._private_tags - {tag})

    def wait_for_tag(self, tag: str, timeout: Any = "wait_forever") -> Task | None:
        """The next finished task with this tag (others stay for later waits)."""
        return self._wait_for(lambda t: t.tag == tag, timeout)

    def wait_for_task_id(self, task_id: int, timeout: Any = "wait_forever") -> Task | None:
        """That task, once finished (others stay for later waits)."""
        return self._wait_for(lambda t: t.id == task_id, timeout)

    def _wait_for(self, match: Callable[[Task], bool] | None, timeout: Any) -> Task | None:
        limit = _timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        with self._cond:
            while True:
                # a plain wait takes no task of a DaskVine run under way
                t = self._take(self._not_private if match is None and self._private_tags
                               else match)
                if t is not None:
                    break
                if self._error is not None:
                    raise self._error
                if not (self._users_tasks_left() if match is None
                        else any(match(x) for x in self._tasks.values())):
                    return None  # nothing it could return is left
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            # handed back: like TaskVine, forget it, so that its files can be released
            # (and temps pruned) with it
            self._tasks.pop(t.id, None)
            self._cancelled.discard(t.id)
        self._hand_over(t)
        return t

    def _take(self, match: Callable[[Task], bool] | None) -> Task | None:
        done = self._done
        if not done:
            return None
        if match is None:
            return done.popleft()
        for i, t in enumerate(done):
            if match(t):
                del done[i]
                return t
        return None

    def _hand_over(self, t: Task) -> None:
        """The last steps before the user gets a finished task (in the user's thread)."""
        path = getattr(t, "_stdout_path", "")
        if path:
            try:
                with open(path, errors="replace") as f:
                    t.std_output = f.read()
                os.unlink(path)
            except OSError as e:
                t.error_message = f"the task's stdout could not be read: {e}"
            t._stdout_path = ""  # type: ignore[attr-defined]
        # what it wrote into local files and buffers; unlink_when_done files it held
        self._files.handed_over(t.id, [f for f, _ in t.outputs])
        key = self._cache_keys.pop(t.id, None)
        if key is not None and self._task_cache is not None and t.successful():
            try:
                self._task_cache.store(t, key)
            except Exception as e:  # the cache must never break a run
                log.warning("tasks cache: could not store task %d: %s", t.id, e)
        if t.monitor_output:
            try:
                os.makedirs(t.monitor_output, exist_ok=True)
                with open(os.path.join(t.monitor_output, f"vine-task-{t.id}.summary"), "w") as f:
                    json.dump(t.resources_measured.to_dict(), f)
            except OSError as e:
                log.warning("monitor output of task %d: %s", t.id, e)
        if t.id in self._local:
            self._local.discard(t.id)
        else:
            self._post_quiet(TaskCollected(now=time.monotonic(), task_id=t.id))

    def empty(self) -> bool:
        """True when every submitted task has been returned by ``wait()`` (cancelled ones
        included: they come back with result "cancelled"). A DaskVine run's own tasks,
        in flight in another thread, are not counted: they are the run's to collect."""
        with self._cond:
            if self._error is not None:
                raise self._error
            return not self._users_tasks_left()

    def hungry(self) -> int:
        """How many more tasks the manager would like now (0 when it has enough waiting);
        TaskVine's count, from ``hungry-minimum`` and ``hungry-minimum-factor``."""
        return int(self._ask(self._state.hungry))

    # ------------------------------------------------------------------ cancelling
    def cancel_by_task_id(self, task_id: int) -> bool:
        """Cancel a task; it comes back from ``wait()`` with result "cancelled"."""
        with self._cond:
            t = self._tasks.get(task_id)
            if t is None or t._done or task_id in self._cancelled:
                return False
            self._cancelled.add(task_id)
        self._post(TaskCancelled(now=time.monotonic(), task_id=task_id))
        return True

    def _cancel_where(self, match: Callable[[Task], bool], limit: int = 0) -> int:
        with self._cond:
            tasks = [t for t in self._tasks.values() if not t._done and match(t)
                     and t.id not in self._cancelled]
        n = 0
        for t in sorted(tasks, key=lambda x: x.id):
            if limit and n >= limit:
                break
            if self.cancel_by_task_id(t.id):
                n += 1
        return n

    def cancel_by_task_tag(self, tag: str) -> int:
        """Cancel one unfinished task with this tag (TaskVine's rule: call it until it
        returns 0); returns 1, or 0 if there was none."""
        return self._cancel_where(lambda t: t.tag == tag, limit=1)

    def cancel_all_by_tag(self, tag: str) -> int:
        """Cancel every unfinished task with this tag; returns how many."""
        return self._cancel_where(lambda t: t.tag == tag)

    def cancel_by_category(self, category: str) -> int:
        """Cancel every unfinished task of this category; returns how many."""
        return self._cancel_where(lambda t: t.category == category)

    def cancel_all(self) -> int:
        """Cancel every unfinished task; returns how many."""
        return self._cancel_where(lambda t: True)

    # ------------------------------------------------------------------ task results cache
    def enable_tasks_cache(self, cache_dir: str = "vine-cache-outputs",
                           log_file: str = "vine-cache.txlog") -> None:
        """Reuse results across runs: a task identical to one that already succeeded (same
        command or function and arguments, same inputs) is not run again; its outputs are
        restored and it comes back with ``t.cached`` True."""
        from .taskcache import TaskCache
        self._task_cache = TaskCache(cache_dir, log_file)

    # ------------------------------------------------------------------ higher-order helpers
    def map(self, fn: Callable[[Any], Any], seq: Iterable[Any], chunksize: int = 1) -> list[Any]:
        """``[fn(x) for x in seq]`` computed by PythonTasks, ``chunksize`` items each."""
        from .mapping import map_tasks
        return map_tasks(self, fn, seq, chunksize)

    def pair(self, fn: Callable[[Any], Any], seq1: Iterable[Any], seq2: Iterable[Any],
             chunksize: int = 1, env: Any = None) -> list[Any]:
        """``[fn((a, b)) for a in seq1 for b in seq2]`` computed by PythonTasks."""
        from .mapping import pair_tasks
        return pair_tasks(self, fn, seq1, seq2, chunksize, env)

    def tree_reduce(self, fn: Callable[[list[Any]], Any], seq: Iterable[Any],
                    chunksize: int = 2) -> Any:
        """Reduce ``seq`` with ``fn`` (which takes a list of up to ``chunksize`` values)
        in a tree of PythonTasks."""
        from .mapping import tree_reduce_tasks
        return tree_reduce_tasks(self, fn, seq, chunksize)

    # (remote_map, remote_pair, remote_tree_reduce and the libraries: libraries.py)
    def undeclare_function(self, fn: Any) -> None:
        not_yet("undeclare_function (serverless libraries)")
