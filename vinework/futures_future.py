"""``VineFuture`` and the tasks behind futures (``FuturePythonTask``, ``FutureFunctionCall``),
and TaskVine's module functions ``wait`` and ``as_completed``.

A ``VineFuture`` is a real ``concurrent.futures.Future``: its state changes go
through the base class (``set_result``, ``set_exception``, ``cancel``), so
``concurrent.futures.wait``/``as_completed``, callbacks and timeouts behave as
the standard library documents. The executor's driver thread settles a future
when its task comes back from the manager (``FuturesExecutor`` in
``futures_executor.py``); nothing here waits on the manager itself.

A future's task keeps its return value on the worker (temp output), so that a
later task can take it as an input without a trip through the manager. The
value is brought back only when someone asks for it: a settled, successful
future holds a placeholder until ``result()`` (or the executor's prefetch of
futures no task consumes, see ``futures_executor.py``) fetches the temp.
Exceptions always come back with the task (they travel inline), so
``exception()`` never fetches.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any, Protocol

import cloudpickle

from .constants import VINE_TASK_RUNNING
from .futures_args import FutureArg, SandboxValue, call_with_futures
from .pickling import function_bytes
from .serverless import FunctionCall, dumps_args
from .task import PythonTask

__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "FutureFunctionCall",
           "FuturePythonTask", "VineFuture", "as_completed", "timeout_seconds", "wait"]

ALL_COMPLETED = cf.ALL_COMPLETED
FIRST_COMPLETED = cf.FIRST_COMPLETED
FIRST_EXCEPTION = cf.FIRST_EXCEPTION


class _Unfetched:
    """The placeholder result of a settled future whose value is still on a worker."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<value on a worker>"


UNFETCHED: Any = _Unfetched()

# seconds a finished future's result() may take to bring its value from a worker, even
# when called with a shorter timeout (result(timeout=0) of a done future gives its value)
FETCH_TIMEOUT_MIN = 60.0


def timeout_seconds(timeout: Any) -> float | None:
    """TaskVine's timeout forms: None, "wait_forever" or -1: forever; else seconds (a
    negative number means do not wait)."""
    if timeout is None or (isinstance(timeout, str) and timeout in ("wait_forever",
                                                                    "forever")):
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"a timeout is a number of seconds, None or 'wait_forever', "
                        f"got {timeout!r}")
    t = float(timeout)
    if t == -1:
        return None
    return max(0.0, t)


class _Executor(Protocol):
    """What a future needs of its executor (``FuturesExecutor``)."""

    manager: Any
    _values_gone: bool

    def _submit_task(self, task: Any) -> VineFuture: ...

    def _cancel_task(self, future: VineFuture) -> None: ...


