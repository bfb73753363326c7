"""Events into and instructions out of the worker's pure core (``state.py``).

Every event is something that happened (a message arrived, a process exited, a
fetch ended, a clock tick) and every instruction is something the asyncio
shell (``main.py``) must do (send a message, start a fetch, kill a process,
exit). Both are frozen, slotted, keyword-only dataclasses carrying a
``stimulus_id``: the id of the event that caused an instruction is copied into
it, so any change can be traced back to its cause (see ``WorkerState.story``).

Time never comes from a clock inside the core: ``now`` (monotonic seconds) and
``wall`` (``time.time()``, for the start and end stamps of ``TaskDone``) arrive
inside the events.

Identifiers: ``fetch_id`` and ``run_id`` are numbers the core gives to one
fetch in flight and one task process; the manager's ``transfer_id`` and
``task_id`` are never used as keys for processes, so a task id reused by a new
manager can never be confused with a process that is still dying.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import Message, RunTask

# log levels of the Log instruction (the numbers of the logging module)
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event fed to ``WorkerState.handle``."""

    stimulus_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """Base of every instruction ``WorkerState.handle`` returns."""

    stimulus_id: str = ""


# ====================================================================== events: lifecycle
@dataclass(frozen=True, slots=True, kw_only=True)
class Started(Event):
    """The worker process is up; the core answers with the first ``Connect``."""

    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick(Event):
    """Time passes (the shell ticks several times a second)."""

    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOpened(Event):
    """The TCP connection to the manager is up (the handshake has not happened yet);
    ``nonce`` is this connection's fresh handshake nonce (``protocol/auth.py``)."""

    now: float
    nonce: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectFailed(Event):
    """A connection attempt failed (refused, unreachable, timed out)."""

    now: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLost(Event):
    """The manager connection ended (closed by either side, or an I/O error)."""

    now: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolViolation(Event):
    """The peer sent bytes that are not valid vinework frames, or a message out of place."""

    now: float
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StopRequested(Event):
    """A signal arrived. ``drain`` is True for SIGTERM (the first one may start a drain)."""

    now: float
    signal_name: str
    drain: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ParentGone(Event):
    """The process that started this worker (``--parent-pid``) has exited."""

    now: float
    pid: int


# ====================================================================== events: manager messages
@dataclass(frozen=True, slots=True, kw_only=True)
class FromManager(Event):
    """Base of the events made from manager messages: each one proves the manager lives."""

    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ChallengeReceived(FromManager):
    """The manager's ``Challenge``: its nonce and its proof of the password ("" if none)."""

    nonce: str
    proof: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WelcomeReceived(FromManager):
    version: int
    worker_id: str
    keepalive_interval: float
    keepalive_timeout: float
    transfer_port: int
    manager_name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatReceived(FromManager):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchRequested(FromManager):
    """``Fetch``: bring ``name`` from host:port ("" / 0 mean the manager's own server)."""

    transfer_id: int
    name: str
    host: str
    port: int
    size: int
    cache_level: int = 1  # a CacheLevel


@dataclass(frozen=True, slots=True, kw_only=True)
class UnlinkRequested(FromManager):
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRequested(FromManager):
    task: RunTask
    wall: float


@dataclass(frozen=True, slots=True, kw_only=True)
class KillRequested(FromManager):
    task_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ShutdownReceived(FromManager):
    reason: str


