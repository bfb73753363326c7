"""Keeping every worker's cache within its disk: least-recently-used eviction.

Workers never delete a cached file on their own; the core decides, because
only it knows which copies are still needed. A worker's budget is the disk it
offered (``--disk``); the bytes it holds are the sizes of its replicas plus
what it kept from an earlier manager that nobody has claimed. Two moments
call for room:

- placing a task whose missing inputs do not fit beside what is cached there
  (``_can_host``: a worker counts as able to host it when evicting would make
  room; ``_make_room_for`` then evicts on the chosen worker only);
- a file arriving or a task's outputs landing that bring the worker over its
  budget (``_trim_cache``).

A worker whose disk turns out to be full when a file is written there (a
transfer fails with DISK_FULL or a local I/O error) takes no new inputs for
``NO_ROOM_BACKOFF`` seconds, and the tasks that waited for that file there go
to another worker (charged as the worker's fault): no storm of transfers to a
full disk.

Victims, oldest use first (``ReplicaTable.used``: every replica's last
arrival or use by a task placed there): unclaimed files from an earlier
manager first, then ready replicas. Never evicted: an input of a task that is
staging or running on that worker, an input of a mini task waiting there, a
file on its way to the manager from there, and the last copy of a temp that
is not pruned (evicting it would lose work a pending or future task needs).
Pure: no I/O, no clock.
"""

from __future__ import annotations

from ..constants import TaskResult
from ..protocol import Unlink
from .base import CoreBase
from .records import RunOutcome, TaskRecord, TaskState, WorkerRecord

MB = 1 << 20
NO_ROOM_BACKOFF = 10.0  # seconds a worker whose disk filled up takes no new inputs


class CacheEviction(CoreBase):
    """LRU eviction of cached files that the run no longer depends on there."""

    def _protected(self, wid: str) -> set[str]:
        """Names on ``wid`` that must stay: inputs of its tasks and of its waiting mini
        tasks, and files being retrieved from it."""
        keep: set[str] = set()
        w = self.workers.get(wid)
        if w is not None:
            for tid in w.running:
                t = self.tasks.get(tid)
                if t is not None:
                    keep.update(n for n, _ in t.spec.inputs)
        keep.update(i for (i, d) in self._mini_wait if d == wid)
        keep.update(r.name for r in self._retrievals.values() if r.worker == wid)
        return keep

    def _victims(self, wid: str, keep: set[str]) -> list[tuple[int, str, int, bool]]:
        """(last use, name, size, unclaimed) of what could go from ``wid``, oldest first."""
        out: list[tuple[int, str, int, bool]] = []
        for name, holders in self._unclaimed.items():
            size = holders.get(wid)
            if size is not None:
                out.append((-1, name, size, True))
        reps = self.replicas
        for name in reps.files_on(wid):
            if name in keep or not reps.is_ready(name, wid):
                continue
            f = self.files.get(name)
            if f is None:
                continue  # a result or a stdout file on its way back: the core's own
            if f.spec.kind == "temp" and not f.pruned and not f.at_manager \
                    and reps.count_ready(name) <= 1:
                continue  # the last copy of an intermediate
            out.append((reps.used.get((name, wid), 0), name, reps.sizes.get((name, wid), 0),
                        False))
        out.sort()
        return out

    def _held(self, wid: str) -> int:
        """Bytes of cached files on ``wid`` (replicas and unclaimed files)."""
        extra = sum(h.get(wid, 0) for h in self._unclaimed.values()) if self._unclaimed else 0
        return self.replicas.bytes_on(wid) + extra

    def _evict(self, wid: str, need: int, why: str) -> int:
        """Evict from ``wid`` until ``need`` bytes are freed (or nothing more may go);
        return the bytes freed."""
        freed = 0
        for _, name, size, unclaimed in self._victims(wid, self._protected(wid)):
            if freed >= need:
                break
            freed += self._evict_one(wid, name, size, unclaimed, why)
        return freed

    def _missing_bytes(self, w: WorkerRecord, t: TaskRecord) -> int:
        total = 0
        for name, _ in t.spec.inputs:
            if self.replicas.state(name, w.worker_id) is None:
                f = self.files.get(name)
                if f is not None and f.size > 0:
                    total += f.size
        return total

    def _can_host(self, w: WorkerRecord, t: TaskRecord) -> bool:
        """Whether ``w``'s disk can take ``t``'s missing inputs, evicting if need be."""
        if self._full_until and self._full_until.get(w.worker_id, 0.0) > self.now \
                and self._missing_bytes(w, t) > 0:
            return False  # its disk filled up a moment ago
        if self.durability.can_host(w, t):
            return True
        short = self._missing_bytes(w, t) - self.durability.disk_free(w)
        wid = w.worker_id
        keep = self._protected(wid)
        return sum(size for _, _, size, _ in self._victims(wid, keep)) >= short

    def _make_room_for(self, t: TaskRecord, wid: str) -> None:
        """``t`` goes to ``wid``: mark its cached inputs used, and evict for the rest."""
        reps = self.replicas
        for name, _ in t.spec.inputs:
            if reps.is_ready(name, wid):
                reps.touch(name, wid)
        w = self.workers[wid]
        if self.durability.can_host(w, t):
            return
        short = self._missing_bytes(w, t) - self.durability.disk_free(w)
        if short > 0:
            keep = self._protected(wid) | {n for n, _ in t.spec.inputs}
            freed = 0
            for _, name, size, unclaimed in self._victims(wid, keep):
                if freed >= short:
                    break
                freed += self._evict_one(wid, name, size, unclaimed,
                                         f"room for task {t.spec.task_id}")

    def _evict_one(self, wid: str, name: str, size: int, unclaimed: bool, why: str) -> int:
        if unclaimed:
            holders = self._unclaimed.get(name, {})
            holders.pop(wid, None)
            if not holders:
                self._unclaimed.pop(name, None)
        else:
            self.replicas.remove(name, wid)
            self.file_story_add(name, f"evicted from {wid} ({why})")
        self._send(wid, Unlink(name=name))
        self._log("FILE", name, "EVICTED", wid, size, why)
        self.stats.files_evicted += 1
        return size

    def _trim_cache(self, wid: str) -> None:
        """Bring ``wid`` back within its disk budget if what it holds went over."""
        w = self.workers.get(wid)
        if w is None or w.total.disk <= 0:
            return
        over = self._held(wid) - w.total.disk * MB
        if over > 0:
            self._evict(wid, over, "over its disk budget")

    def _no_room(self, name: str, wid: str, reason: str) -> None:
        """Writing ``name`` on ``wid`` failed for want of room: back off from that worker
        and run the tasks that waited for it there elsewhere."""
        self._full_until[wid] = self.now + NO_ROOM_BACKOFF
        self.file_story_add(name, f"no room on {wid}: {reason[:160]}")
        self._unsourced.pop((name, wid), None)
        for tid in list(self._stage_wait.pop((name, wid), {})):
            t = self.tasks.get(tid)
            if t is None or t.state is not TaskState.STAGING or t.worker != wid:
                continue
            t.avoid = t.avoid | {wid}
            if all(w in t.avoid for w in self.workers):
                t.avoid = frozenset({wid})
            self._run_lost(t, RunOutcome.WORKER_FAULT, f"no room for input {name} on {wid}",
                           TaskResult.DISK_EXHAUSTION)

