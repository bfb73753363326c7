"""Bringing back the values of finished futures that no task consumes, many per task.

A future's value stays on the worker that computed it (temp output), because a
later task may take it as an argument. Fetching each value by itself when
``result()`` is called costs a transfer per future, about as much as running
the task did. So the executor gathers them: when a future finishes and no task
has taken it as an argument, it joins a queue; a *gather task* (a PythonTask
of high priority, one core) takes up to ``GATHER_MAX`` queued values, all made
on the same worker, as strict input files (so it runs there: no value moves
between workers; FunctionCall results as plain inputs) and returns their bytes
inline in one reply; at most ``IN_FLIGHT_MAX`` run at a time, so batches grow
with the load, and a batch waits to be ``GATHER_MIN`` values or
``GATHER_DELAY`` old unless nothing else is running. A ``result()`` on a queued
future waits for its batch; if a gather fails (a worker was lost, the manager
closed) or is not back within ``GATHER_PATIENCE`` (it is then cancelled: every
core may be busy with long tasks), its futures fall back to fetching their own
value, which needs no core.

A future taken as an argument after it finished may have been gathered: its
value then came to the manager once, but the later task still reads it from
the worker's copy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .task import PythonTask

__all__ = ["GATHER_MAX", "Gatherer", "gather_files"]

GATHER_MAX = 256  # values per gather task
GATHER_MIN = 64  # a batch waits to be this big ...
GATHER_DELAY = 0.05  # ... or this old (seconds), or for the executor to have nothing pending
IN_FLIGHT_MAX = 2  # gather tasks submitted and not yet back
GATHER_PATIENCE = 5.0  # seconds a gather may take; then it is cancelled, and its
#                        futures fetch their own values (no core needed for that)
GATHER_PRIORITY = 1e12  # ahead of the user's tasks: a waiting result() is waiting on it


def gather_files(*names: str) -> list[bytes]:
    """Run on the worker: the bytes of each input file, in order."""
    out = []
    for name in names:
        with open(name, "rb") as f:
            out.append(f.read())
    return out


class Gatherer:
    """The queue of values to bring back and the gather tasks in flight.

    ``submit(task)`` hands a gather task to the manager and makes sure it comes back
    through ``finished(task)`` (the executor's driver thread calls it). Futures are
    ``VineFuture``s settled with a placeholder value.
    """

    def __init__(self, submit: Callable[[PythonTask], None],
                 busy: Callable[[], bool], cancel: Callable[[int], Any]) -> None:
        self._submit = submit
        self._cancel = cancel  # the manager's cancel_by_task_id
        self._flying: dict[int, tuple[PythonTask, float]] = {}  # id -> (task, submitted)
        self._busy = busy  # does the executor have futures still running?
        self._oldest = 0.0  # when the oldest queued value joined the queue
        self._lock = threading.Lock()
        self._queue: deque[Any] = deque()
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._closed = False

    def add(self, fut: Any) -> None:
        """Queue a finished future's value (its ``result()`` waits for the batch)."""
        fut._gathered = threading.Event()
        with self._lock:
            if self._closed:
                fut._gathered.set()
                return
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.append(fut)
        self.launch()

    def wait_hint(self, longest: float) -> float:
        """How long the driver may wait on the manager before calling ``launch`` again."""
        return GATHER_DELAY if self._queue else longest

    def launch(self, force: bool = False) -> None:
        """Submit gather tasks for queued values: while fewer than ``IN_FLIGHT_MAX`` are
        out, for a batch of ``GATHER_MIN``, one ``GATHER_DELAY`` old, or whatever is
        queued once the executor has nothing else running (``force``: everything now)."""
        while True:
            with self._lock:
                if self._closed or not self._queue:
                    return
                if not force and (self._in_flight >= IN_FLIGHT_MAX or (
                        len(self._queue) < GATHER_MIN
                        and time.monotonic() - self._oldest < GATHER_DELAY
                        and self._busy())):
                    return
                batch: list[Any] = []
                others: list[Any] = []  # values on other workers: for later batches
                where = self._queue[0]._task.worker
                while self._queue and len(batch) < GATHER_MAX:
                    f = self._queue.popleft()
                    if f.fetched or f._consumers:  # consumed after all: leave it there
                        f._gathered.set()
                    elif f._task.worker != where:
                        others.append(f)
                    else:
                        batch.append(f)
                self._queue.extendleft(reversed(others))
                self._oldest = time.monotonic()
                if not batch:
                    continue
                self._in_flight += 1
            names = [f".vinework-value-{i}" for i in range(len(batch))]
            t = PythonTask(gather_files, *names)
            # strict inputs: it runs where the values are (not for FunctionCall results:
            # a gather with those as strict inputs was never placed, a core limitation
            # seen here; without, the scheduler may still choose another worker)
            strict = not any(f._task.needs_library() for f in batch)
            for f, name in zip(batch, names, strict=True):
                t.add_input(f._task.output_file, name, strict_input=strict)
            t.set_cores(1)
            t.set_priority(GATHER_PRIORITY)
            t._gather_batch = batch  # type: ignore[attr-defined]
            try:
                self._submit(t)
            except Exception:
                self._done(batch, None)
                continue
            with self._lock:
                self._flying[t.id] = (t, time.monotonic())

    def check(self) -> None:
        """Cancel gathers out longer than ``GATHER_PATIENCE`` (no core came free for them,
        or they could not be placed): their futures then fetch their own values."""
        now = time.monotonic()
        with self._lock:
            for tid in [tid for tid, (t, _) in self._flying.items() if t._done]:
                del self._flying[tid]  # (back before it was recorded)
            late = [tid for tid, (_, at) in self._flying.items()
                    if now - at > GATHER_PATIENCE]
            for tid in late:
                self._flying[tid] = (self._flying[tid][0], float("inf"))  # (once)
        for tid in late:
            try:
                self._cancel(tid)
            except Exception:
                pass

    def finished(self, t: PythonTask) -> None:
        """A gather task came back: store the values (or let each future fetch its own)."""
        batch = t._gather_batch  # type: ignore[attr-defined]
        values = t._output if t.successful() else None
        self._done(batch, values, t.id)
        self.launch()

    def _done(self, batch: list[Any], values: Any, task_id: int = 0) -> None:
        if isinstance(values, list) and len(values) == len(batch):
            for f, data in zip(batch, values, strict=True):
                f._store_bytes(data)
        for f in batch:
            f._gathered.set()
        with self._lock:
            self._flying.pop(task_id, None)
            self._in_flight -= 1
            self._idle.notify_all()

    def drain(self, timeout: float) -> None:
        """Gather everything queued now and wait (up to ``timeout``) for it to come back."""
        self.launch(force=True)
        with self._lock:
            self._idle.wait_for(lambda: self._in_flight == 0 or self._closed, timeout)

    def close(self) -> None:
        """No more gathers: every queued future fetches its own value if asked."""
        with self._lock:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._idle.notify_all()
        for f in left:
            f._gathered.set()

    def abandon(self, t: PythonTask) -> None:
        """A gather task that will never come back (the manager failed or closed)."""
        self._done(t._gather_batch, None, t.id)  # type: ignore[attr-defined]
