"""The manager's pure state machine: tasks, their runs, files, replicas, workers.

Everything that changes the manager's view of the world lives in this package.
The one way in is ``ManagerState.handle(event) -> list[Command]``; the asyncio
shell feeds events (a worker joined, a task finished, a replica is ready, the
user submitted or waited, a second passed) and carries out the commands (send
this message, retrieve that file, return that task to the user, drop that
worker). Nothing here touches a socket, a thread, a clock or a disk.

Theory of operation
-------------------
*Transitions.* A task's state changes only in ``_transition``, which checks the
(from, to) pair against ``transitions.TASK``, appends a line to the task's
story (time, from, to, stimulus id and why) and writes the transaction log.
A replica's state changes only inside ``ReplicaTable`` (checked against
``transitions.REPLICA``). States: INITIAL, WAITING (an input has no copy
yet), READY, STAGING (placed; inputs on their way), RUNNING,
WAITING_RETRIEVAL (outputs coming back), RETRIEVED (finished, handed to the
API), DONE (returned by ``wait()``). Each execution is a ``RunRecord``; a
recovery is a new run of a finished task, which returns to RETRIEVED or DONE
when it ends.

*Cascades.* A failure propagates to every consumer downstream, a lost temp
re-runs its producer (and, upstream, the producers of its lost inputs), a
finished task releases what it held, and a pruned file lets its lineage go.
None of these recurse: each step pushes the next onto ``_work`` (a FIFO of
pending steps), and ``_drain`` runs them until none is left, with a guard
against endless loops (``CascadeOverflow``). A chain of 100,000 tasks costs a
loop of 100,000 steps, never a deep stack.

*Causality.* Every event has a stimulus id (given by the shell or made here);
every command, story line and transition it causes carries it.

*Errors.* An exception raised while handling an event escapes ``handle``: the
state is then not trusted again (the shell turns it into a ``ManagerError``
at the user's next call). ``validate_state`` checks every invariant and runs
after every event when ``tune.validate`` is on (the test suite turns it on).

*Determinism.* Iteration orders are insertion orders (dicts, or sets of task
ids, which hash to themselves), so the same events give the same commands and
the same log under any ``PYTHONHASHSEED``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import durability as dur
from .base import RECOVERY_ATTEMPTS
from .deadlines import TaskDeadlines
from .events import (
    Command,
    Event,
    FetchRequested,
    FileDeclared,
    FileReleased,
    FileUndeclared,
    HoistRequested,
    HostBlocked,
    LibraryInstalled,
    LibraryRemoved,
    LibraryReported,
    ReplicaFailed,
    ReplicaReady,
    ResourcesLimited,
    RetrievalDone,
    TaskCancelled,
    TaskCollected,
    TaskReported,
    TaskSubmitted,
    Tick,
    Tuned,
    WorkerHeard,
    WorkerJoined,
    WorkerLeaving,
    WorkerLeft,
    WorkersReleased,
)
from .eviction import CacheEviction
from .files import FileLogistics
from .libraries import LibraryLifecycle
from .tasks import TaskLifecycle
from .workers import WorkerLifecycle

__all__ = ["RECOVERY_ATTEMPTS", "CascadeOverflow", "ManagerState"]


class CascadeOverflow(RuntimeError):
    """A cascade did not settle: the core would loop forever (a bug)."""


class ManagerState(TaskLifecycle, WorkerLifecycle, FileLogistics, LibraryLifecycle,
                   CacheEviction, TaskDeadlines):
    """All of the manager's decisions; see the module docstring."""

    # ================================================================ entry point
    def handle(self, event: Event) -> list[Command]:
        """Apply one event and return the commands it calls for. The core's clock never
        goes back: an event stamped before one already applied (posted by the user's
        thread, applied after a worker's message) is applied at the later time."""
        if event.now > self.now:
            self.now = event.now
        self._events += 1
        self._stim = event.stimulus_id or f"{type(event).__name__}-{self._events}"
        out: list[Command] = []
        self._out = out
        _HANDLERS[type(event)](self, event)
        if self._work:
            self._drain()
        intents = self.durability.after_event(self.now)
        if intents:
            self._apply_intents(intents)
        if self._ready:
            self._schedule()
            if self._ready and self.instances:
                self._evict_idle_for_tasks()
                self._schedule()
        if self._lib_ready and (self._calls_dirty or type(event) is Tick):
            self._schedule_calls()
        if self._work:
            self._drain()
            if self._lib_ready and self._calls_dirty:  # a cascade made a call placeable
                self._schedule_calls()
                if self._work:
                    self._drain()
        if self.tune.validate:
            self.validate_state()
        self._out = []
        return out

    @property
    def events_handled(self) -> int:
        """How many events the core has handled."""
        return self._events

    def _drain(self) -> None:
        work = self._work
        limit = 1000 + 50 * (len(self.tasks) + len(self.files))
        n = 0
        while work:
            fn, args = work.popleft()
            fn(*args)
            n += 1
            if n > limit:
                work.clear()
                raise CascadeOverflow(f"cascade of {n} steps did not settle "
                                      f"(stimulus {self._stim})")
            if not work:
                intents = self.durability.take()
                if intents:
                    self._apply_intents(intents)

    def _apply_intents(self, intents: list[dur.Intent]) -> None:
        for it in intents:
            if type(it) is dur.Story:
                self.file_story_add(it.name, it.text)
            elif type(it) is dur.Replicate:
                before = self.replicas.in_flight_to(it.name, it.dest)
                self._source_transfer(it.name, it.dest, replication=True)
                if before is None and self.replicas.in_flight_to(it.name, it.dest) is not None:
                    self.file_story_add(it.name, f"replicating to {it.dest}")
            elif type(it) is dur.Checkpoint:
                self._checkpoint(it.name, it.worker)
            elif type(it) is dur.Prune:
                self._prune(it.name)
            elif type(it) is dur.Decision:
                self._log("DURABILITY", it.name, it.choice.upper(), *it.numbers)

    # ================================================================ invariants
    def validate_state(self) -> None:
        """Check every invariant of the records (raises AssertionError naming the breach)."""
        from .validate import validate

        validate(self)


