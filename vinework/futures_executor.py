"""``FuturesExecutor``: TaskVine's ``concurrent.futures`` executor over a vinework Manager.

Theory of operation. ``submit`` turns a call into a ``FuturePythonTask`` (temp
output: the value stays on the worker) and submits it to the manager; its
``VineFuture`` is recorded as pending under the task id. One driver thread
per executor waits on the manager for this executor's tasks and settles each
future exactly once when its task comes back:

* success: the future finishes with a placeholder; the value is fetched from
  the worker by the first ``result()``, or, for a future no task takes as an
  argument, brought back at once in the background by a gather task that
  collects many values (``futures_gather.py``);
* the function raised: the future raises that exception (it travels inline);
* cancelled: the future is already cancelled (``VineFuture.cancel`` did it);
* any other end (lost input, time limit, killed...): the exception of the
  failed future it depended on (cancelled, if that one was cancelled), or
  ``PythonTaskNoResult`` saying what happened;
* the manager fails or is closed: every pending future gets that error, so no
  ``result()`` is left waiting.

Futures passed as arguments become temp inputs of the later task (see
``futures_args.py``); a later task whose argument already failed is not
submitted at all and fails with the same exception.

The executor owns what it made: with ``manager=None`` it makes a Manager, with
``factory=True`` a local Factory, and ``shutdown()`` stops both; a Manager
given to it is left open.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ._later import not_yet
from .constants import VINE_DEFAULT_PORT, TaskResult
from .factory import Factory
from .futures_future import (
    UNFETCHED,
    FutureFunctionCall,
    FuturePythonTask,
    VineFuture,
    future_deps,
)
from .futures_gather import Gatherer
from .manager.api import Manager
from .task import PythonTaskNoResult, Task

log = logging.getLogger("vinework.futures")

__all__ = ["FuturesExecutor", "TASKVINE_FACTORY_OPTIONS"]

# TaskVine's vine_factory options (hyphenated; attributes use "_" for "-")
TASKVINE_FACTORY_OPTIONS = frozenset((
    "amazon-config autosize batch-options batch-type capacity catalog condor-requirements "
    "config-file cores debug debug-file debug-file-size disk env extra-options "
    "factory-timeout foremen-name gpus k8s-image k8s-worker-image max-workers manager-name "
    "memory mesos-master mesos-path mesos-preload min-workers password python-env "
    "python-package run-factory-as-manager runos scratch-dir ssl tasks-per-worker timeout "
    "worker-binary workers-per-cycle wrapper wrapper-input").split())

DEFAULT_MIN_WORKERS = 5  # TaskVine's executor asks its factory for 5 workers
_POLL = 0.25  # seconds the driver waits on the manager before looking at its own state
_SCAN_EVERY = 0.5  # seconds between looks for tasks someone else's wait() took


# ---------------------------------------------------------------------- worker-side helpers
def _map_chunk(fn: Callable[[Any], Any], *items: Any) -> list[Any]:
    """One map task: ``fn`` over its chunk."""
    return [fn(x) for x in items]


def _concat(*parts: list[Any]) -> list[Any]:
    """The gathering task of ``map``: the chunks' results, in order."""
    out: list[Any] = []
    for p in parts:
        out.extend(p)
    return out


def _reduce_chunk(fn: Callable[[list[Any]], Any], arity: int, *values: Any) -> Any:
    """One reduce task: ``fn`` on lists of up to ``arity`` values, until one is left."""
    entries = list(values)
    while len(entries) > 1:
        entries = [fn(entries[i:i + arity]) for i in range(0, len(entries), arity)]
    return entries[0]


def _pairs_chunk(fn: Callable[[Any, Any], Any], *pairs: tuple[Any, Any]) -> list[Any]:
    """One allpairs task: ``fn(a, b)`` for each pair of its chunk."""
    return [fn(a, b) for a, b in pairs]