class VineFuture(cf.Future):  # type: ignore[type-arg]
    """The future value of a task run by a ``FuturesExecutor`` (TaskVine's ``VineFuture``).

    ``result(timeout)``, ``exception(timeout)``, ``done()``, ``running()``,
    ``cancelled()``, ``cancel()`` and ``add_done_callback(fn)`` behave as
    ``concurrent.futures.Future``'s, with two of TaskVine's differences: ``cancel()``
    also stops a task that is already running (its process is killed) and returns True
    for any future not finished yet; timeouts also accept "wait_forever" and -1.
    When the function raised, ``result()`` raises that exception (same type and
    message; its remote traceback is attached as a note and as ``remote_traceback``).
    """

    def __init__(self, task: FuturePythonTask | FutureFunctionCall,
                 executor: _Executor) -> None:
        super().__init__()
        self._task = task
        self._executor = executor
        self._is_submitted = False
        self._consumers = 0  # later tasks that take this future as an argument
        self._fetch_lock = threading.Lock()
        self._gathered: threading.Event | None = None  # set once its gather is over

    # ------------------------------------------------------------------ results
    def result(self, timeout: Any = None) -> Any:
        """The task's return value, waiting up to ``timeout`` seconds for it.

        Raises:
            concurrent.futures.TimeoutError: Not finished within ``timeout``.
            concurrent.futures.CancelledError: The future was cancelled.
            Exception: Whatever the function raised (re-raised here).
            RuntimeError: The value could not be brought back from the workers (the
                manager closed, its worker was lost for good), or the manager failed.
        """
        limit = timeout_seconds(timeout)
        value = super().result(limit)
        if value is UNFETCHED:  # done: bringing the value is not waiting for the task
            value = self._fetch(None if limit is None else max(limit, FETCH_TIMEOUT_MIN))
        return value

    def exception(self, timeout: Any = None) -> BaseException | None:
        """The exception the task raised (None if it returned), waiting up to ``timeout``."""
        return super().exception(timeout_seconds(timeout))

    def _fetch(self, timeout: float | None) -> Any:
        """Bring the value from the worker that holds it (once; other callers wait): from
        the executor's gather task if the value is in one (``futures_gather.py``), else
        by fetching the temp."""
        gathered = self._gathered
        if gathered is not None and not gathered.wait(timeout):
            raise cf.TimeoutError(f"the value of task {self._task.id} is on its way back")
        with self._fetch_lock:
            if self._result is not UNFETCHED:
                if self._exception is not None:
                    raise self._exception
                return self._result
            task = self._task
            if self._executor._values_gone:
                raise RuntimeError(f"the value of task {task.id} was left on the workers "
                                   "when the executor shut down (a future that a later task "
                                   "took as an argument is not brought back then): ask for "
                                   "result() before shutdown")
            try:
                data = self._executor.manager.fetch_file(task.output_file, timeout=timeout)
            except TimeoutError:
                raise
            except Exception as e:
                self._store_error(RuntimeError(f"the value of task {task.id} could not be "
                                               f"brought back from the workers: {e}"), e)
                raise self._exception from e  # type: ignore[misc]
            value = self._store_bytes(data)
            if self._exception is not None:
                raise self._exception
            return value

    def _store_bytes(self, data: bytes) -> Any:
        """Keep the value whose (pickled) bytes came back; returns it."""
        with self._condition:
            if self._result is not UNFETCHED:
                return self._result
        try:
            value = data if not self._task.serialize_output else cloudpickle.loads(data)
        except Exception as e:
            self._store_error(RuntimeError(f"the value of task {self._task.id} could not be "
                                           f"unpickled: {e}"), e)
            return None
        with self._condition:
            if self._result is UNFETCHED:
                self._result = value
            return self._result

    def _store_error(self, err: BaseException, cause: BaseException) -> None:
        err.__cause__ = cause
        with self._condition:
            self._result = None
            self._exception = err

    @property
    def fetched(self) -> bool:
        """True once the future finished and its value (or its error) is at the manager."""
        with self._condition:
            return self._state == FINISHED and self._result is not UNFETCHED

    # ------------------------------------------------------------------ states
    def running(self) -> bool:
        """True while the task runs on a worker."""
        if self.done() or not self._is_submitted or not self._task.id:
            return False
        try:
            return int(self._executor.manager.task_state(self._task.id)) == VINE_TASK_RUNNING
        except Exception:
            return False

    def cancel(self) -> bool:
        """Cancel the task, killing it if it runs. True unless the future had already
        finished (then False); a cancelled future's ``result()`` raises
        ``CancelledError``, and ``wait``/``as_completed`` count it as done."""
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
        if self._is_submitted:
            self._executor._cancel_task(self)
        return self._set_cancelled()

    def _set_cancelled(self) -> bool:
        """Move to CANCELLED_AND_NOTIFIED (what ``concurrent.futures.wait`` counts as done),
        telling waiters and running callbacks; False if the future had finished.

        One step under the future's lock (the user's ``cancel()`` and the driver's
        "cancelled" task may race): the base class's ``cancel()`` followed by
        ``set_running_or_notify_cancel()`` would leave a window between the two."""
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

    def _settle_result(self, value: Any) -> bool:
        """Finish with ``value`` (or ``UNFETCHED``); False if it had been cancelled."""
        try:
            self.set_result(value)
        except cf.InvalidStateError:
            return False
        return True

    def _settle_exception(self, exc: BaseException) -> bool:
        """Finish with ``exc``; False if it had been cancelled."""
        try:
            self.set_exception(exc)
        except cf.InvalidStateError:
            return False
        return True

    @property
    def task(self) -> FuturePythonTask | FutureFunctionCall:
        """The task that computes this future."""
        return self._task

    def __reduce__(self) -> Any:
        raise TypeError("a VineFuture is passed to a later task as a direct argument "
                        "(submit(fn, future) or submit(fn, x=future)); inside a list, "
                        "a dict or another object it cannot be sent")

    def __repr__(self) -> str:
        with self._condition:
            state = self._state
        what = {PENDING: "pending", CANCELLED: "cancelled",
                CANCELLED_AND_NOTIFIED: "cancelled"}.get(state, "finished")
        if state == FINISHED:
            what += " raised " + type(self._exception).__name__ if self._exception \
                else " returned"
        return f"<VineFuture of task {self._task.id or '(not submitted)'} {what}>"


def _future_args(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 marker: type[FutureArg] = FutureArg
                 ) -> tuple[tuple[Any, ...], dict[str, Any], list[VineFuture]]:
    """Replace every future among the arguments by a ``marker`` and add its task's
    temp output as an input of ``task`` (once per future)."""
    deps: list[VineFuture] = []
    names: dict[int, FutureArg] = {}

    def swap(a: Any) -> Any:
        if not isinstance(a, VineFuture):
            return a
        m = names.get(id(a))
        if m is None:
            producer = a._task
            remote = f".vinework-future-{producer.output_file.cache_name}"
            task.add_input(producer.output_file, remote)
            m = names[id(a)] = marker(remote, raw=not producer.serialize_output)
            deps.append(a)
        return m

    new_args = tuple(swap(a) for a in args)
    new_kwargs = {k: swap(v) for k, v in kwargs.items()}
    return new_args, new_kwargs, deps


