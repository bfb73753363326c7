"""The records the worker's core keeps: cache entries, fetches in flight, task runs.

Plain mutable dataclasses with no behaviour; only ``state.py`` changes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..constants import CacheLevel
from ..protocol import RunTask
from .outcome import Resources, Verdict


class EntryState(Enum):
    FETCHING = "fetching"
    READY = "ready"
    FAILED = "failed"
    REMOVED = "removed"


class TaskState(Enum):
    RUNNING = "running"
    COLLECTING = "collecting"  # the process ended; its outputs (and big stdout) are stored
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
    lost: bool = False  # its bytes changed under a task (FileLost): never served again
    # how long it is kept (a CacheLevel): TASK and WORKFLOW entries go with their manager,
    # WORKER entries with the worker process, FOREVER entries outlive it (in a --workdir)
    level: int = CacheLevel.WORKFLOW


@dataclass(slots=True)
class TaskRun:
    run_id: int
    task: RunTask
    ask: Resources
    inputs: tuple[str, ...]  # distinct cache names pinned
    start: float  # wall clock
    gpu_ids: tuple[int, ...] = ()
    state: TaskState = TaskState.RUNNING
    output: str = ""
    python_result: bytes | None = None
    exit_code: int = 0  # of the process, once it exited
    verdict: Verdict | None = None  # decided at exit; the big stdout is being stored
    measured: list[float] = field(default_factory=list)
    stdout_size: int = 0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What the core must know about this worker and its manager."""

    manager_host: str
    manager_port: int
    hostname: str
    transfer_port: int
    resources: Resources
    # give up after this long without a manager (TaskVine's --connect-timeout)
    timeout: float = 900.0
    attempt_timeout: float = 30.0  # one connection attempt, handshake included
    drain_timeout: float = 20.0
    single_shot: bool = False
    idle_timeout: float = 0.0  # leave (drain) after this long connected with no work; 0 = never
    wall_time: float = 0.0  # leave (drain) this long after the start; 0 = no limit
    min_backoff: float = 1.0  # first pause before reconnecting; doubled per failure
    max_backoff: float = 8.0  # longest pause between two connection attempts
    features: tuple[str, ...] = ()  # --feature names, announced in Hello
    password: bytes = b""  # --password FILE: the manager must prove it knows it, and so must we