# ====================================================================== events: shell results
@dataclass(frozen=True, slots=True, kw_only=True)
class FetchFinished(Event):
    """A ``StartFetch`` ended. On success the bytes wait in the fetch's part file."""

    fetch_id: int
    ok: bool
    size: int = 0
    seconds: float = 0.0
    cause: int = 0  # a TransferFailure value when not ok
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskExited(Event):
    """A task's process ended (or its sandbox could not be set up: ``setup_error``).

    ``status`` is the raw wait status. For a PythonTask ``python_kind`` is the
    warm interpreter's reply kind ("inline", "file", "error" or "crash") and
    ``python_data`` the inline result (or pickled exception). ``disk_exhausted``
    is measured by the shell for a command that exited non-zero. ``output`` is
    the start of stdout+stderr (at most ``OUTPUT_INLINE_MAX`` bytes) and
    ``stdout_size`` the size of the whole (capped at the task's ``stdout_max``,
    a notice appended); ``stdout_big`` says the whole waits in the sandbox to be
    kept as a cache file. ``measured`` is [wall s, cpu s, max rss MB] or empty.
    """

    run_id: int
    wall: float
    status: int = 0
    timed_out: bool = False  # killed by the worker for time_max
    end_time_passed: bool = False  # killed by the worker at time_end
    disk_exhausted: bool = False
    output: str = ""
    stdout_size: int = 0
    stdout_big: bool = False
    measured: list[float] = field(default_factory=list)
    setup_error: str = ""
    worker_error: str = ""  # the worker itself failed running it (a bug, not the task)
    python_kind: str = ""
    python_data: bytes | None = None
    python_traceback: str = ""
    library_exit: str = ""  # a FunctionCall whose library instance ended under it: why


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputsCollected(Event):
    """A ``CollectOutputs`` was carried out: what was stored in the cache, what was not."""

    run_id: int
    wall: float
    stored: list[tuple[str, int]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    disk_full: str = ""  # the remote name whose storing hit ENOSPC/EDQUOT, if any
    result_error: str = ""  # why a PythonTask's result file could not be stored
    stdout_stored: int = -1  # size of the stdout file kept in the cache; -1: none
    stdout_error: str = ""  # why the stdout file asked for could not be kept


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputGrew(Event):
    """A watched output of a running task grew: ``data`` is at ``offset`` (``watch.py``)."""

    task_id: int
    attempt: int
    name: str
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class FileLost(Event):
    """A cache file vanished or became unreadable under the worker."""

    name: str
    reason: str


# ====================================================================== instructions
@dataclass(frozen=True, slots=True, kw_only=True)
class Send(Instruction):
    """Send a message to the manager (dropped by the shell when not connected)."""

    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class Log(Instruction):
    """Write one line to the worker's log at ``level`` (DEBUG/INFO/WARNING/ERROR)."""

    level: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect(Instruction):
    """Try to connect to the manager now, for at most ``timeout`` seconds."""

    timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DropConnection(Instruction):
    """Close the manager connection (a ``ConnectionLost`` follows)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StartFetch(Instruction):
    """Copy ``name`` from host:port into a part file tied to ``fetch_id``."""

    fetch_id: int
    name: str
    host: str
    port: int
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitFetch(Instruction):
    """Move the part file of ``fetch_id`` into the cache as ``name``."""

    fetch_id: int
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscardFetch(Instruction):
    """Delete the part file of ``fetch_id`` (unwanted, superseded, or failed)."""

    fetch_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveFile(Instruction):
    """Delete ``name`` from the cache directory."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTask(Instruction):
    """Prepare a sandbox (inputs linked from the cache) and start the task.

    ``inline_max`` is the PythonTask result size up to which the result comes
    back inline; -1 means always into a file (kept in the cache). ``gpu_ids``
    are the gpu indices the task holds (its ``CUDA_VISIBLE_DEVICES``).
    """

    run_id: int
    task: RunTask
    inline_max: int
    gpu_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class KillTask(Instruction):
    """Kill the process of ``run_id``; a ``TaskExited`` follows."""

    run_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectOutputs(Instruction):
    """Move the task's outputs (and a PythonTask result file, and a stdout too big to
    travel inline) from the sandbox into the cache."""

    run_id: int
    outputs: list[tuple[str, str]]  # (cache name, remote name)
    python_result: str = ""  # cache name for the result file, "" if none
    stdout: str = ""  # cache name for the sandbox's stdout file, "" if none


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanupTask(Instruction):
    """The core is done with ``run_id``: release its sandbox and any leftover part file."""

    run_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistForever(Instruction):
    """The FOREVER cache entries are now ``names``: record them on disk, so that a
    worker restarted on the same workdir keeps exactly these files."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit(Instruction):
    """Stop the worker now with exit ``code`` (running processes are killed)."""

    code: int
    reason: str


# ====================================================================== serverless libraries
@dataclass(frozen=True, slots=True, kw_only=True)
class LibraryStartRequested(FromManager):
    """``StartLibrary``: start an instance of a library."""

    library: Message  # the StartLibrary message


@dataclass(frozen=True, slots=True, kw_only=True)
class LibraryStopRequested(FromManager):
    """``StopLibrary``: stop an instance (evicted, or its library removed)."""

    instance_id: int
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LibraryProcessReady(Event):
    """A library instance finished its set-up (its process is ``pid``)."""

    instance_id: int
    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LibraryProcessEnded(Event):
    """A library instance's process is gone (its running calls were reported first, as
    ``TaskExited`` with ``library_exit``)."""

    instance_id: int
    reason: str
    setup_failed: bool = False
    output: str = ""
    pid: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class StartLibraryProcess(Instruction):
    """Prepare the library's sandbox (its inputs linked from the cache) and start its
    process; ``LibraryProcessReady`` or ``LibraryProcessEnded`` follows."""

    library: Message  # the StartLibrary message
    gpu_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StopLibraryProcess(Instruction):
    """Kill a library instance's process (a ``LibraryProcessEnded`` follows)."""

    instance_id: int
