"""The manager's pure core: a state machine with no I/O, no threads and no clock.

Layout: ``events`` (what goes in and what comes out), ``records`` (tasks,
runs, files, workers), ``transitions`` (the tables of allowed state changes),
``state`` (``ManagerState.handle(event) -> commands``), ``scheduling``
(placement and resources), ``replicas`` (where copies are, transfers in
flight), ``durability`` (replicate, checkpoint, prune: intents, never
actions), ``stats`` (counters and tunables), ``validate`` (invariants). The
asyncio shell and the user API that drive it are in ``vinework.manager``.
"""

from .events import (
    Command,
    DropWorker,
    Event,
    FetchDone,
    FetchRequested,
    FileDeclared,
    FileReleased,
    FileSpec,
    FileUndeclared,
    HoistRequested,
    Log,
    Notice,
    ReplicaFailed,
    ReplicaReady,
    RetrievalDone,
    Retrieve,
    Send,
    TaskCancelled,
    TaskCollected,
    TaskReported,
    TaskReturned,
    TaskSpec,
    TaskSubmitted,
    Tick,
    Tuned,
    WorkerHeard,
    WorkerJoined,
    WorkerLeaving,
    WorkerLeft,
)
from .records import RunOutcome, RunRecord, TaskRecord, TaskState
from .replicas import MANAGER, ReplicaState
from .state import CascadeOverflow, ManagerState
from .stats import ManagerStats
from .transitions import VINE_TASK_STATE, InvalidTransition
from .tunables import Tunables

__all__ = [
    "MANAGER", "VINE_TASK_STATE", "CascadeOverflow", "Command", "DropWorker", "Event",
    "FetchDone", "FetchRequested", "FileDeclared", "FileReleased", "FileSpec",
    "FileUndeclared", "HoistRequested", "InvalidTransition", "Log", "ManagerState",
    "ManagerStats", "Notice", "ReplicaFailed", "ReplicaReady", "ReplicaState", "RetrievalDone",
    "Retrieve", "RunOutcome", "RunRecord", "Send", "TaskCancelled", "TaskCollected",
    "TaskRecord", "TaskReported", "TaskReturned", "TaskSpec", "TaskState", "TaskSubmitted",
    "Tick", "Tuned", "Tunables", "WorkerHeard", "WorkerJoined", "WorkerLeaving", "WorkerLeft",
]