def _rows(ncols: int, *parts: list[Any]) -> list[list[Any]]:
    """The gathering task of ``allpairs``: the flat results cut into rows."""
    flat = _concat(*parts)
    return [flat[i:i + ncols] for i in range(0, len(flat), ncols)] if ncols else []


_HELPERS = (_map_chunk, _concat, _reduce_chunk, _pairs_chunk, _rows)


def _positive(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


class FuturesExecutor(cf.Executor):
    """Runs Python calls as vinework tasks and returns ``VineFuture``s (TaskVine's
    ``FuturesExecutor``).

    Args:
        port: the port of the Manager the executor makes (9123; 0 for any free port).
        batch_type: where the factory starts workers ("local").
        manager: use this Manager instead of making one (it is not closed by
            ``shutdown``; do not call its ``wait()`` for the executor's tasks).
        manager_host_port: with ``factory=True``, the address the factory's workers
            connect to instead of the executor's manager.
        manager_name: the name of the Manager the executor makes.
        factory_binary, worker_binary: not supported (vinework's local factory runs
            ``python -m vinework worker``); must be None.
        log_file: where the factory's workers write their output.
        factory: start a Factory for the manager (TaskVine's default: True).
        opts: Factory options by TaskVine's names, e.g. ``{"min-workers": 2, "cores": 4}``;
            the factory starts with ``min-workers`` 5 unless told otherwise. With
            ``"password": FILE`` (and ``"ssl": True``) the executor's own manager asks for
            that password (speaks TLS) and the factory's workers use it. A name the
            Factory does not know raises ``AttributeError`` (a TaskVine factory option
            vinework does not have yet: ``NotImplementedError``).
        prefetch: bring back, in the background and many per task, the value of each
            finished future that no task takes as an argument (``futures_gather.py``;
            vinework's addition; default True).
    """

    def __init__(self, port: int | tuple[int, int] | list[int] = VINE_DEFAULT_PORT,
                 batch_type: str = "local", manager: Manager | None = None,
                 manager_host_port: str | None = None, manager_name: str | None = None,
                 factory_binary: str | None = None, worker_binary: str | None = None,
                 log_file: str | None = os.devnull, factory: bool = True,
                 opts: dict[str, Any] | None = None, prefetch: bool = True) -> None:
        if factory_binary is not None or worker_binary is not None:
            not_yet("factory_binary/worker_binary (the local factory runs "
                    "'python -m vinework worker')")
        if opts and not factory:
            raise ValueError("opts configure the executor's factory, but factory=False "
                             "starts none")
        if manager is not None and not isinstance(manager, Manager):
            raise TypeError(f"manager must be a vinework Manager, got {type(manager).__name__}")
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._pending: dict[int, VineFuture] = {}
        self._live: weakref.WeakSet[VineFuture] = weakref.WeakSet()
        self._shutdown = False
        self._stopping = False
        self._broken: BaseException | None = None
        self._values_gone = False
        self._own_manager = manager is None
        named = {str(k).replace("_", "-"): v for k, v in (opts or {}).items()}
        self.manager: Manager = manager if manager is not None else Manager(
            port=port, name=manager_name, ssl=bool(named.get("ssl")))
        if manager is None and named.get("password"):
            # the factory's workers prove the password file: the manager asks for it too
            try:
                self.manager.set_password_file(str(named["password"]))
            except BaseException:
                self.manager.close()
                raise
        self.port = self.manager.port
        self.manager_name = manager_name
        self.factory: Factory | None = None
        try:
            if factory:
                self.factory = Factory(
                    batch_type=batch_type,
                    manager=None if manager_host_port else self.manager,
                    manager_host_port=manager_host_port, log_file=log_file)
                self.set("min-workers", DEFAULT_MIN_WORKERS)
                for name, value in (opts or {}).items():
                    self.set(name, value)
                self.factory.start()
        except BaseException:
            self.factory = None
            if self._own_manager:
                self.manager.close()
            raise
        self._internal: dict[int, Task] = {}  # gather tasks in flight, by id
        self._libraries: set[str] = set()  # libraries of map/reduce/allpairs helpers
        self._gatherer = Gatherer(self._submit_internal, lambda: bool(self._pending),
                                  self.manager.cancel_by_task_id) if prefetch else None
        self._driver = threading.Thread(target=self._drive, daemon=True,
                                        name=f"vine-futures-{self.port}")
        self._driver.start()

    # ------------------------------------------------------------------ factory options
    def _option(self, name: str) -> str:
        if self.factory is None:
            raise ValueError("this executor has no factory (factory=False)")
        if not isinstance(name, str):
            raise TypeError(f"a factory option is named by a string, got {name!r}")
        hyphen = name.replace("_", "-")
        attr = hyphen.replace("-", "_")
        if hyphen in TASKVINE_FACTORY_OPTIONS and hasattr(self.factory, attr):
            return attr
        known = sorted(o for o in TASKVINE_FACTORY_OPTIONS
                       if hasattr(self.factory, o.replace("-", "_")))
        if hyphen in TASKVINE_FACTORY_OPTIONS:
            raise NotImplementedError(f"factory option {name!r}: vinework's local Factory "
                                      f"does not support it yet (it knows {', '.join(known)})")
        raise AttributeError(f"unknown factory option {name!r}; the Factory knows "
                             f"{', '.join(known)}")

    def set(self, name: str, value: Any) -> None:
        """Set a factory option by TaskVine's name (``"min-workers"``, ``"cores"``, ...)."""
        setattr(self.factory, self._option(name), value)

    def get(self, name: str) -> Any:
        """A factory option's value, by TaskVine's name."""
        return getattr(self.factory, self._option(name))

    # ------------------------------------------------------------------ making tasks
    def future_task(self, fn: Callable[..., Any], *args: Any, **kwargs: Any
                    ) -> FuturePythonTask:
        """A ``FuturePythonTask`` for ``fn(*args, **kwargs)``, to configure and then
        ``submit``."""
        return FuturePythonTask(self, fn, *args, **kwargs)

    def future_funcall(self, library_name: str, fn: str | Callable[..., Any], *args: Any,
                       **kwargs: Any) -> FutureFunctionCall:
        """A ``FutureFunctionCall`` of the function named ``fn`` (a name, or a function,
        by its ``__name__``) of an installed library, to configure and then ``submit``."""
        return FutureFunctionCall(self, library_name, fn, *args, **kwargs)

    def create_library_from_functions(self, name: str, *fns: Callable[..., Any],
                                      **kwargs: Any) -> Any:
        """The manager's ``create_library_from_functions``."""
        return self.manager.create_library_from_functions(name, *fns, **kwargs)

    def install_library(self, libtask: Any) -> None:
        """The manager's ``install_library``."""
        self.manager.install_library(libtask)

    # ------------------------------------------------------------------ submitting
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> VineFuture:
        """Run ``fn(*args, **kwargs)`` on a worker, or submit a task made by
        ``future_task``/``future_funcall``; returns its ``VineFuture``.

        A ``VineFuture`` among the (direct) arguments is replaced, on the worker, by its
        value, which moves there from the worker that computed it.

        Raises:
            RuntimeError: After ``shutdown``, or once the manager failed.
        """
        if isinstance(fn, FuturePythonTask | FutureFunctionCall):
            if args or kwargs:
                raise TypeError("submit(task) takes no other arguments: they belong to "
                                "future_task(fn, *args, **kwargs)")
            if fn._executor is not self:
                raise ValueError("this task was made by another executor")
            return self._submit_task(fn)
        if isinstance(fn, Task):
            raise TypeError(f"submit takes a function or a task from future_task/"
                            f"future_funcall, not a {type(fn).__name__}; submit it to "
                            "executor.manager instead")
        if not callable(fn):
            raise TypeError(f"submit needs a callable, got {fn!r}")
        return self._submit_task(FuturePythonTask(self, fn, *args, **kwargs))

    def _check_open(self) -> None:
        if self._broken is not None:
            raise RuntimeError(f"the executor's manager failed: {self._broken}") \
                from self._broken
        if self._shutdown:
            raise RuntimeError("cannot submit new futures after shutdown")

    def _submit_task(self, t: Any) -> VineFuture:
        fut: VineFuture = t._future
        if fut._is_submitted or fut.done():
            return fut  # (a task is submitted once; a cancelled one never)
        self._check_open()
        deps: list[VineFuture] = t._deps
        for d in deps:
            if d._executor is not self:
                raise ValueError(f"{d!r} belongs to another executor")
            if not d._is_submitted and not d.done():
                self._submit_task(d._task)
        for d in deps:
            failed = self._dep_failure(t, d)
            if failed is not None:  # it cannot run: end it now, as its argument ended
                fut._is_submitted = True
                self._end_with(fut, failed)
                return fut
            if not d._task.temp_output:
                raise ValueError(f"the future of task {d._task.id} brings its value back to "
                                 "the manager (disable_temp_output), so it cannot be passed "
                                 "to a task; pass future.result() instead")
        with self._lock:
            for d in deps:  # (before the task exists: its producers are not gathered now)
                d._consumers += 1
            try:
                self.manager.submit(t)
            except BaseException:
                for d in deps:
                    d._consumers -= 1
                raise
            fut._is_submitted = True
            self._pending[t.id] = fut
            self._live.add(fut)
            self._wakeup.notify()
        return fut

    def _submit_internal(self, t: Task) -> None:
        """Submit a task of the executor's own (a gather task); the driver brings it back."""
        t._executor = self  # type: ignore[attr-defined]
        with self._lock:
            self.manager.submit(t)
            self._internal[t.id] = t
            self._wakeup.notify()

    def _cancel_task(self, fut: VineFuture) -> None:
        """Stop a future's task (``VineFuture.cancel``); it comes back "cancelled"."""
        if fut._task.id:
            try:
                self.manager.cancel_by_task_id(fut._task.id)
            except Exception as e:  # the manager failed or closed: nothing runs anyway
                log.debug("cancel of task %d: %s", fut._task.id, e)

    # ------------------------------------------------------------------ settling
    def _is_ours(self, t: Task) -> bool:
        return getattr(t, "_executor", None) is self

    def _drive(self) -> None:
        """The driver thread: wait for this executor's tasks and settle their futures."""
        m = self.manager
        next_scan = 0.0
        while True:
            with self._lock:
                while not self._pending and not self._internal and not self._stopping:
                    self._wakeup.wait()
                if self._stopping and not self._internal and \
                        all(f.done() for f in self._pending.values()):
                    return
            if getattr(m, "_closed", False):
                self._fail_all(RuntimeError("the manager was closed before the task finished"))
                continue
            started = time.monotonic()
            g = self._gatherer
            try:
                t = m._wait_for(self._is_ours, _POLL if g is None else g.wait_hint(_POLL))
            except BaseException as e:  # the manager's core failed: fail every future
                self._broken = e
                self._fail_all(e)
                continue
            if g is not None:
                g.launch()
                g.check()
            if t is None:
                now = time.monotonic()
                if now - started < 0.01 or now >= next_scan:  # (a fast None: all taken)
                    next_scan = now + _SCAN_EVERY
                    self._settle_taken(pause=now - started < 0.01)
                continue
            with self._lock:
                fut = self._pending.pop(t.id, None)
                own = self._internal.pop(t.id, None) if fut is None else None
            if fut is not None:
                self._settle(fut, t)
            elif own is not None and self._gatherer is not None:
                self._gatherer.finished(t)  # type: ignore[arg-type]

    def _settle_taken(self, pause: bool) -> None:
        """Futures whose finished tasks someone else took from the manager's ``wait()``
        (a shared manager): settle them from the task objects (``pause``: then wait a
        little, the manager having nothing of ours to wait for)."""
        with self._lock:
            taken = [(tid, f) for tid, f in self._pending.items() if f._task._done]
            for tid, _ in taken:
                self._pending.pop(tid, None)
            own = [t for t in self._internal.values() if t._done]
            for t in own:
                self._internal.pop(t.id, None)
        for _, f in taken:
            self._settle(f, f._task)
        if self._gatherer is not None:
            for t in own:
                self._gatherer.finished(t)  # type: ignore[arg-type]
        if pause:
            time.sleep(0.05)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            futs = list(self._pending.values())
            self._pending.clear()
            own = list(self._internal.values())
            self._internal.clear()
        for f in futs:
            f._settle_exception(exc)
        if self._gatherer is not None:
            for t in own:
                self._gatherer.abandon(t)  # type: ignore[arg-type]

    def _settle(self, fut: VineFuture, t: Any) -> None:
        """Settle ``fut`` from its returned task (exactly once: the caller popped it)."""
        if fut.done():
            return  # cancelled by the user
        if t.result == TaskResult.CANCELLED:
            fut._set_cancelled()
            return
        if t.successful():
            if not t.temp_output:
                fut._settle_result(t._output)
            elif fut._settle_result(UNFETCHED) and self._gatherer is not None \
                    and not fut._consumers:
                self._gatherer.add(fut)
            return
        exc: BaseException | None = None
        if t.result == TaskResult.INPUT_MISSING:
            for d in t._deps:
                exc = self._dep_failure(t, d)
                if exc is not None:
                    break
        if exc is None:
            out = t._output
            exc = out if isinstance(out, BaseException) else PythonTaskNoResult(
                f"task {t.id} ended with result '{t.result}' (exit code {t.exit_code})")
        self._end_with(fut, exc)

    @staticmethod
    def _end_with(fut: VineFuture, exc: BaseException) -> None:
        """Fail ``fut`` with ``exc``; a future whose argument was cancelled is cancelled."""
        if isinstance(exc, cf.CancelledError):
            fut._set_cancelled()
        else:
            fut._settle_exception(exc)

    @staticmethod
    def _dep_failure(t: Any, d: VineFuture) -> BaseException | None:
        """The error a task gets because its argument ``d`` failed (None if it did not)."""
        if d.cancelled():
            return cf.CancelledError(f"task {t.id or '(not submitted)'} did not run: its "
                                     f"argument, the future of task {d._task.id}, was "
                                     "cancelled")
        if d.done():
            return d.exception(0)
        return None

    # ------------------------------------------------------------------ higher-order
    def _call(self, library_name: str | None, helper: Callable[..., Any], *args: Any
              ) -> VineFuture:
        """Submit ``helper(*args)``: a PythonTask, or a call in the executor's library
        ``library_name`` (made and installed on first use)."""
        if library_name is None:
            return self.submit(helper, *args)
        self._library(library_name)
        return self.submit(self.future_funcall(library_name, helper.__name__, *args))

    def _library(self, name: str) -> None:
        """Make and install the library of map/reduce/allpairs helpers named ``name``."""
        with self._lock:
            if name in self._libraries:
                return
            if self.manager.check_library_exists(name):
                raise ValueError(f"a library named {name!r} is installed already; map, "
                                 "reduce and allpairs make a library of their own: give "
                                 "them a new name")
            lib = self.manager.create_library_from_functions(name, *_HELPERS)
            lib.set_cores(1)
            self.manager.install_library(lib)
            self._libraries.add(name)

    def map(self, fn: Callable[[Any], Any], iterable: Iterable[Any],  # type: ignore[override]
            library_name: str | None = None, chunk_size: int = 1) -> VineFuture:
        """TaskVine's ``map``: one future of ``[fn(x) for x in iterable]``, computed by
        tasks of ``chunk_size`` items each and gathered on a worker. With
        ``library_name``, the tasks are FunctionCalls of a library of that name that the
        executor makes (``fn`` travels with each call)."""
        size = _positive("chunk_size", chunk_size, 1)
        items = list(iterable)
        parts = [self._call(library_name, _map_chunk, fn, *items[i:i + size])
                 for i in range(0, len(items), size)]
        return self._call(library_name, _concat, *parts)

    def reduce(self, fn: Callable[[list[Any]], Any], iterable: Iterable[Any],
               library_name: str | None = None, chunk_size: int = 2,
               fn_arity: int = 2) -> VineFuture:
        """TaskVine's ``reduce``: one future of the reduction of ``iterable`` by ``fn``,
        which takes a list of up to ``fn_arity`` values (``max``, ``sum``, ...). Each
        task reduces ``max(chunk_size, fn_arity)`` values; the tasks form a tree whose
        partial results stay on the workers. Futures may be among the values.
        ``library_name``: as for ``map``."""
        arity = _positive("fn_arity", fn_arity, 2)
        size = max(arity, _positive("chunk_size", chunk_size, 2))
        level = list(iterable)
        if not level:
            raise ValueError("reduce of an empty iterable")
        while True:
            level = [self._call(library_name, _reduce_chunk, fn, arity, *level[i:i + size])
                     for i in range(0, len(level), size)]
            if len(level) == 1:
                return level[0]

    def allpairs(self, fn: Callable[[Any, Any], Any], iterable_rows: Iterable[Any],
                 iterable_cols: Iterable[Any], library_name: str | None = None,
                 chunk_size: int = 1) -> VineFuture:
        """TaskVine's ``allpairs``: one future of the table ``[[fn(a, b) for b in cols]
        for a in rows]``, computed by tasks of ``chunk_size`` pairs each.
        ``library_name``: as for ``map``."""
        size = _positive("chunk_size", chunk_size, 1)
        rows, cols = list(iterable_rows), list(iterable_cols)
        if future_deps(tuple(rows) + tuple(cols), {}):
            raise ValueError("allpairs takes values, not futures (pass future.result())")
        pairs = [(a, b) for a in rows for b in cols]
        parts = [self._call(library_name, _pairs_chunk, fn, *pairs[i:i + size])
                 for i in range(0, len(pairs), size)]
        return self._call(library_name, _rows, len(cols), *parts)

    # ------------------------------------------------------------------ shutting down
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking futures and clean up: with ``wait`` (the default) first let the
        pending futures finish; with ``cancel_futures``, or without ``wait``, cancel
        them. Values of finished futures no task consumes are brought back before the
        executor's own factory and manager stop, so their ``result()`` works after."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            pending = list(self._pending.values())
        if cancel_futures or not wait:
            for f in pending:
                f.cancel()
        if wait:
            cf.wait(pending)
        if self._own_manager or self.factory is not None:
            if self._gatherer is not None:
                self._gatherer.drain(timeout=60.0)
                self._gatherer.close()
            deadline = time.monotonic() + 60.0
            for f in list(self._live):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if f.done() and not f.cancelled() and not f._consumers and not f.fetched:
                    try:
                        f._fetch(left)
                    except Exception as e:
                        log.debug("value of task %d at shutdown: %s", f._task.id, e)
            self._values_gone = True
        if self._gatherer is not None:
            self._gatherer.close()
        with self._lock:
            self._stopping = True
            self._wakeup.notify_all()
        if self.factory is not None:
            self.factory.stop()
        if self._own_manager:
            self.manager.close()
        self._driver.join(timeout=2 * _POLL + 5)
        self._fail_all(RuntimeError("the executor was shut down before the task finished"))

    def __enter__(self) -> FuturesExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)
