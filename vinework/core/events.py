"""Events into the manager's pure core and the commands it returns.

Theory of operation: the asyncio shell (``vinework.manager.server``) and the
user API turn what happens (a worker connects, a message arrives, a retrieval
ends, the user submits or waits) into these events and calls
``ManagerState.handle(event)``; it carries out the returned commands. Every
event carries the time ``now`` (the core never reads a clock) and a
``stimulus_id`` naming its cause; every command, transition and story line the
event leads to carries the same stimulus id, so any change can be traced back
to what caused it. An event without a stimulus id gets one from the core
(``<EventName>-<sequence>``).

Events and commands are slotted dataclasses treated as immutable (nothing
changes one after it is made), but not ``frozen``: a frozen dataclass costs
2.7 times as much to construct on this kind of machine (4.6 against 1.7 us for
eight fields, measured), and the core makes about a dozen of them per task.
Wire messages (``vinework.protocol``), which peers send, stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import Message, TaskDone, TransferFailure


@dataclass(slots=True, kw_only=True)
class TaskSpec:
    """What the core needs to know of a submitted task."""

    task_id: int
    command: str
    inputs: list[tuple[str, str]]  # (file cache name, remote name)
    outputs: list[tuple[str, str]]
    env: list[tuple[str, str]] = field(default_factory=list)
    cores: int | None = None
    memory: int | None = None
    disk: int | None = None
    gpus: int | None = None
    priority: float = 0.0
    retries: int = 0  # runs lost to a worker / resources / transient faults; < 1 = unlimited
    max_forsaken: int = -1  # times it may be forsaken (not run for the worker's sake); -1 = any
    time_max: float = 0.0
    time_end: float = 0.0  # epoch seconds: killed at this time by the worker (0: none)
    end_by: float = 0.0  # the same on the manager's clock: not started after (0: none)
    start_after: float = 0.0  # on the manager's clock: not started before (0: none)
    scheduler: str = ""  # worker selection for this task ("" = the manager's)
    features: tuple[str, ...] = ()  # worker features it needs (worker --feature)
    env_unset: list[str] = field(default_factory=list)
    stdout_max: int = 1 << 30
    tag: str | None = None
    category: str = "default"
    python_payload: bytes | None = None
    python_output: str = ""  # cache name of the PythonTask's result file
    temp_output: bool = False  # keep the PythonTask's result on the worker
    python_mode: str = ""  # "direct" | "fork" | "" (the manager's python-exec setting)
    mount_flags: tuple[tuple[str, int], ...] = ()  # (remote name, VINE_* mount flags) set
    library: str = ""  # a FunctionCall: the library that runs it ("" = not a call)
    function: str = ""  # a FunctionCall: the name of the function in that library


@dataclass(slots=True, kw_only=True)
class FileSpec:
    """A file the manager knows: where its bytes come from and how to keep them."""

    name: str
    kind: str  # "file" | "buffer" | "temp" | "url" | "mini"
    path: str | None = None  # manager-side path (local files, staged buffers)
    size: int = -1
    cache_level: int = 1
    peer_transfer: bool = True
    checkpoint: bool = False
    mode: int = -1  # permission bits on workers (File.set_mode); -1: the source's
    url: str = ""  # kind "url": where workers fetch it from (file://, http://, https://);
    # kind "mini": "mini://NAME", the origin workers make it at (the fields below)
    mini_kind: str = ""  # "command" | "untar" | "poncho"
    mini_command: str = ""
    mini_inputs: tuple[tuple[str, str], ...] = ()  # (cache name, remote name)
    mini_env: tuple[tuple[str, str], ...] = ()
    mini_source: str = ""  # what the command leaves in its sandbox (kind "command")


# ------------------------------------------------------------------ events


@dataclass(slots=True, kw_only=True)
class Event:
    """Base of every event; ``now`` is seconds on the shell's monotonic clock."""

    now: float = 0.0
    stimulus_id: str = ""


