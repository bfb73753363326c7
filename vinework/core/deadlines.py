"""The manager's own deadlines on running tasks: a worker that stops answering.

A worker enforces a task's time limit itself, but a sick or lying worker may
never answer at all. Two checks take such tasks back (a ``Kill`` to the
worker, the run counted as the worker's fault, the task run elsewhere within
its ``set_retries`` budget, never on that worker again):

- a task with ``set_time_max(s)`` still running ``s`` plus ``DEADLINE_GRACE``
  seconds after it was dispatched
  (``_deadlines``, a heap checked on every ``Tick``);
- a task the worker's own heartbeat does not list among what it runs, though
  it was dispatched there more than that grace ago (an honest worker reports a
  task's end before its next heartbeat, on the same connection).

Library calls are left to the library machinery. Pure: no I/O, no clock.
"""

from __future__ import annotations

import heapq

from ..constants import TaskResult
from ..protocol import Kill
from .base import CoreBase
from .records import RunOutcome, TaskRecord, TaskState

DEADLINE_GRACE = 30.0  # seconds past a task's time limit before the manager takes it back


class TaskDeadlines(CoreBase):
    """Taking back tasks a worker does not finish (see the module docstring)."""

    def _grace(self) -> float:
        return DEADLINE_GRACE

    def _arm_deadline(self, t: TaskRecord) -> None:
        """``t`` was just dispatched: remember when the manager's patience ends."""
        t.run.started = self.now
        if t.spec.time_max > 0 and not t.spec.library:
            heapq.heappush(self._deadlines, (self.now + t.spec.time_max + self._grace(),
                                             t.spec.task_id, t.attempt))

    def _check_deadlines(self) -> None:
        dl = self._deadlines
        while dl and dl[0][0] <= self.now:
            _, tid, attempt = heapq.heappop(dl)
            t = self.tasks.get(tid)
            if t is None or t.state is not TaskState.RUNNING or t.attempt != attempt:
                continue
            self._take_back(t, f"no answer from {t.worker} {self._grace():g} s past its time "
                               f"limit ({t.spec.time_max:g} s)", TaskResult.MAX_WALL_TIME)

    def _check_listed(self, wid: str, running: tuple[int, ...]) -> None:
        """A heartbeat of ``wid`` listed the tasks it runs: take back what it lost."""
        w = self.workers.get(wid)
        if w is None:
            return
        listed = set(running)
        old = self.now - self._grace()
        for tid in sorted(w.running):
            t = self.tasks.get(tid)
            if t is None or t.state is not TaskState.RUNNING or t.spec.library \
                    or tid in listed or t.run.started > old:
                continue
            self._take_back(t, f"{wid} no longer runs it (not in its heartbeat)",
                            TaskResult.MAX_RETRIES)

    def _take_back(self, t: TaskRecord, why: str, result: TaskResult) -> None:
        wid = t.worker or ""
        self._send(wid, Kill(task_id=t.spec.task_id))
        self._log("TASK", t.spec.task_id, "TAKEN_BACK", wid, why)
        t.avoid = t.avoid | {wid}
        if all(w in t.avoid for w in self.workers):
            t.avoid = frozenset({wid})  # every other worker is avoided too: just not that one
        self._run_lost(t, RunOutcome.WORKER_FAULT, why, result)
