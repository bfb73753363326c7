"""The records the manager's core keeps: one per task, per task run, per file, per worker.

Plain data with explicit state enums; every change of a task's state goes
through ``ManagerState._transition`` (checked against ``transitions.TASK``),
and every change of a replica's state through ``ReplicaTable`` (checked
against ``transitions.REPLICA``).

A task has one record for its whole life and one ``RunRecord`` per execution:
a retry, a re-placement after a worker was lost and a *recovery* (re-running a
finished task to remake a lost temp) are each a new run, so the history of a
task is its list of runs, never a rewound state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..constants import TaskResult
from ..protocol import TaskDone
from .events import FileSpec, TaskSpec
from .scheduling import Resources


class TaskState(Enum):
    """Where a task is (TaskVine's names where TaskVine has the state)."""

    __hash__ = object.__hash__  # members are singletons: hash by identity (hot path)

    INITIAL = "INITIAL"  # submitted, not yet looked at
    WAITING = "WAITING"  # some input has no copy anywhere yet (vinework)
    READY = "READY"  # every input can be had; waiting for a worker
    STAGING = "STAGING"  # placed on a worker, inputs on their way (vinework)
    RUNNING = "RUNNING"  # the worker was told to run it
    WAITING_RETRIEVAL = "WAITING_RETRIEVAL"  # ran; outputs coming back to the manager
    RETRIEVED = "RETRIEVED"  # finished; handed to the API, not yet returned by wait()
    DONE = "DONE"  # returned to the user by wait()


class RunOutcome(Enum):
    """How one run of a task ended (who is to blame decides what happens next)."""

    __hash__ = object.__hash__  # members are singletons: hash by identity (hot path)

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the task's own failure (exit code, signal, missing output, ...)
    WORKER_FAULT = "worker fault"  # failed for the worker's sake (disk full, worker error)
    WORKER_LOST = "worker lost"  # the worker left (or was drained) while it ran
    FORSAKEN = "forsaken"  # not run for the worker's sake (it could not set it up)
    OUTPUT_LOST = "output lost"  # ran, but its outputs could not be brought back
    CANCELLED = "cancelled"
    INPUT_FAILED = "input failed"  # an input can never exist (its producer failed)


@dataclass(slots=True)
class RunRecord:
    """One execution of a task."""

    attempt: int
    recovery: bool  # a re-run of a finished task to remake a lost temp
    return_to: TaskState | None = None  # for a recovery: the state it returns to
    worker: str | None = None
    alloc: Resources | None = None
    outcome: RunOutcome | None = None
    seconds: float = 0.0
    unretrieved: str = ""  # an output of this run that could not be brought back
    started: float = 0.0  # when it was dispatched (the manager's deadlines: deadlines.py)
    final_failure: TaskResult | None = None  # failed for good; failure_only outputs coming
    instance: int = 0  # a FunctionCall's run: the library instance it was given (0: none)
    # inputs its worker reported lost (changed in its cache) while it ran: the worker keeps
    # them pinned for this run, the core no longer counts them as replicas
    lost_inputs: frozenset[str] = frozenset()


@dataclass(slots=True)
class TaskRecord:
    spec: TaskSpec
    seq: int
    state: TaskState = TaskState.INITIAL
    runs: list[RunRecord] = field(default_factory=list)
    # (sets rarely needed start as the shared empty frozenset: an empty set costs 216 bytes)
    avoid: frozenset[str] = frozenset()  # workers where it failed for their sake
    missing: set[str] = field(default_factory=set)  # inputs with no copy (WAITING)
    staging: set[str] = field(default_factory=set)  # inputs not yet on the worker (STAGING)
    retrievals: frozenset[int] = frozenset()  # outputs on their way to the manager
    story: list[tuple[float, str, str, str]] = field(default_factory=list)
    # the result the user sees (set when the task is finished)
    result: TaskResult = TaskResult.UNKNOWN
    exit_code: int = -1
    output: str = ""
    message: str = ""
    done: TaskDone | None = None
    done_worker: str = ""
    hostname: str = ""
    python_result: bytes | None = None
    result_path: str = ""
    stdout_path: str = ""  # a long stdout retrieved to the staging directory
    last_alloc: Resources | None = None  # what its latest run was given
    unplaceable_since: float = -1.0  # when no connected worker could ever run it
    unplaceable_noted: bool = False

    @property
    def run(self) -> RunRecord:
        """The current (or last) run."""
        return self.runs[-1]

    @property
    def worker(self) -> str | None:
        return self.runs[-1].worker if self.runs else None

    @property
    def attempt(self) -> int:
        return self.runs[-1].attempt if self.runs else 0

    def count(self, outcome: RunOutcome, recovery: bool | None = None) -> int:
        """Runs that ended with ``outcome`` (only recovery or only user runs if given)."""
        return sum(1 for r in self.runs if r.outcome is outcome
                   and (recovery is None or r.recovery is recovery))


@dataclass(slots=True)
class FileRecord:
    spec: FileSpec
    size: int
    at_manager: bool  # the manager can serve it (local file, buffer, checkpoint)
    manager_path: str | None
    producer: int | None = None
    consumers: dict[int, None] = field(default_factory=dict)  # unfinished tasks/runs reading it
    waiting: set[int] = field(default_factory=set)  # WAITING tasks that miss it
    readers: int = 0  # task records that read it and are still kept (lineage)
    produced: bool = False
    failed_producer: int | None = None
    fetch_requests: list[int] = field(default_factory=list)
    released: bool = False  # the user dropped every handle (or undeclared it)
    undeclared: bool = False  # the user undeclared it: it is gone for good
    pruned: bool = False  # deleted from every worker (may be remade by a recovery)
    lost: bool = False  # its last copy went (counted once, until a copy exists again)
    decision: str = ""  # the automatic durability policy's choice
    checksum: str = ""  # of the content its producer made (checksums.py); "" unknown
    story: list[tuple[float, str, str]] = field(default_factory=list)


@dataclass(slots=True)
class WorkerRecord:
    worker_id: str
    host: str
    transfer_port: int
    hostname: str
    total: Resources
    free: Resources
    last_heard: float = 0.0
    draining: bool = False  # told to stop: takes no task, its only copies are moved off
    running: set[int] = field(default_factory=set)
    disk_used: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    tasks_done: int = 0
    features: frozenset[str] = frozenset()
    started: float = 0.0  # when it joined (manager's clock)
    exec_seconds: float = 0.0  # run time of the tasks it finished (the "time" scheduler)


class RetrievalKind(Enum):
    __hash__ = object.__hash__  # members are singletons: hash by identity (hot path)
    TASK_OUTPUT = "task"  # a task's output file, to its path at the manager
    PYTHON_RESULT = "python"  # a large PythonTask result, to the staging directory
    STDOUT = "stdout"  # a task's long stdout, to the staging directory
    FETCH = "fetch"  # fetch_file, or a temp on its way through the manager
    CHECKPOINT = "checkpoint"  # a durability checkpoint (or a drain with no peer room)


@dataclass(slots=True)
class RetrievalRecord:
    kind: RetrievalKind
    name: str
    worker: str
    task_id: int = 0
    dest: str = ""


@dataclass(slots=True)
class LibraryInstance:
    """One running copy of a library on one worker (see ``libraries.py``)."""

    instance_id: int
    library: str
    worker: str
    alloc: Resources
    slots: int
    calls: dict[int, None] = field(default_factory=dict)  # task ids assigned to it
    started: bool = False  # StartLibrary sent
    ready: bool = False  # LibraryReady heard
    pid: int = 0
    since: float = 0.0
    idle_since: float = 0.0  # when its last call ended (or it was made)
    calls_done: int = 0
    dead: bool = False  # a call reported it gone: no new call; LibraryEnded will follow