@dataclass(slots=True, kw_only=True)
class WorkerJoined(Event):
    worker_id: str
    host: str
    transfer_port: int
    cores: int
    memory: int
    disk: int
    gpus: int
    hostname: str = ""
    cached: list[tuple[str, int]] = field(default_factory=list)
    features: tuple[str, ...] = ()


@dataclass(slots=True, kw_only=True)
class WorkerLeft(Event):
    """The worker's connection is gone (closed, broken, or dropped by the core)."""

    worker_id: str
    reason: str


@dataclass(slots=True, kw_only=True)
class WorkerHeard(Event):
    """A heartbeat from a worker (every other worker event also counts as one)."""

    worker_id: str
    disk_used: int = -1  # bytes in its cache, -1 if not reported
    running: tuple[int, ...] | None = None  # the task ids it says it runs (a heartbeat)


@dataclass(slots=True, kw_only=True)
class WorkerLeaving(Event):
    """The worker was told to stop (SIGTERM from a batch system): drain it."""

    worker_id: str
    reason: str


@dataclass(slots=True, kw_only=True)
class FileDeclared(Event):
    spec: FileSpec


@dataclass(slots=True, kw_only=True)
class FileUndeclared(Event):
    name: str


@dataclass(slots=True, kw_only=True)
class FileReleased(Event):
    """The user no longer holds a handle to this file (it may be pruned once unneeded)."""

    name: str


@dataclass(slots=True, kw_only=True)
class TaskSubmitted(Event):
    spec: TaskSpec


@dataclass(slots=True, kw_only=True)
class TaskCancelled(Event):
    task_id: int


@dataclass(slots=True, kw_only=True)
class TaskCollected(Event):
    """``wait()`` handed the task to the user (RETRIEVED -> DONE)."""

    task_id: int


@dataclass(slots=True, kw_only=True)
class TaskReported(Event):
    """A worker's TaskDone message."""

    worker_id: str
    done: TaskDone


@dataclass(slots=True, kw_only=True)
class ReplicaReady(Event):
    worker_id: str
    name: str
    size: int
    seconds: float
    transfer_id: int
    source: str = ""


@dataclass(slots=True, kw_only=True)
class ReplicaFailed(Event):
    worker_id: str
    name: str
    transfer_id: int
    reason: str
    cause: TransferFailure = TransferFailure.UNKNOWN


@dataclass(slots=True, kw_only=True)
class RetrievalDone(Event):
    """The shell finished (or failed) bringing a file from a worker to the manager."""

    retrieval_id: int
    ok: bool
    size: int = 0
    seconds: float = 0.0
    error: str = ""
    cause: TransferFailure = TransferFailure.NONE


@dataclass(slots=True, kw_only=True)
class FetchRequested(Event):
    """The user asked for a file's bytes at the manager (``fetch_file``)."""

    request_id: int
    name: str


@dataclass(slots=True, kw_only=True)
class Tick(Event):
    """Periodic (about once a second): keepalives, expiring avoidances, explained waits."""


@dataclass(slots=True, kw_only=True)
class Tuned(Event):
    name: str
    value: object


@dataclass(slots=True, kw_only=True)
class ResourcesLimited(Event):
    """``set_resources_max/min`` (category "") or ``set_category_resources_max/min``."""

    category: str  # "" = every task
    which: str  # "max" | "min"
    cores: int | None = None
    memory: int | None = None
    disk: int | None = None
    gpus: int | None = None


@dataclass(slots=True, kw_only=True)
class HostBlocked(Event):
    """``block_host`` (``until`` on the manager's clock, 0 = for good) or, with
    ``blocked=False``, ``unblock_host`` (host "" = every host)."""

    host: str
    blocked: bool = True
    until: float = 0.0


@dataclass(slots=True, kw_only=True)
class WorkersReleased(Event):
    """``workers_shutdown(n)``: tell up to ``n`` idle workers (0 = all idle) to exit."""

    count: int = 0


