"""The records the worker's core keeps: cache entries, fetches in flight, task runs.

Plain mutable dataclasses with no behaviour; only ``state.py`` changes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..protocol import RunTask
from .outcome import Resources


class EntryState(Enum):
    FETCHING = "fetching"
    READY = "ready"
    FAILED = "failed"
    REMOVED = "removed"


class TaskState(Enum):
    RUNNING = "running"
    COLLECTING = "collecting"  # the process succeeded; its outputs are being stored
    KILLED = "killed"  # given up; waiting for the process to be gone


class Link(Enum):
    IDLE = "idle"  # not connected; a retry is scheduled
    CONNECTING = "connecting"
    HANDSHAKE = "handshake"
    CONNECTED = "connected"
    DONE = "done"  # an Exit was given: nothing more happens


@dataclass(frozen=True, slots=True)
class Waiter:
    """One manager ``Fetch`` waiting for its answer."""

    transfer_id: int
    host: str
    port: int
    size: int

    @property
    def source(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(slots=True)
class InFlight:
    """The one transfer of a name in flight."""

    fetch_id: int
    name: str
    host: str
    port: int
    waiters: list[Waiter] = field(default_factory=list)
    cancelled: list[Waiter] = field(default_factory=list)

    @property
    def source(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(slots=True)
class CacheEntry:
    name: str
    state: EntryState
    size: int = -1
    pins: int = 0
    doomed: bool = False  # remove when the last pin is released / when the fetch ends


@dataclass(slots=True)
class TaskRun:
    run_id: int
    task: RunTask
    ask: Resources
    inputs: tuple[str, ...]  # distinct cache names pinned
    start: float  # wall clock
    state: TaskState = TaskState.RUNNING
    output: str = ""
    python_result: bytes | None = None


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What the core must know about this worker and its manager."""

    manager_host: str
    manager_port: int
    hostname: str
    transfer_port: int
    resources: Resources
    timeout: float = 900.0  # give up after this long without a manager
    connect_timeout: float = 30.0  # one connection attempt, handshake included
    drain_timeout: float = 20.0
    single_shot: bool = False
