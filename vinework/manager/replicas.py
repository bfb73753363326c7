"""Pure bookkeeping of where each file lives and which transfers are in flight.

A replica is a copy of a file in one worker's cache, PENDING while it is being
transferred or produced and READY once the worker confirmed it. A transfer
has one source: a peer worker or the manager (``MANAGER``). Each source serves
at most ``limit`` transfers at once; a source that failed is avoided until a
given time. No I/O, no clock: times come from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

MANAGER = "manager"


class ReplicaState(Enum):
    PENDING = "pending"
    READY = "ready"


@dataclass(slots=True)
class Transfer:
    """A file on its way into a worker's cache."""

    transfer_id: int
    name: str
    dest: str
    source: str  # a worker id or MANAGER
    started: float


class ReplicaTable:
    """Which workers hold (or are getting) which files, and the transfers between them."""

    def __init__(self) -> None:
        self.where: dict[str, dict[str, ReplicaState]] = {}
        self.sizes: dict[tuple[str, str], int] = {}
        self.by_worker: dict[str, set[str]] = {}
        self.transfers: dict[int, Transfer] = {}
        self.pending_by_dest: dict[tuple[str, str], int] = {}  # (name, dest) -> transfer id
        self.source_load: dict[str, int] = {}
        self.avoid_until: dict[str, float] = {}
        self._next_transfer = 1

    # ---------------------------------------------------------- queries
    def state(self, name: str, worker: str) -> ReplicaState | None:
        return self.where.get(name, {}).get(worker)

    def ready_workers(self, name: str) -> list[str]:
        return [w for w, s in self.where.get(name, {}).items() if s is ReplicaState.READY]

    def count_ready(self, name: str) -> int:
        return sum(1 for s in self.where.get(name, {}).values() if s is ReplicaState.READY)

    def holders(self, name: str) -> list[str]:
        """Workers with a replica in any state."""
        return list(self.where.get(name, {}))

    def files_on(self, worker: str) -> set[str]:
        return self.by_worker.get(worker, set())

    def bytes_on(self, worker: str) -> int:
        return sum(max(0, self.sizes.get((n, worker), 0)) for n in self.by_worker.get(worker, ()))

    # ---------------------------------------------------------- changes
    def set_ready(self, name: str, worker: str, size: int) -> None:
        self.where.setdefault(name, {})[worker] = ReplicaState.READY
        self.by_worker.setdefault(worker, set()).add(name)
        self.sizes[(name, worker)] = size

    def set_pending(self, name: str, worker: str) -> None:
        self.where.setdefault(name, {})[worker] = ReplicaState.PENDING
        self.by_worker.setdefault(worker, set()).add(name)

    def remove(self, name: str, worker: str) -> None:
        holders = self.where.get(name)
        if holders is not None:
            holders.pop(worker, None)
            if not holders:
                del self.where[name]
        files = self.by_worker.get(worker)
        if files is not None:
            files.discard(name)
        self.sizes.pop((name, worker), None)

    def forget_file(self, name: str) -> list[str]:
        """Drop every replica of ``name``; return the workers that held one."""
        workers = list(self.where.pop(name, {}))
        for w in workers:
            self.by_worker.get(w, set()).discard(name)
            self.sizes.pop((name, w), None)
        return workers

    def drop_worker(self, worker: str) -> tuple[set[str], list[Transfer]]:
        """Forget a worker: the files it held and the transfers to or from it."""
        names = self.by_worker.pop(worker, set())
        for n in names:
            holders = self.where.get(n)
            if holders is not None:
                holders.pop(worker, None)
                if not holders:
                    del self.where[n]
            self.sizes.pop((n, worker), None)
        dead = [t for t in self.transfers.values() if t.dest == worker or t.source == worker]
        for t in dead:
            self.end_transfer(t.transfer_id)
        self.source_load.pop(worker, None)
        self.avoid_until.pop(worker, None)
        return names, dead

    # ---------------------------------------------------------- transfers
    def pick_source(
        self, name: str, dest: str, now: float, limit: int, peers_ok: bool, at_manager: bool
    ) -> str | None:
        """The least busy usable source for ``name`` (a peer first, then the manager)."""
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
        return best

    def start_transfer(self, name: str, dest: str, source: str, now: float) -> Transfer:
        t = Transfer(self._next_transfer, name, dest, source, now)
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