@dataclass(slots=True, kw_only=True)
class HoistRequested(Event):
    """Modules every worker's warm interpreters should import (now and on joining)."""

    modules: list[str]


@dataclass(slots=True, kw_only=True)
class LibrarySpec:
    """A library the user installed (``install_library``): what its instances hold."""

    name: str
    payload: bytes  # cloudpickle of its functions, context and hoisted modules
    exec_mode: str = "fork"  # "fork" | "direct"
    slots: int = 0  # calls an instance runs at once (0: as many as its cores)
    cores: int | None = None  # None everywhere: a whole worker (TaskVine's default)
    memory: int | None = None
    disk: int | None = None
    gpus: int | None = None
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (cache name, remote name)
    env: list[tuple[str, str]] = field(default_factory=list)
    env_unset: list[str] = field(default_factory=list)
    init_command: str = ""


@dataclass(slots=True, kw_only=True)
class LibraryInstalled(Event):
    spec: LibrarySpec


@dataclass(slots=True, kw_only=True)
class LibraryRemoved(Event):
    """``remove_library``: stop its instances; calls still naming it end "missing library"."""

    name: str


@dataclass(slots=True, kw_only=True)
class LibraryReported(Event):
    """A worker's ``LibraryReady`` or ``LibraryEnded`` message."""

    worker_id: str
    message: Message


# ------------------------------------------------------------------ commands


@dataclass(slots=True)
class Command:
    """Base of every command the core returns; each has a ``stimulus_id`` field (not part
    of equality: two commands are equal when they ask for the same thing)."""


@dataclass(slots=True)
class Send(Command):
    worker_id: str
    message: Message
    stimulus_id: str = field(default="", compare=False)


@dataclass(slots=True)
class Retrieve(Command):
    """Bring ``name`` from ``worker_id``'s transfer server to ``dest`` on the manager."""

    retrieval_id: int
    worker_id: str
    host: str
    port: int
    name: str
    dest: str
    size: int
    stimulus_id: str = field(default="", compare=False)
    checksum: str = field(default="", compare=False)  # what the bytes must hash to


@dataclass(slots=True)
class TaskReturned(Command):
    """A user task reached its end: fill in the user's object and wake ``wait()``."""

    task_id: int
    result: int
    exit_code: int
    output: str
    worker_id: str
    hostname: str
    start: float
    end: float
    attempts: int
    python_result: bytes | None = None
    python_error: str = ""
    message: str = ""
    python_result_path: str = ""  # a large result retrieved to the staging directory
    stdout_path: str = ""  # the whole stdout, when too long to come inline
    measured: tuple[float, ...] = ()  # [wall s, cpu s, max rss MB] of the last run
    allocated: tuple[int, ...] = field(default=(), compare=False)  # its latest run's (c, m, d, g)
    story: tuple[tuple[float, str, str, str], ...] = field(default=(), compare=False)
    stimulus_id: str = field(default="", compare=False)


@dataclass(slots=True)
class FetchDone(Command):
    """Answer to FetchRequested: the manager-side path now holding the bytes, or an error."""

    request_id: int
    path: str | None
    error: str = ""
    stimulus_id: str = field(default="", compare=False)


@dataclass(slots=True)
class DropWorker(Command):
    """Close this worker's connection (the core already treats it as gone)."""

    worker_id: str
    reason: str
    stimulus_id: str = field(default="", compare=False)


@dataclass(slots=True)
class Log(Command):
    """One transaction-log record."""

    kind: str
    fields: tuple[object, ...]
    stimulus_id: str = field(default="", compare=False)


@dataclass(slots=True)
class Notice(Command):
    """Something the user should see in the manager's log (an explained wait)."""

    text: str
    stimulus_id: str = field(default="", compare=False)


@dataclass(slots=True)
class LibraryLog(Command):
    """A line (or the end of the log) of a library instance, for ``library-logs/``."""

    library: str
    instance_id: int
    worker_id: str
    text: str
    stimulus_id: str = field(default="", compare=False)
