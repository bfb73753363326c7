"""The base of the worker's core: its attributes, its instruction helpers, its cache entries.

``CoreBase`` holds every attribute of the core (``state.WorkerState`` is
``CoreBase`` with the fetch, task and link handlers mixed in: see ``state.py``
for the theory of operation) and the one place where a cache entry changes
state: ``_transition``, checked against the table ``ALLOWED``. Pure: no I/O,
no clock.
"""

from __future__ import annotations

from collections import deque

from ..constants import CacheLevel
from ..protocol import Message
from .events import Instruction, Log, PersistForever, RemoveFile, Send
from .outcome import Ledger
from .records import (
    CacheEntry,
    EntryState,
    InFlight,
    Link,
    TaskRun,
    WorkerConfig,
)

STORY_MAX = 100_000  # story records kept (oldest dropped first)
FOREVER = int(CacheLevel.FOREVER)
WORKFLOW = int(CacheLevel.WORKFLOW)


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


class CoreBase:
    """The attributes of the worker's core, its instruction helpers and its cache entries."""

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
        self.started_at = 0.0
        self.idle_since = 0.0
        self._forever_dirty = False
        self._next_fetch = 0
        self._next_run = 0
        self._sid = ""
        self._out: list[Instruction] = []
        self._story: deque[tuple[str | int, str, str]] = deque(maxlen=STORY_MAX)
        for name, size in cached or []:
            # the shell keeps at start-up only the files recorded as FOREVER
            self._transition(name, R, "in the cache at start-up", size=size)
            self.entries[name].level = FOREVER

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

    def _flush_forever(self) -> None:
        """Hand the FOREVER set to the shell if it changed during this event."""
        if self._forever_dirty:
            self._forever_dirty = False
            self._emit(PersistForever(stimulus_id=self._sid, names=self.forever()))

    def _violation(self, error: str) -> None:
        """The manager broke the protocol (see ``state.py``)."""
        raise NotImplementedError

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
        if entry.level >= FOREVER and (to in TERMINAL or (to is R and start is not R)):
            self._forever_dirty = True
        self._record(name, f"{start.value if start else '-'} -> {to.value}: {why}")
        if to in TERMINAL:
            if entry.pins:
                raise InvalidTransition(f"cache entry {name} leaves the cache with "
                                        f"{entry.pins} pins")
            del self.entries[name]

    def _raise_level(self, entry: CacheEntry, level: int) -> None:
        """Keep ``entry`` at least as long as ``level`` says (levels only go up)."""
        level = max(0, min(FOREVER, level))
        if level > entry.level:
            entry.level = level
            self._record(entry.name, f"cache level {CacheLevel(level).name}")
            if level >= FOREVER and entry.state is R:
                self._forever_dirty = True

    def forever(self) -> tuple[str, ...]:
        """The names of the READY entries of level FOREVER, sorted."""
        return tuple(sorted(e.name for e in self.entries.values()
                            if e.state is R and e.level >= FOREVER))

    def _drop_manager_files(self) -> None:
        """The manager is gone: drop its TASK and WORKFLOW entries, keep the others."""
        for entry in list(self.entries.values()):
            if entry.level > WORKFLOW:
                continue
            if entry.state is F:
                if not entry.doomed:
                    entry.doomed = True  # its bytes are deleted when the transfer ends
                    self._record(entry.name, "doomed: its manager is gone")
            elif not entry.doomed:
                self._remove(entry.name, "its manager is gone")

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