def future_deps(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[VineFuture]:
    """The distinct futures among a call's direct arguments, in order."""
    seen: dict[int, VineFuture] = {}
    for a in (*args, *kwargs.values()):
        if isinstance(a, VineFuture) and id(a) not in seen:
            seen[id(a)] = a
    return list(seen.values())


class FuturePythonTask(PythonTask):
    """A PythonTask whose result is a ``VineFuture`` (TaskVine's ``FuturePythonTask``).

    Made by ``executor.future_task(fn, *args, **kwargs)``; every PythonTask setter
    works on it (resources, tags, retries, ...), then ``executor.submit(task)``
    returns its future. Its result stays on the worker (temp output) until asked
    for; futures among its arguments are loaded from their temps on the worker.
    Unlike a plain PythonTask it asks for 1 core unless told otherwise (a PythonTask
    that sets no resources gets a whole worker).
    """

    def __init__(self, executor: _Executor, fn: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(fn, *args, **kwargs)
        self.enable_temp_output()
        self.set_cores(1)
        self._executor = executor
        self._future = VineFuture(self, executor)
        self._deps: list[VineFuture] = future_deps(args, kwargs)

    @property
    def future(self) -> VineFuture:
        """The future of this task's result."""
        return self._future

    def submit_finalize(self) -> None:
        """Serialize the call (done by ``Manager.submit``): futures among the arguments
        become input files read on the worker."""
        if self.payload is not None or not self._deps:
            super().submit_finalize()
            return
        args, kwargs, _ = _future_args(self, self._args, self._kwargs)
        self.payload = _dumps_future_call(self.function, args, kwargs,
                                          raw=not self.serialize_output)

    def output(self, timeout: Any = "wait_forever") -> Any:  # type: ignore[override]
        """TaskVine's ``FuturePythonTask.output(timeout)``: the return value, or the
        exception object the function raised (returned, not raised). Raises
        ``TimeoutError`` if the task has not finished within ``timeout``."""
        return _output_of(self._future, timeout)


def _dumps_future_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                       raw: bool) -> bytes:
    return cloudpickle.dumps((call_with_futures, (function_bytes(fn), args, kwargs, raw),
                              {}))


def _output_of(future: VineFuture, timeout: Any) -> Any:
    try:
        return future.result(timeout)
    except BaseException as e:
        if not future.done():
            raise  # a timeout (or an interrupt) while waiting
        return e


class FutureFunctionCall(FunctionCall):
    """A FunctionCall whose result is a ``VineFuture`` (TaskVine's ``FutureFunctionCall``),
    made by ``executor.future_funcall(library_name, fn_name, *args, **kwargs)``: a call
    of the function named ``fn_name`` (or of a function's ``__name__``) of an installed
    library. Its result stays on the worker (temp output) until asked for; futures among
    its arguments are read from their temps in the call's sandbox."""

    def __init__(self, executor: _Executor, library_name: str, fn: Any, *args: Any,
                 **kwargs: Any) -> None:
        name = fn if isinstance(fn, str) else getattr(fn, "__name__", fn)
        super().__init__(library_name, name, *args, **kwargs)
        self.enable_temp_output()
        self._executor = executor
        self._future = VineFuture(self, executor)
        self._deps: list[VineFuture] = future_deps(args, kwargs)

    @property
    def future(self) -> VineFuture:
        """The future of this call's result."""
        return self._future

    def submit_finalize(self) -> None:
        """Serialize the arguments (done by ``Manager.submit``): futures among them
        become input files, unpickled as their values in the call's sandbox."""
        if self.payload is None and self._deps:
            args, kwargs, _ = _future_args(self, self._args, self._kwargs, SandboxValue)
            self.payload = dumps_args(args, kwargs)
        super().submit_finalize()

    def output(self, timeout: Any = "wait_forever") -> Any:  # type: ignore[override]
        """The return value, or the exception object the call raised; ``TimeoutError``
        if it has not finished within ``timeout``."""
        return _output_of(self._future, timeout)


def _submit_unsubmitted(fs: Iterable[Any]) -> list[Any]:
    out = list(fs)
    for f in out:
        if isinstance(f, VineFuture) and not f._is_submitted and not f.done():
            f._executor._submit_task(f._task)
    return out


def wait(fs: Iterable[cf.Future], timeout: Any = None,  # type: ignore[type-arg]
         return_when: str = ALL_COMPLETED) -> cf._base.DoneAndNotDoneFutures:  # type: ignore[type-arg]
    """TaskVine's ``futures.wait``: ``concurrent.futures.wait`` that first submits any
    future whose task was made but not submitted. Returns ``(done, not_done)`` sets."""
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(f"return_when must be ALL_COMPLETED, FIRST_COMPLETED or "
                         f"FIRST_EXCEPTION, got {return_when!r}")
    return cf.wait(_submit_unsubmitted(fs), timeout_seconds(timeout), return_when)


def as_completed(fs: Iterable[cf.Future],  # type: ignore[type-arg]
                 timeout: Any = None) -> Iterator[cf.Future]:  # type: ignore[type-arg]
    """TaskVine's ``futures.as_completed``: yields futures as they finish (cancelled ones
    included); raises ``TimeoutError`` if some are not done within ``timeout`` seconds."""
    return cf.as_completed(_submit_unsubmitted(fs), timeout_seconds(timeout))
