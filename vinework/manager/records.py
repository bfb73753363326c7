"""Records the manager's pure state keeps: one per task, file and worker.

Plain data; every change to them is made by ``state.py`` (and the modules it
delegates to: ``retrieval.py``, ``durability.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..protocol import TaskDone
from .events import FileSpec, TaskSpec
from .scheduling import Resources


class TState(Enum):
    WAITING = "WAITING"
    READY = "READY"
    STAGING = "STAGING"
    RUNNING = "RUNNING"
    RETRIEVING = "RETRIEVING"
    DONE = "DONE"


@dataclass(slots=True)
class TaskRecord:
    spec: TaskSpec
    seq: int
    state: TState = TState.WAITING
    worker: str | None = None
    alloc: Resources | None = None
    attempt: int = 0
    retries_used: int = 0
    forsaken: int = 0
    recovery_failures: int = 0
    avoid: set[str] = field(default_factory=set)  # workers where it failed for their sake
    recovery: bool = False
    returned: bool = False
    succeeded: bool = False
    missing: set[str] = field(default_factory=set)  # inputs with no copy (WAITING)
    staging: set[str] = field(default_factory=set)  # inputs not yet on the worker (STAGING)
    retrievals: set[int] = field(default_factory=set)
    done: TaskDone | None = None
    done_worker: str = ""
    hostname: str = ""
    python_result: bytes | None = None
    result_path: str = ""
    message: str = ""


@dataclass(slots=True)
class FileRecord:
    spec: FileSpec
    size: int
    at_manager: bool  # the manager can serve it (local file, buffer, checkpoint)
    manager_path: str | None
    producer: int | None = None
    consumers: set[int] = field(default_factory=set)  # unfinished tasks that read it
    waiting: set[int] = field(default_factory=set)  # WAITING tasks that miss it
    produced: bool = False
    failed_producer: int | None = None
    fetch_requests: list[int] = field(default_factory=list)


@dataclass(slots=True)
class WorkerRecord:
    worker_id: str
    host: str
    transfer_port: int
    hostname: str
    total: Resources
    free: Resources
    running: set[int] = field(default_factory=set)
    disk_used: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    tasks_done: int = 0


@dataclass(slots=True)
class _RetrievalFor:
    kind: str  # "task" | "fetch" | "python"
    name: str
    worker: str
    task_id: int = 0
    dest: str = ""
