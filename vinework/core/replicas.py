"""Pure bookkeeping of where each file lives and which transfers are in flight.

Theory of operation: a replica is a copy of a file in one worker's cache,
PENDING while it is being transferred or produced and READY once the worker
confirmed it. Every change of a replica's state goes through ``_set``, which
checks it against ``transitions.REPLICA``. A transfer has one source: a peer
worker or the manager (``MANAGER``); each source serves at most ``limit``
transfers at once, and a source that failed is avoided until a given time.
A URL file has one more source, its origin (``origin_source``: the URL
itself names the source, so the limit is per URL), which a worker fetches
from directly; the table counts the failed fetches of each URL file
(``origin_failed``) so that the core can stop after a bounded number.
Iteration orders are insertion orders (dicts, never sets of strings), so the
same inputs give the same decisions under any hash seed. No I/O, no clock:
times come from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .transitions import check_replica

MANAGER = "manager"


def is_origin(source: str) -> bool:
    """True when a transfer's source is a URL (a worker fetches it from there itself);
    a worker id or ``MANAGER`` never contains "://"."""
    return "://" in source


class ReplicaState(Enum):
    __hash__ = object.__hash__  # members are singletons: hash by identity (hot path)
    PENDING = "pending"
    READY = "ready"


_PENDING = ReplicaState.PENDING  # (plain names: Enum class attributes are slow in 3.11)
_READY = ReplicaState.READY


@dataclass(slots=True)
class Transfer:
    """A file on its way into a worker's cache."""

    transfer_id: int
    name: str
    dest: str
    source: str  # a worker id or MANAGER
    started: float
    replication: bool = False  # made by the durability policy, not for a task


