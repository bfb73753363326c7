"""The worker's pure core: cache entries, fetches, tasks, resources, the manager link.

Everything that changes the worker's state lives in this module and the ones
it combines (``base.py``: the attributes and cache entries, ``fetches.py``,
``tasks.py``); none of them touches a socket, a file, a thread, a clock or
asyncio: the shell
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

Cache levels. Every entry has a ``CacheLevel``: the ``Fetch`` that brought it
says which; task outputs (and a stdout kept as a file) are WORKFLOW. When a
manager's connection ends without a ``Shutdown`` the worker stays (unless
single-shot) and drops every TASK and WORKFLOW entry (a pinned one when its
last pin goes; one still being fetched when its transfer ends), keeps WORKER
and FOREVER entries, and announces those in the next ``Hello``. The set of
FOREVER entries is handed to the shell (``PersistForever``) whenever it
changes, so that a worker restarted on the same workdir keeps exactly those.

Tasks. ``RunTask`` checks its end time and its inputs (READY, not doomed) and
commits its resources (and gpu indices) in the ``Ledger`` (an over-commit is
refused with FORSAKEN, so the manager places the task elsewhere); then
``StartTask``. The process exit is classified (``outcome.classify_exit``): a
final verdict, or ``Collect`` (the outputs decide) which leads to
``CollectOutputs`` and ``outcome.classify_outputs`` gives the verdict; a stdout
too big to travel inline is collected into the cache either way (named by
``outcome.stdout_name``) and named in ``TaskDone.stdout_file``.
A killed task (``Kill``, lost connection, stop) releases its resources at
once, is never reported, and keeps its pins until its process has exited.
Tasks are identified to the shell by a ``run_id`` of the core's own, so a task
id reused by a new manager never meets an old process.

The manager link. IDLE (waiting to retry) -> CONNECTING -> HANDSHAKE (Hello
sent) -> CONNECTED (Welcome received) -> ... -> DONE (an ``Exit`` was given).
The worker gives up (exit 1) once it has been without a manager for
``timeout`` seconds (TaskVine's connect timeout); one connection attempt,
handshake included, lasts at most ``attempt_timeout``. Failed attempts are
retried after ``min_backoff`` seconds, doubled per failure up to
``max_backoff``; after a session ends, the first retry comes ``min_backoff``
later. A protocol error during the very first handshake means the peer is not
a vinework manager: exit 2. While connected, a manager silent for the
Welcome's ``keepalive_timeout`` is dropped. A drain (``Leaving`` is sent; no
new task is taken; the worker exits on ``Shutdown``, after ``drain_timeout``,
or when the connection drops) starts at the first SIGTERM while connected,
after ``idle_timeout`` seconds connected with no task and no fetch, and when
the worker's ``wall_time`` is reached (without a manager it then exits at
once); any other stop request exits at once. On a lost connection every task
is given up (killed, not reported: the manager re-runs them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..protocol import PROTOCOL_VERSION, Heartbeat, Hello, Leaving
from ..protocol.auth import manager_proof, same, worker_proof
from ..protocol.messages import CacheReport, OutputChunk, Proof
from .base import ALLOWED, FOREVER, F, InvalidTransition, R
from .events import (
    ERROR,
    INFO,
    WARNING,
    ChallengeReceived,
    Connect,
    ConnectFailed,
    ConnectionLost,
    ConnectionOpened,
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
    LibraryProcessEnded,
    LibraryProcessReady,
    LibraryStartRequested,
    LibraryStopRequested,
    OutputGrew,
    OutputsCollected,
    ParentGone,
    ProtocolViolation,
    RunRequested,
    ShutdownReceived,
    Started,
    StopRequested,
    TaskExited,
    Tick,
    UnlinkRequested,
    WelcomeReceived,
)
from .fetches import FetchHandling
from .libcore import LibraryHandling, LibraryInstance
from .outcome import Resources
from .records import EntryState, Link, TaskState, WorkerConfig
from .tasks import TaskHandling

__all__ = ["ALLOWED", "EntryState", "InvalidTransition", "Link", "WorkerConfig", "WorkerState"]


class WorkerState(FetchHandling, TaskHandling, LibraryHandling):
    """The worker's whole state; ``handle(event)`` is the only way to change it."""

    def __init__(self, config: WorkerConfig, cached: list[tuple[str, int]] | None = None) -> None:
        super().__init__(config, cached)
        self.libraries: dict[int, LibraryInstance] = {}
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            Started: self._on_started, Tick: self._on_tick,
            ConnectionOpened: self._on_opened, ConnectFailed: self._on_connect_failed,
            ConnectionLost: self._on_lost, ProtocolViolation: self._on_violation,
            StopRequested: self._on_stop, ParentGone: self._on_parent_gone,
            WelcomeReceived: self._on_welcome, HeartbeatReceived: lambda ev: None,
            ChallengeReceived: self._on_challenge,
            FetchRequested: self._on_fetch, UnlinkRequested: self._on_unlink,
            RunRequested: self._on_run, KillRequested: self._on_kill,
            ShutdownReceived: self._on_shutdown, FetchFinished: self._on_fetch_finished,
            TaskExited: self._on_task_exited, OutputsCollected: self._on_outputs_collected,
            FileLost: self._on_file_lost, OutputGrew: self._on_output_grew,
            LibraryStartRequested: self._on_start_library,
            LibraryStopRequested: self._on_stop_library,
            LibraryProcessReady: self._on_library_ready,
            LibraryProcessEnded: self._on_library_ended,
        }

    def _on_output_grew(self, ev: OutputGrew) -> None:
        """A watched output grew: pass it on (the manager writes it into the user's file)."""
        self._send(OutputChunk(task_id=ev.task_id, attempt=ev.attempt, name=ev.name,
                               offset=ev.offset, data=ev.data))

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
        self._flush_forever()
        return self._take()

    # ================================================================ the manager link
    def _remaining(self, now: float) -> float:
        since = self.lost_since if self.lost_since is not None else now
        return self.config.timeout - (now - since)

    def _connect(self, now: float) -> None:
        self.link = Link.CONNECTING
        self.retry_at = None
        self._log(INFO, f"connecting to {self.manager}")
        self._emit(Connect(stimulus_id=self._sid,
                           timeout=max(0.0, min(self.config.attempt_timeout,
                                                self._remaining(now)))))

    def _backoff(self) -> float:
        """The pause before the next attempt after ``failures`` failed ones."""
        c = self.config
        return min(c.max_backoff, c.min_backoff * 2.0 ** max(0, self.failures - 1))

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
        self.started_at = ev.now
        self._connect(ev.now)

    def _wall_time_reached(self, now: float) -> bool:
        return self.config.wall_time > 0 and now - self.started_at >= self.config.wall_time

    def _on_tick(self, ev: Tick) -> None:
        now = ev.now
        if self.link is not Link.CONNECTED:
            if self._wall_time_reached(now):
                self._exit(0, f"reached the wall time of {self.config.wall_time:g} s")
                return
            if self._remaining(now) <= 0:
                self._give_up()
                return
            if self.link is Link.IDLE and self.retry_at is not None and now >= self.retry_at:
                self._connect(now)
            elif (self.link is Link.HANDSHAKE and not self.dropping
                  and now - self.opened_at >= self.config.attempt_timeout):
                self._drop(f"no Welcome from {self.manager} within "
                           f"{self.config.attempt_timeout:g} s")
            return
        if self.draining and now >= self.drain_deadline:
            self._exit(0, f"drained: no Shutdown within {self.config.drain_timeout:g} s")
            return
        if self.dropping:
            return
        if not self.draining:
            if self.live or self.fetching:
                self.idle_since = now
            elif self.config.idle_timeout > 0 and \
                    now - self.idle_since >= self.config.idle_timeout:
                self._start_drain(now, f"idle for {self.config.idle_timeout:g} s "
                                  "(--idle-timeout)")
                return
            if self._wall_time_reached(now):
                self._start_drain(now, f"reached the wall time of {self.config.wall_time:g} s "
                                  "(--wall-time)")
                return
        if now - self.last_heard > self.keepalive_timeout:
            self._drop(f"manager silent for {self.keepalive_timeout:g} s")
            return
        if now - self.last_heartbeat >= self.keepalive_interval:
            self.last_heartbeat = now
            self.heartbeat_seq += 1
            self._send(Heartbeat(seq=self.heartbeat_seq, disk_used=self.disk_used(),
                                 running=sorted({r.task.task_id for r in self.runs.values()})))

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
        self.nonce = ev.nonce
        self.challenged = False
        r = self.config.resources
        # nothing about the cache before both sides are known: that goes after the Proof
        self._send(Hello(version=PROTOCOL_VERSION, hostname=self.config.hostname,
                         cores=r.cores, memory=r.memory, disk=r.disk, gpus=r.gpus,
                         transfer_port=self.config.transfer_port, cached=[],
                         features=list(self.config.features), nonce=ev.nonce))

    def _on_challenge(self, ev: ChallengeReceived) -> None:
        """Check the manager's proof of the password, then prove ours (``auth.py``)."""
        if self.challenged:
            self._violation("a second Challenge")
            return
        self.challenged = True
        pw = self.config.password
        if pw and not ev.proof:
            self._exit(1, f"{self.manager} has no password but this worker has one "
                          "(--password): refusing it")
            return
        if pw and not same(ev.proof, manager_proof(pw, self.nonce, ev.nonce)):
            self._exit(1, f"{self.manager} does not know this worker's password: refusing it")
            return
        if not pw and ev.proof:
            self._exit(1, f"{self.manager} requires a password: start the worker with "
                          "--password FILE")
            return
        self._send(Proof(proof=worker_proof(pw, ev.nonce, self.nonce) if pw else ""))
        self._send(CacheReport(cached=self.cached()))

    def _on_connect_failed(self, ev: ConnectFailed) -> None:
        if self.link is not Link.CONNECTING:
            return
        self.failures += 1
        self._retry(ev.now, f"cannot connect to {self.manager}: {ev.reason}", self._backoff())

    def _heard(self, ev: FromManager) -> bool:
        """Note that the manager spoke; False if the message must be ignored."""
        if self.link is Link.HANDSHAKE and not (
                isinstance(ev, ChallengeReceived if not self.challenged else WelcomeReceived)):
            self._violation(f"{type(ev).__name__} before "
                            f"{'Welcome' if self.challenged else 'Challenge'}")
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
        self.last_heard = self.last_heartbeat = self.idle_since = ev.now
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
                        f"({ev.reason})", self._backoff())
            return
        self._log(WARNING, f"disconnected from {self.manager} (as {self.worker_id}): "
                  f"{ev.reason}")
        if self.draining:
            self._exit(0, "drained: the connection ended")
            return
        if self.config.single_shot:
            self._exit(0, "single shot: the manager connection ended")
            return
        self._drop_manager_files()
        self.lost_since = ev.now
        self._retry(ev.now, "waiting for a manager", self.config.min_backoff)

    def _start_drain(self, now: float, why: str) -> None:
        self.draining = True
        self.drain_deadline = now + self.config.drain_timeout
        self._send(Leaving(reason=why))
        self._log(INFO, f"{why}: draining (no new tasks; exit on Shutdown or "
                  f"after {self.config.drain_timeout:g} s; signal again to stop now)")

    def _on_stop(self, ev: StopRequested) -> None:
        if ev.drain and self.link is Link.CONNECTED and not self.draining:
            self._start_drain(ev.now, f"{ev.signal_name}: the worker is being stopped")
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
        for inst in self.libraries.values():  # library instances hold theirs until stopped
            if not inst.released:
                committed = committed + inst.ask
                for name in inst.inputs:
                    pins[name] = pins.get(name, 0) + 1
        assert committed == self.ledger.committed, (committed, self.ledger.committed)
        assert self.ledger.committed.fits_in(self.ledger.total), "resources over-committed"
        held = [g for r in self.runs.values() if r.state is not TaskState.KILLED
                for g in r.gpu_ids]
        held += [g for i in self.libraries.values() if not i.released for g in i.gpu_ids]
        assert sorted(held + self.ledger.free_gpus) == list(range(self.ledger.total.gpus)), \
            ("gpu indices", held, self.ledger.free_gpus)
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
            assert 0 <= entry.level <= FOREVER, f"{name} has cache level {entry.level}"
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

