"""The worker's pure core: cache entries, fetches, tasks, resources, the manager link.

Everything that changes the worker's state lives in this module. It never
touches a socket, a file, a thread, a clock or asyncio: the shell
(``main.py``) turns what happens (messages, process exits, fetch ends, clock
ticks, signals) into events (``events.py``), calls ``WorkerState.handle`` and
carries out the instructions it returns, in order.

Theory of operation
-------------------
Cache entries. Each cache name has at most one ``CacheEntry`` whose state is
FETCHING or READY; FAILED and REMOVED are terminal (the entry is dropped).
Every change of state goes through ``_transition``, which checks the table
``ALLOWED`` and raises ``InvalidTransition`` on any other move. An entry is
*pinned* once per running task that has it as an input; an ``Unlink`` of a
pinned entry only marks it *doomed*, and the file is removed when the last
pin is released (race (c): a task never reads a file deleted under it). A
doomed entry is not offered to new tasks nor reported in ``Hello``; a new
``Fetch`` of it cancels the removal.

Fetches. At most one fetch per name is in flight (``InFlight``, keyed by
name). A second ``Fetch`` of a name that is being fetched joins the one in
flight and gets the same answer (race (a): never two transfers that both
commit). Every ``Fetch`` gets exactly one answer, sent when the transfer it
joined has stopped: ``CacheUpdate`` when the file is in the cache, or
``CacheInvalid`` with a typed ``cause``. When the source of the transfer fails
(``cause.at_source``), only the waiters that named that source are told; the
others are served by a new transfer from their own source.

Unlink during a fetch (race (b)). The entry stays FETCHING but is doomed and
its waiters are moved to the cancelled list. When the transfer ends its bytes
are deleted, never committed, and the entry becomes REMOVED. Each cancelled
``Fetch`` is answered ``CacheInvalid(cause=TransferFailure.NONE)`` ("cancelled
by your Unlink; nothing failed, blame no one"), so the manager can close every
transfer it opened. A ``Fetch`` arriving before the end revives the entry.

Tasks. ``RunTask`` checks its inputs (READY, not doomed) and commits its
resources in the ``Ledger`` (an over-commit is refused with FORSAKEN, so the
manager places the task elsewhere); then ``StartTask``. The process exit is
classified (``outcome.classify_exit``); a success so far leads to
``CollectOutputs`` and ``outcome.classify_outputs`` gives the final verdict.
A killed task (``Kill``, lost connection, stop) releases its resources at
once, is never reported, and keeps its pins until its process has exited.
Tasks are identified to the shell by a ``run_id`` of the core's own, so a task
id reused by a new manager never meets an old process.

The manager link. IDLE (waiting to retry) -> CONNECTING -> HANDSHAKE (Hello
sent) -> CONNECTED (Welcome received) -> ... -> DONE (an ``Exit`` was given).
The worker gives up (exit 1) once it has been without a manager for
``timeout`` seconds; one connection attempt, handshake included, lasts at most
``connect_timeout``. A protocol error during the very first handshake means the
peer is not a vinework manager: exit 2. While connected, a manager silent for
the Welcome's ``keepalive_timeout`` is dropped. The first SIGTERM while
connected starts a drain (``Leaving`` is sent; no new task is taken; the
worker exits on ``Shutdown``, after ``drain_timeout``, or when the connection
drops); any other stop request exits at once. On a lost connection every task
is given up (killed, not reported: the manager re-runs them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from ..constants import TaskResult
from ..protocol import (
    PROTOCOL_VERSION,
    CacheInvalid,
    CacheUpdate,
    Heartbeat,
    Hello,
    Leaving,
    Message,
    RunTask,
    TaskDone,
    TransferFailure,
)
from .cache import CacheError, check_cache_name
from .events import (
    DEBUG,
    ERROR,
    INFO,
    WARNING,
    CleanupTask,
    CollectOutputs,
    CommitFetch,
    Connect,
    ConnectFailed,
    ConnectionLost,
    ConnectionOpened,
    DiscardFetch,
    DropConnection,
    Event,
    Exit,
    FetchFinished,
    FetchRequested,
    FileLost,
    FromManager,
    HeartbeatReceived,
    Instruction,
    KillRequested,
    KillTask,
    Log,
    OutputsCollected,
    ParentGone,
    ProtocolViolation,
    RemoveFile,
    RunRequested,
    Send,
    ShutdownReceived,
    Started,
    StartFetch,
    StartTask,
    StopRequested,
    TaskExited,
    Tick,
    UnlinkRequested,
    WelcomeReceived,
)
from .outcome import Ledger, OverCommit, Resources, Verdict, classify_exit, classify_outputs
from .outcome import inline_limit as _inline_limit
from .records import (
    CacheEntry,
    EntryState,
    InFlight,
    Link,
    TaskRun,
    TaskState,
    Waiter,
    WorkerConfig,
)

STORY_MAX = 100_000  # story records kept (oldest dropped first)
RETRY_AFTER_SESSION = 0.5  # seconds before reconnecting after a session ended
RETRY_MAX = 10.0  # longest pause between two connection attempts


class InvalidTransition(Exception):
    """A cache entry was asked to make a move the table does not allow (a worker bug)."""


F, R, X, D = EntryState.FETCHING, EntryState.READY, EntryState.FAILED, EntryState.REMOVED
ALLOWED: dict[tuple[EntryState | None, EntryState], str] = {
    (None, F): "a Fetch starts a transfer",
    (None, R): "found at start-up, or produced by a task",
    (F, F): "the source failed; another waiter's source is tried",
    (F, R): "the transfer (or a task producing the same name) completed it",
    (F, X): "the transfer failed",
    (F, D): "unlinked during the transfer; its bytes are deleted",
    (R, R): "a task produced it again",
    (R, D): "unlinked (after its last pin) or lost",
}
TERMINAL = (X, D)


class WorkerState:
    """The worker's whole state; ``handle(event)`` is the only way to change it."""

    def __init__(self, config: WorkerConfig, cached: list[tuple[str, int]] | None = None) -> None:
        self.config = config
        self.entries: dict[str, CacheEntry] = {}
        self.fetching: dict[str, InFlight] = {}
        self.runs: dict[int, TaskRun] = {}
        self.live: dict[int, int] = {}  # manager task id -> run id (tasks not given up)
        self.ledger = Ledger(config.resources)
        self.link = Link.IDLE
        self.draining = False
        self.drain_deadline = 0.0
        self.ever_connected = False
        self.worker_id = ""
        self.manager_transfer_port = 0
        self.keepalive_interval = 5.0
        self.keepalive_timeout = 30.0
        self.lost_since: float | None = None
        self.retry_at: float | None = None
        self.failures = 0  # consecutive failed connection attempts
        self.opened_at = 0.0
        self.last_heard = 0.0
        self.last_heartbeat = 0.0
        self.heartbeat_seq = 0
        self.dropping = False
        self.tasks_run = 0
        self._next_fetch = 0
        self._next_run = 0
        self._sid = ""
        self._out: list[Instruction] = []
        self._story: deque[tuple[str | int, str, str]] = deque(maxlen=STORY_MAX)
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            Started: self._on_started, Tick: self._on_tick,
            ConnectionOpened: self._on_opened, ConnectFailed: self._on_connect_failed,
            ConnectionLost: self._on_lost, ProtocolViolation: self._on_violation,
            StopRequested: self._on_stop, ParentGone: self._on_parent_gone,
            WelcomeReceived: self._on_welcome, HeartbeatReceived: lambda ev: None,
            FetchRequested: self._on_fetch, UnlinkRequested: self._on_unlink,
            RunRequested: self._on_run, KillRequested: self._on_kill,
            ShutdownReceived: self._on_shutdown, FetchFinished: self._on_fetch_finished,
            TaskExited: self._on_task_exited, OutputsCollected: self._on_outputs_collected,
            FileLost: self._on_file_lost,
        }
        for name, size in cached or []:
            self._transition(name, R, "in the cache at start-up", size=size)

    # ================================================================ entry point
    def handle(self, event: Event) -> list[Instruction]:
        """Apply one event; return what the shell must do, in order."""
        if self.link is Link.DONE:
            return []
        self._sid = event.stimulus_id
        self._out = []
        if isinstance(event, FromManager) and not self._heard(event):
            return self._take()
        self._handlers[type(event)](event)
        return self._take()

    def _take(self) -> list[Instruction]:
        out, self._out = self._out, []
        return out

    def _emit(self, ins: Instruction) -> None:
        self._out.append(ins)

    def _send(self, msg: Message) -> None:
        if self.link in (Link.HANDSHAKE, Link.CONNECTED):
            self._emit(Send(stimulus_id=self._sid, message=msg))

    def _log(self, level: int, text: str) -> None:
        self._emit(Log(stimulus_id=self._sid, level=level, text=text))

    def _record(self, key: str | int, text: str) -> None:
        self._story.append((key, text, self._sid))

    def story(self, key: str | int) -> list[tuple[str, str]]:
        """The history of a cache name (str) or a task id (int): (what, stimulus id) pairs."""
        return [(text, sid) for k, text, sid in self._story if k == key]

    @property
    def manager(self) -> str:
        return f"{self.config.manager_host}:{self.config.manager_port}"

    # ================================================================ cache entries
    def _transition(self, name: str, to: EntryState, why: str, size: int | None = None) -> None:
        entry = self.entries.get(name)
        start = entry.state if entry is not None else None
        if (start, to) not in ALLOWED:
            raise InvalidTransition(f"cache entry {name}: {start} -> {to} is not allowed ({why})")
        if entry is None:
            entry = self.entries[name] = CacheEntry(name, to)
        entry.state = to
        if size is not None:
            entry.size = size
        self._record(name, f"{start.value if start else '-'} -> {to.value}: {why}")
        if to in TERMINAL:
            if entry.pins:
                raise InvalidTransition(f"cache entry {name} leaves the cache with "
                                        f"{entry.pins} pins")
            del self.entries[name]

    def _remove(self, name: str, why: str) -> None:
        """Delete a READY entry now, or when its last pin goes."""
        entry = self.entries[name]
        if entry.pins:
            entry.doomed = True
            self._record(name, f"doomed ({why}); removed after {entry.pins} pin(s) go")
            return
        self._emit(RemoveFile(stimulus_id=self._sid, name=name))
        self._transition(name, D, why)

    def disk_used(self) -> int:
        """Bytes of the files in the cache."""
        return sum(e.size for e in self.entries.values() if e.state is R and e.size > 0)

    def cached(self) -> list[tuple[str, int]]:
        """The files to announce in ``Hello``: ready and not doomed."""
        return [(e.name, e.size) for e in self.entries.values() if e.state is R and not e.doomed]

    # ================================================================ the manager link
    def _remaining(self, now: float) -> float:
        since = self.lost_since if self.lost_since is not None else now
        return self.config.timeout - (now - since)

    def _connect(self, now: float) -> None:
        self.link = Link.CONNECTING
        self.retry_at = None
        self._log(INFO, f"connecting to {self.manager}")
        self._emit(Connect(stimulus_id=self._sid,
                           timeout=max(0.0, min(self.config.connect_timeout,
                                                self._remaining(now)))))

    def _retry(self, now: float, why: str, delay: float) -> None:
        self.link = Link.IDLE
        remaining = self._remaining(now)
        if remaining <= 0:
            self._give_up()
            return
        delay = min(delay, remaining)
        self.retry_at = now + delay
        self._log(INFO, f"{why}; retrying in {delay:g} s")

    def _give_up(self) -> None:
        self._exit(1, f"no manager at {self.manager} for {self.config.timeout:g} s; giving up")

    def _on_started(self, ev: Started) -> None:
        self.lost_since = ev.now
        self._connect(ev.now)

    def _on_tick(self, ev: Tick) -> None:
        now = ev.now
        if self.link is not Link.CONNECTED:
            if self._remaining(now) <= 0:
                self._give_up()
                return
            if self.link is Link.IDLE and self.retry_at is not None and now >= self.retry_at:
                self._connect(now)
            elif (self.link is Link.HANDSHAKE and not self.dropping
                  and now - self.opened_at >= self.config.connect_timeout):
                self._drop(f"no Welcome from {self.manager} within "
                           f"{self.config.connect_timeout:g} s")
            return
        if self.draining and now >= self.drain_deadline:
            self._exit(0, f"drained: no Shutdown within {self.config.drain_timeout:g} s")
            return
        if self.dropping:
            return
        if now - self.last_heard > self.keepalive_timeout:
            self._drop(f"manager silent for {self.keepalive_timeout:g} s")
            return
        if now - self.last_heartbeat >= self.keepalive_interval:
            self.last_heartbeat = now
            self.heartbeat_seq += 1
            self._send(Heartbeat(seq=self.heartbeat_seq, disk_used=self.disk_used()))

    def _drop(self, reason: str) -> None:
        self.dropping = True
        self._log(WARNING, f"dropping the connection to {self.manager}: {reason}")
        self._emit(DropConnection(stimulus_id=self._sid, reason=reason))

    def _on_opened(self, ev: ConnectionOpened) -> None:
        if self.link is not Link.CONNECTING:
            raise AssertionError(f"connection opened while {self.link.value}")
        self.link = Link.HANDSHAKE
        self.opened_at = ev.now
        self.dropping = False
        r = self.config.resources
        self._send(Hello(version=PROTOCOL_VERSION, hostname=self.config.hostname,
                         cores=r.cores, memory=r.memory, disk=r.disk, gpus=r.gpus,
                         transfer_port=self.config.transfer_port, cached=self.cached()))

    def _on_connect_failed(self, ev: ConnectFailed) -> None:
        if self.link is not Link.CONNECTING:
            return
        self.failures += 1
        self._retry(ev.now, f"cannot connect to {self.manager}: {ev.reason}",
                    min(RETRY_MAX, 2.0 ** (self.failures - 1)))

    def _heard(self, ev: FromManager) -> bool:
        """Note that the manager spoke; False if the message must be ignored."""
        if self.link is Link.HANDSHAKE and not isinstance(ev, WelcomeReceived):
            self._violation(f"{type(ev).__name__} before Welcome")
            return False
        if self.link not in (Link.HANDSHAKE, Link.CONNECTED):
            return False  # left over from a connection that is gone
        self.last_heard = ev.now
        return True

    def _on_welcome(self, ev: WelcomeReceived) -> None:
        if self.link is not Link.HANDSHAKE:
            self._violation("a second Welcome")
            return
        if ev.version != PROTOCOL_VERSION:
            self._violation(f"Welcome of protocol version {ev.version}, "
                            f"this worker speaks {PROTOCOL_VERSION}")
            return
        if ev.keepalive_interval <= 0 or ev.keepalive_timeout <= 0:
            self._violation(f"Welcome with keepalive interval {ev.keepalive_interval} "
                            f"and timeout {ev.keepalive_timeout}")
            return
        self.link = Link.CONNECTED
        self.ever_connected = True
        self.worker_id = ev.worker_id
        self.keepalive_interval = ev.keepalive_interval
        self.keepalive_timeout = ev.keepalive_timeout
        self.manager_transfer_port = ev.transfer_port
        self.last_heard = self.last_heartbeat = ev.now
        self.lost_since = None
        self.failures = 0
        name = f" ({ev.manager_name})" if ev.manager_name else ""
        self._log(INFO, f"connected to {self.manager}{name} as {ev.worker_id}")

    def _violation(self, error: str) -> None:
        if not self.ever_connected:
            self._exit(2, f"{self.manager} does not speak the vinework protocol: {error}")
            return
        if not self.dropping:
            self._log(ERROR, f"the manager broke the protocol: {error}")
            self._drop(f"protocol error: {error}")

    def _on_violation(self, ev: ProtocolViolation) -> None:
        if self.link in (Link.HANDSHAKE, Link.CONNECTED):
            self._violation(ev.error)

    def _on_lost(self, ev: ConnectionLost) -> None:
        if self.link not in (Link.HANDSHAKE, Link.CONNECTED):
            return
        session = self.link is Link.CONNECTED
        self.dropping = False
        self._give_up_tasks("the connection to the manager was lost")
        self._forget_waiters()
        if not session:
            self.failures += 1
            self._retry(ev.now, f"{self.manager} closed the connection during the handshake "
                        f"({ev.reason})", min(RETRY_MAX, 2.0 ** (self.failures - 1)))
            return
        self._log(WARNING, f"disconnected from {self.manager} (as {self.worker_id}): "
                  f"{ev.reason}")
        if self.draining:
            self._exit(0, "drained: the connection ended")
            return
        if self.config.single_shot:
            self._exit(0, "single shot: the manager connection ended")
            return
        self.lost_since = ev.now
        self._retry(ev.now, "waiting for a manager", RETRY_AFTER_SESSION)

    def _on_stop(self, ev: StopRequested) -> None:
        if ev.drain and self.link is Link.CONNECTED and not self.draining:
            self.draining = True
            self.drain_deadline = ev.now + self.config.drain_timeout
            self._send(Leaving(reason=f"{ev.signal_name}: the worker is being stopped"))
            self._log(INFO, f"{ev.signal_name}: draining (no new tasks; exit on Shutdown or "
                      f"after {self.config.drain_timeout:g} s; signal again to stop now)")
            return
        self._exit(0, f"stopped by {ev.signal_name}")

    def _on_parent_gone(self, ev: ParentGone) -> None:
        self._exit(0, f"the parent process {ev.pid} exited")

    def _on_shutdown(self, ev: ShutdownReceived) -> None:
        self._exit(0, f"the manager said shutdown ({ev.reason})")

    def _forget_waiters(self) -> None:
        """Answers cannot reach a manager that is gone: the fetches go on for the cache."""
        for fl in self.fetching.values():
            fl.waiters.clear()
            fl.cancelled.clear()

    def _exit(self, code: int, reason: str) -> None:
        self._give_up_tasks(reason)
        self._forget_waiters()
        self.link = Link.DONE
        self._emit(Exit(stimulus_id=self._sid, code=code, reason=reason))

    # ================================================================ fetches
    def _on_fetch(self, ev: FetchRequested) -> None:
        try:
            check_cache_name(ev.name)
        except CacheError as e:
            self._send(CacheInvalid(name=ev.name, transfer_id=ev.transfer_id, reason=str(e),
                                    cause=TransferFailure.BAD_NAME))
            return
        w = Waiter(ev.transfer_id, ev.host or self.config.manager_host,
                   ev.port or self.manager_transfer_port, ev.size)
        entry = self.entries.get(ev.name)
        if entry is not None and entry.state is R:
            if entry.doomed:
                entry.doomed = False
                self._record(ev.name, f"removal cancelled by Fetch #{ev.transfer_id}")
            self._send(CacheUpdate(name=ev.name, size=entry.size, seconds=0.0,
                                   transfer_id=ev.transfer_id, source=w.source))
            return
        fl = self.fetching.get(ev.name)
        if fl is not None:
            fl.waiters.append(w)
            if entry is None:
                self._transition(ev.name, F, f"Fetch #{ev.transfer_id} revives it")
            else:
                entry.doomed = False
            self._record(ev.name, f"Fetch #{ev.transfer_id} from {w.source} joins "
                         f"fetch {fl.fetch_id} from {fl.source}")
            return
        self._transition(ev.name, F, f"Fetch #{ev.transfer_id} from {w.source}")
        self._start_fetch(ev.name, w, [w])

    def _start_fetch(self, name: str, src: Waiter, waiters: list[Waiter]) -> None:
        self._next_fetch += 1
        fl = InFlight(self._next_fetch, name, src.host, src.port, waiters)
        self.fetching[name] = fl
        self._emit(StartFetch(stimulus_id=self._sid, fetch_id=fl.fetch_id, name=name,
                              host=src.host, port=src.port, size=src.size))

    def _on_fetch_finished(self, ev: FetchFinished) -> None:
        fl = next((f for f in self.fetching.values() if f.fetch_id == ev.fetch_id), None)
        if fl is None:
            raise AssertionError(f"end of unknown fetch {ev.fetch_id}")
        name = fl.name
        del self.fetching[name]
        for w in fl.cancelled:
            self._send(CacheInvalid(name=name, transfer_id=w.transfer_id, source=fl.source,
                                    reason="unlinked during the transfer",
                                    cause=TransferFailure.NONE))
        entry = self.entries.get(name)
        if entry is None or entry.state is not F:
            # unlinked and not asked again, or a task produced the name meanwhile
            self._emit(DiscardFetch(stimulus_id=self._sid, fetch_id=fl.fetch_id))
            for w in fl.waiters:
                self._answer_ready(name, w, 0.0)
            return
        if entry.doomed:
            self._emit(DiscardFetch(stimulus_id=self._sid, fetch_id=fl.fetch_id))
            self._transition(name, D, f"fetch {fl.fetch_id} ended after an Unlink")
            return
        if ev.ok:
            self._emit(CommitFetch(stimulus_id=self._sid, fetch_id=fl.fetch_id, name=name))
            self._transition(name, R, f"fetched from {fl.source} ({ev.size} bytes, "
                             f"{ev.seconds:.3f} s)", size=ev.size)
            for w in fl.waiters:
                self._answer_ready(name, w, ev.seconds)
            return
        self._emit(DiscardFetch(stimulus_id=self._sid, fetch_id=fl.fetch_id))
        cause = TransferFailure(ev.cause) if ev.cause in TransferFailure._value2member_map_ \
            else TransferFailure.UNKNOWN
        told = [w for w in fl.waiters if not cause.at_source or w.source == fl.source]
        rest = [w for w in fl.waiters if w not in told]
        for w in told:
            self._send(CacheInvalid(name=name, transfer_id=w.transfer_id, reason=ev.reason,
                                    source=fl.source, cause=cause))
        if rest:
            self._transition(name, F, f"{fl.source} failed ({ev.reason}); trying {rest[0].source}")
            self._start_fetch(name, rest[0], rest)
            return
        self._transition(name, X, f"fetch from {fl.source} failed: {ev.reason}")

    def _answer_ready(self, name: str, w: Waiter, seconds: float) -> None:
        entry = self.entries[name]
        self._send(CacheUpdate(name=name, size=entry.size, seconds=seconds,
                               transfer_id=w.transfer_id, source=w.source))

    def _on_unlink(self, ev: UnlinkRequested) -> None:
        entry = self.entries.get(ev.name)
        if entry is None:
            return
        if entry.state is F:
            fl = self.fetching[ev.name]
            fl.cancelled.extend(fl.waiters)
            fl.waiters.clear()
            entry.doomed = True
            self._record(ev.name, "doomed by Unlink during the transfer")
            return
        self._remove(ev.name, "Unlink")

    def _on_file_lost(self, ev: FileLost) -> None:
        entry = self.entries.get(ev.name)
        if entry is None or entry.state is not R:
            return
        self._send(CacheInvalid(name=ev.name, transfer_id=0, reason=ev.reason,
                                cause=TransferFailure.LOCAL_IO))
        self._remove(ev.name, f"lost: {ev.reason}")

    # ================================================================ tasks
    def _done(self, task: RunTask, verdict: Verdict, start: float, end: float,
              output: str = "", outputs: list[tuple[str, int]] | None = None) -> None:
        self.tasks_run += 1
        self._record(task.task_id, f"done: {verdict.result} exit {verdict.exit_code} "
                     f"{verdict.message}".rstrip())
        self._log(DEBUG, f"task {task.task_id} finished: {verdict.result}, exit code "
                  f"{verdict.exit_code}" + (f" ({verdict.message})" if verdict.message else ""))
        self._send(TaskDone(task_id=task.task_id, attempt=task.attempt,
                            result=int(verdict.result), exit_code=verdict.exit_code,
                            output=output, start=start, end=end, outputs=outputs or [],
                            python_result=verdict.python_result,
                            python_error=verdict.python_error, message=verdict.message))

    def _on_run(self, ev: RunRequested) -> None:
        task = ev.task
        if task.task_id in self.live:
            self._violation(f"RunTask for task {task.task_id}, which is already running")
            return
        if self.draining:
            self._done(task, Verdict(TaskResult.FORSAKEN, -1, "the worker is draining"),
                       ev.wall, ev.wall)
            return
        for name, remote in task.inputs:
            entry = self.entries.get(name)
            if entry is None or entry.state is not R or entry.doomed:
                self._done(task, Verdict(TaskResult.INPUT_MISSING, -1,
                                         f"input {name} ({remote}) is not in the cache"),
                           ev.wall, ev.wall)
                return
        ask = Resources.of(task)
        try:
            self.ledger.commit(ask)
        except OverCommit as e:
            self._done(task, Verdict(TaskResult.FORSAKEN, -1,
                                     f"worker {self.worker_id} cannot run task "
                                     f"{task.task_id}: it {e}"), ev.wall, ev.wall)
            return
        inputs = tuple(dict.fromkeys(n for n, _ in task.inputs))
        for name in inputs:
            self.entries[name].pins += 1
        self._next_run += 1
        run = TaskRun(self._next_run, task, ask, inputs, ev.wall)
        self.runs[run.run_id] = run
        self.live[task.task_id] = run.run_id
        self._record(task.task_id, f"started as run {run.run_id} ({ask})")
        self._log(DEBUG, f"task {task.task_id} started: "
                  + (task.command[:80] if task.python_payload is None else "PythonTask"))
        self._emit(StartTask(stimulus_id=self._sid, run_id=run.run_id, task=task,
                             inline_max=_inline_limit(task)))

    def _kill_run(self, run: TaskRun, why: str) -> None:
        if run.state is TaskState.KILLED:
            return
        run.state = TaskState.KILLED
        self.ledger.release(run.ask)
        if self.live.get(run.task.task_id) == run.run_id:
            del self.live[run.task.task_id]
        self._record(run.task.task_id, f"given up: {why}")
        self._emit(KillTask(stimulus_id=self._sid, run_id=run.run_id))

    def _give_up_tasks(self, why: str) -> None:
        for run in list(self.runs.values()):
            self._kill_run(run, why)

    def _on_kill(self, ev: KillRequested) -> None:
        rid = self.live.get(ev.task_id)
        if rid is not None:
            self._kill_run(self.runs[rid], "Kill from the manager")

    def _cleanup(self, run: TaskRun) -> None:
        if run.state is not TaskState.KILLED:
            self.ledger.release(run.ask)
            if self.live.get(run.task.task_id) == run.run_id:
                del self.live[run.task.task_id]
        del self.runs[run.run_id]
        self._emit(CleanupTask(stimulus_id=self._sid, run_id=run.run_id))
        for name in run.inputs:
            entry = self.entries[name]
            entry.pins -= 1
            if entry.pins == 0 and entry.doomed:
                self._remove(name, "its last pin was released")

    def _on_task_exited(self, ev: TaskExited) -> None:
        run = self.runs[ev.run_id]
        if run.state is TaskState.KILLED:
            self._cleanup(run)
            return
        if run.state is not TaskState.RUNNING:
            raise AssertionError(f"run {run.run_id} exited twice")
        verdict = classify_exit(
            run.task, status=ev.status, timed_out=ev.timed_out,
            disk_exhausted=ev.disk_exhausted, setup_error=ev.setup_error,
            worker_error=ev.worker_error,
            draining=self.draining, python_kind=ev.python_kind, python_data=ev.python_data,
            python_traceback=ev.python_traceback, hostname=self.config.hostname)
        if verdict is not None:
            self._done(run.task, verdict, run.start, ev.wall, ev.output)
            self._cleanup(run)
            return
        run.state = TaskState.COLLECTING
        run.output = ev.output
        file_result = run.task.python_payload is not None and ev.python_kind == "file"
        run.python_result = ev.python_data if ev.python_kind == "inline" else None
        self._emit(CollectOutputs(stimulus_id=self._sid, run_id=run.run_id,
                                  outputs=list(run.task.outputs),
                                  python_result=run.task.python_output if file_result else ""))

    def _on_outputs_collected(self, ev: OutputsCollected) -> None:
        run = self.runs[ev.run_id]
        if run.state is TaskState.KILLED:
            for name, _ in ev.stored:
                self._discard_output(name)
            self._cleanup(run)
            return
        if run.state is not TaskState.COLLECTING:
            raise AssertionError(f"outputs of run {run.run_id} collected while {run.state}")
        verdict = classify_outputs(missing=ev.missing, disk_full=ev.disk_full,
                                   result_error=ev.result_error,
                                   python_result=run.python_result)
        if verdict.result is TaskResult.SUCCESS:
            for name, size in ev.stored:
                self._transition(name, R, f"produced by task {run.task.task_id}", size)
                self.entries[name].doomed = False
                fl = self.fetching.get(name)
                if fl is not None:  # a transfer of the same name is superseded: answer it now
                    for w in fl.waiters:
                        self._answer_ready(name, w, 0.0)
                    fl.waiters.clear()
            self._done(run.task, verdict, run.start, ev.wall, run.output, list(ev.stored))
        else:
            for name, _ in ev.stored:
                self._discard_output(name)
            self._done(run.task, verdict, run.start, ev.wall, run.output)
        self._cleanup(run)

    def _discard_output(self, name: str) -> None:
        """Delete an output stored by a task that failed (or was given up)."""
        entry = self.entries.get(name)
        if entry is None or entry.state is not R:
            self._emit(RemoveFile(stimulus_id=self._sid, name=name))
            return
        # the stored file replaced an older copy the manager knows of: that copy is gone
        self._send(CacheInvalid(name=name, transfer_id=0, cause=TransferFailure.LOCAL_IO,
                                reason="replaced by the output of a failed task"))
        self._remove(name, "replaced by the output of a failed task")

    # ================================================================ invariants
    def validate_state(self) -> None:
        """Raise AssertionError if any invariant does not hold (tests call it after each step)."""
        pins: dict[str, int] = {}
        committed = Resources()
        for rid, run in self.runs.items():
            assert run.run_id == rid
            for name in run.inputs:
                pins[name] = pins.get(name, 0) + 1
            if run.state is not TaskState.KILLED:
                committed = committed + run.ask
                assert self.live.get(run.task.task_id) == rid, f"run {rid} not live"
        for tid, rid in self.live.items():
            run = self.runs[rid]
            assert run.task.task_id == tid and run.state is not TaskState.KILLED
        assert committed == self.ledger.committed, (committed, self.ledger.committed)
        assert self.ledger.committed.fits_in(self.ledger.total), "resources over-committed"
        for name, entry in self.entries.items():
            assert entry.name == name
            assert entry.state in (F, R), f"{name} kept in terminal state {entry.state}"
            assert entry.pins == pins.get(name, 0), (name, entry.pins, pins.get(name, 0))
            if entry.state is F:
                assert name in self.fetching, f"{name} FETCHING without a fetch in flight"
                assert entry.pins == 0, f"{name} pinned while FETCHING"
                if entry.doomed:
                    assert not self.fetching[name].waiters, f"doomed {name} has waiters"
            else:
                assert entry.size >= 0, f"{name} READY without a size"
                assert not entry.doomed or entry.pins > 0, f"{name} doomed and unpinned"
        for name in pins:
            assert name in self.entries, f"pinned {name} has no entry"
        ids = [fl.fetch_id for fl in self.fetching.values()]
        assert len(ids) == len(set(ids)), "two fetches share an id"
        for name, fl in self.fetching.items():
            assert fl.name == name
            if fl.waiters:
                owner = self.entries.get(name)
                assert owner is not None and owner.state is F, f"{name} waiters without entry"
            if self.link not in (Link.HANDSHAKE, Link.CONNECTED):
                assert not fl.waiters and not fl.cancelled, f"{name}: waiters while offline"
        if self.link not in (Link.CONNECTED, Link.HANDSHAKE):
            assert not self.live, "tasks live without a manager"
        if self.draining:
            assert self.link in (Link.CONNECTED, Link.DONE)