class ReplicaTable:
    """Which workers hold (or are getting) which files, and the transfers between them."""

    def __init__(self) -> None:
        self.where: dict[str, dict[str, ReplicaState]] = {}
        self.sizes: dict[tuple[str, str], int] = {}
        self.by_worker: dict[str, dict[str, None]] = {}  # ordered sets
        self.bytes_by_worker: dict[str, int] = {}
        self.transfers: dict[int, Transfer] = {}
        self.pending_by_dest: dict[tuple[str, str], int] = {}  # (name, dest) -> transfer id
        self.source_load: dict[str, int] = {}
        self.avoid_until: dict[str, float] = {}
        self.origin_failures: dict[str, int] = {}  # URL file -> failed fetches from its URL
        self.origin_errors: dict[str, str] = {}  # URL file -> what its last failure said
        # (name, worker) -> when it last arrived there or was used by a task placed there
        # (a sequence number: least-recently-used eviction, see eviction.py)
        self.used: dict[tuple[str, str], int] = {}
        self._use_seq = 0
        self._next_transfer = 1

    # ---------------------------------------------------------- queries
    @property
    def next_transfer_id(self) -> int:
        """The id the next transfer will get (every id below it was given out)."""
        return self._next_transfer

    def state(self, name: str, worker: str) -> ReplicaState | None:
        h = self.where.get(name)
        return h.get(worker) if h is not None else None

    def ready_workers(self, name: str) -> list[str]:
        h = self.where.get(name)
        if h is None:
            return []
        return [w for w, s in h.items() if s is _READY]

    def count_ready(self, name: str) -> int:
        h = self.where.get(name)
        if h is None:
            return 0
        return sum(1 for s in h.values() if s is _READY)

    def holders(self, name: str) -> list[str]:
        """Workers with a replica in any state."""
        h = self.where.get(name)
        return list(h) if h is not None else []

    def files_on(self, worker: str) -> list[str]:
        return list(self.by_worker.get(worker, ()))

    def bytes_on(self, worker: str) -> int:
        return self.bytes_by_worker.get(worker, 0)

    # ---------------------------------------------------------- changes
    def _set(self, name: str, worker: str, new: ReplicaState | None, size: int = 0) -> None:
        h = self.where.get(name)
        old = h.get(worker) if h is not None else None
        check_replica(old._value_ if old is not None else None,
                      new._value_ if new is not None else None)
        if new is None:
            if h is not None:
                del h[worker]
                if not h:
                    del self.where[name]
            files = self.by_worker.get(worker)
            if files is not None:
                files.pop(name, None)
            self.bytes_by_worker[worker] = (self.bytes_by_worker.get(worker, 0)
                                            - self.sizes.pop((name, worker), 0))
            self.used.pop((name, worker), None)
            return
        if h is None:
            h = self.where[name] = {}
        h[worker] = new
        self.by_worker.setdefault(worker, {})[name] = None
        if new is _READY:
            size = max(0, size)
            before = self.sizes.get((name, worker), 0)
            self.sizes[(name, worker)] = size
            self.bytes_by_worker[worker] = self.bytes_by_worker.get(worker, 0) + size - before
            self._use_seq += 1
            self.used[(name, worker)] = self._use_seq

    def is_ready(self, name: str, worker: str) -> bool:
        h = self.where.get(name)
        return h is not None and h.get(worker) is _READY

    def touch(self, name: str, worker: str) -> None:
        """``name`` on ``worker`` was just used (by a task placed there)."""
        self._use_seq += 1
        self.used[(name, worker)] = self._use_seq

    def set_ready(self, name: str, worker: str, size: int) -> None:
        tid = self.pending_by_dest.get((name, worker))
        if tid is not None:  # made there (e.g. by a re-run) while a copy was on its way:
            self.end_transfer(tid)  # the copy is not needed; its answer will be stale
        self._set(name, worker, _READY, size)

    def set_pending(self, name: str, worker: str) -> None:
        self._set(name, worker, _PENDING)

    def remove(self, name: str, worker: str) -> bool:
        """Forget the copy of ``name`` on ``worker``, and a transfer of it there under way
        (its answer will be stale); whether there was such a transfer."""
        if self.state(name, worker) is None:
            return False
        tid = self.pending_by_dest.get((name, worker))
        if tid is not None:
            self.end_transfer(tid)
        self._set(name, worker, None)
        return tid is not None

    def forget_file(self, name: str) -> list[str]:
        """Drop every replica of ``name`` and its transfers in flight; return the workers
        that held (or were getting) one."""
        workers = self.holders(name)
        for tid in [t.transfer_id for t in self.transfers.values() if t.name == name]:
            self.end_transfer(tid)
        for w in workers:
            self._set(name, w, None)
        self.origin_failures.pop(name, None)
        self.origin_errors.pop(name, None)
        return workers

    def drop_worker(self, worker: str) -> tuple[list[str], list[Transfer]]:
        """Forget a worker: the files it held and the transfers to or from it."""
        names = self.files_on(worker)
        for n in names:
            self._set(n, worker, None)
        self.by_worker.pop(worker, None)
        self.bytes_by_worker.pop(worker, None)
        dead = [t for t in self.transfers.values() if t.dest == worker or t.source == worker]
        for t in dead:
            self.end_transfer(t.transfer_id)
        self.source_load.pop(worker, None)
        self.avoid_until.pop(worker, None)
        return names, dead

    # ---------------------------------------------------------- transfers
    def pick_source(
        self, name: str, dest: str, now: float, limit: int, peers_ok: bool, at_manager: bool,
        origin: str = "",
    ) -> str | None:
        """The least busy usable source for ``name``: a peer first, then the manager, then
        (a URL file) ``origin``, the URL, while fewer than ``limit`` fetches of it run."""
        best: str | None = None
        best_load = limit
        if peers_ok:
            for w in self.ready_workers(name):
                if w == dest or self.avoid_until.get(w, 0.0) > now:
                    continue
                load = self.source_load.get(w, 0)
                if load < best_load:
                    best, best_load = w, load
        if best is None and at_manager:
            if self.source_load.get(MANAGER, 0) < limit * 4:
                return MANAGER
        if best is None and origin and self.source_load.get(origin, 0) < limit:
            return origin
        return best

    def start_transfer(self, name: str, dest: str, source: str, now: float,
                       replication: bool = False) -> Transfer:
        t = Transfer(self._next_transfer, name, dest, source, now, replication)
        self._next_transfer += 1
        self.transfers[t.transfer_id] = t
        self.pending_by_dest[(name, dest)] = t.transfer_id
        self.source_load[source] = self.source_load.get(source, 0) + 1
        self.set_pending(name, dest)
        return t

    def end_transfer(self, transfer_id: int) -> Transfer | None:
        t = self.transfers.pop(transfer_id, None)
        if t is None:
            return None
        if self.pending_by_dest.get((t.name, t.dest)) == transfer_id:
            del self.pending_by_dest[(t.name, t.dest)]
        n = self.source_load.get(t.source, 0) - 1
        if n > 0:
            self.source_load[t.source] = n
        else:
            self.source_load.pop(t.source, None)
        return t

    def avoid(self, source: str, until: float) -> None:
        self.avoid_until[source] = until

    def in_flight_to(self, name: str, dest: str) -> int | None:
        return self.pending_by_dest.get((name, dest))

    def in_flight(self, name: str) -> list[Transfer]:
        """Every transfer of ``name`` under way (to any worker)."""
        return [t for t in self.transfers.values() if t.name == name]

    # ---------------------------------------------------------- URL origins
    def origin_failed(self, name: str) -> int:
        """Count one more failed fetch of URL file ``name`` from its URL; return the count."""
        n = self.origin_failures.get(name, 0) + 1
        self.origin_failures[name] = n
        return n

    def origin_reset(self, name: str) -> None:
        """Start counting again (a fetch succeeded, or the consumers were ended)."""
        self.origin_failures.pop(name, None)
        self.origin_errors.pop(name, None)