def _heard(handler: Callable[[ManagerState, Any], None]) -> Callable[[ManagerState, Any], None]:
    """Wrap a handler of a worker's message: any message counts as a sign of life."""
    def wrapped(s: ManagerState, ev: Any) -> None:
        w = s.workers.get(ev.worker_id)
        if w is not None:
            w.last_heard = s.now
        handler(s, ev)
    return wrapped


_HANDLERS: dict[type[Event], Callable[[ManagerState, Any], None]] = {
    WorkerJoined: ManagerState._on_worker_joined,
    WorkerLeft: ManagerState._on_worker_left,
    WorkerHeard: _heard(ManagerState._on_worker_heard),
    WorkerLeaving: _heard(ManagerState._on_worker_leaving),
    FileDeclared: ManagerState._on_file_declared,
    FileUndeclared: ManagerState._on_file_undeclared,
    FileReleased: ManagerState._on_file_released,
    TaskSubmitted: ManagerState._on_task_submitted,
    TaskCancelled: ManagerState._on_task_cancelled,
    TaskCollected: ManagerState._on_task_collected,
    TaskReported: _heard(ManagerState._on_task_reported),
    ReplicaReady: _heard(ManagerState._on_replica_ready),
    ReplicaFailed: _heard(ManagerState._on_replica_failed),
    RetrievalDone: ManagerState._on_retrieval_done,
    FetchRequested: ManagerState._on_fetch_requested,
    Tick: ManagerState._on_tick,
    Tuned: ManagerState._on_tuned,
    HoistRequested: ManagerState._on_hoist,
    ResourcesLimited: ManagerState._on_resources_limited,
    HostBlocked: ManagerState._on_host_blocked,
    WorkersReleased: ManagerState._on_workers_released,
    LibraryInstalled: ManagerState._on_library_installed,
    LibraryRemoved: ManagerState._on_library_removed,
    LibraryReported: _heard(ManagerState._on_library_reported),
}
