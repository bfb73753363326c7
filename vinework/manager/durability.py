"""Pure durability decisions: replicate, checkpoint, prune, and account for recoveries.

``ManagerState`` calls these hooks as things happen; the decisions here read
the state and act through the state's own helpers (which append commands).
No I/O and no clock: times come from events.

Policies
--------
auto is the default since the chaos benchmark (``bench/bench_chaos.py``: 500 tasks,
4 workers, a worker killed every 2-5 s) showed it ahead of one copy in two runs
(16.6 s vs 16.9 s and 17.4 s vs 18.2 s makespan, a third to a half of the
recomputation) and of two replicas; with no worker lost it keeps one copy, exactly
as manual does. ``m.tune("durability", "manual")`` returns to TaskVine's behaviour.

manual: one copy of each temp plus recomputation on loss; temps
declared with ``checkpoint=True`` are copied to the manager (or the
``checkpoint-dir``) once made; ``temp-replica-count`` k keeps k copies on
distinct workers, made peer-to-peer in the background.

auto: for each temp once it is made, compare
the expected cost of each choice, in seconds:

    keep one copy : p * R
    two replicas  : C_peer + p**2 * R
    checkpoint    : C_mgr * W

where R is the time to recompute the file (its producer's run time plus that
of every producer along its lineage whose output has no safe copy), C_peer
and C_mgr are its size over the measured peer and worker->manager bandwidths,
W the number of connected workers (the manager's link is shared by all of
them), and p = 1 - exp(-lambda * H) the chance that the worker holding it is
lost within the horizon H (ten mean task durations, at least 10 s), with
lambda the observed rate of worker loss per worker-second in this run. With no
loss observed, p = 0 and one copy wins. Each decision is logged with its numbers.

Pruning: a temp is deleted from every worker once it is made, no unfinished
task consumes it, and the user no longer holds its File (or undeclared it).
"""

from __future__ import annotations

import math
import posixpath
from typing import TYPE_CHECKING

from ..protocol import Unlink
from .records import TState

if TYPE_CHECKING:
    from .state import FileRecord, ManagerState, TaskRecord, WorkerRecord

MB = 1 << 20


class Durability:
    """Per-file durability policy of one manager."""

    def __init__(self, state: ManagerState) -> None:
        self.s = state
        self.recovering: dict[int, float] = {}  # task id -> when its recovery run began
        self.run_seconds: dict[int, float] = {}
        self.wanted_copies: dict[str, int] = {}  # temp -> copies the policy wants
        self.released: set[str] = set()  # temps whose user handle is gone, not yet pruned
        self.user_released: set[str] = set()  # every temp whose user handle is gone
        self._check: set[str] = set()  # released temps to look at after this event
        self.peer_bw = 100e6  # bytes/s, refined by measurement
        self.mgr_bw = 100e6
        self.start: float | None = None
        self.worker_seconds = 0.0
        self._last = 0.0
        self.decisions: dict[str, str] = {}

    # ----------------------------------------------------------- bookkeeping
    def _story(self, name: str, text: str) -> None:
        self.s.story(name, text)

    def after_event(self) -> None:
        """Called after every event: accrue worker-time, make wanted replicas, prune."""
        s = self.s
        if self.start is None:
            self.start = s.now
            self._last = s.now
        self.worker_seconds += max(0.0, s.now - self._last) * len(s.workers)
        self._last = s.now
        if self.wanted_copies:
            self._replicate()
        if self._check:
            self._prune()

    def worker_lost(self, worker_id: str, names: set[str]) -> None:
        for n in names:
            f = self.s.files.get(n)
            if f is not None and f.spec.kind == "temp":
                self._story(n, f"copy lost with worker {worker_id}")
                k = self.s.tune.temp_replica_count
                if self.decisions.get(n) == "replicate":  # the auto policy's choice holds
                    k = max(k, 2)
                if k > 1 or n in self.wanted_copies:
                    self.wanted_copies.setdefault(n, k)

    def recovery_started(self, task_id: int, name: str) -> None:
        self.recovering.setdefault(task_id, self.s.now)
        self._story(name, f"lost and needed: re-running task {task_id}")

    def recovery_finished(self, task_id: int, now: float) -> None:
        began = self.recovering.pop(task_id, None)
        if began is not None:
            secs = max(0.0, now - began)
            self.s.stats.recovery_seconds += secs
            t = self.s.tasks.get(task_id)
            if t is not None:
                for n in self.s._outputs_of(t):
                    self._story(n, f"recomputed by task {task_id} in {secs:.3f} s")

    def task_ended(self, t: TaskRecord) -> None:
        """A task (or a recovery run) is done: its inputs and outputs may be prunable now."""
        if self.released:
            for name, _ in t.spec.inputs:
                if name in self.released:
                    self._check.add(name)
            for name in self.s._outputs_of(t):
                if name in self.released:
                    self._check.add(name)

    def recheck(self, name: str) -> None:
        """Something that kept ``name`` alive went away (a fetch was answered)."""
        if name in self.released:
            self._check.add(name)

    def task_ran(self, task_id: int, seconds: float) -> None:
        self.run_seconds[task_id] = max(0.0, seconds)

    def transfer_measured(self, size: int, seconds: float, to_manager: bool = False) -> None:
        if size < MB or seconds <= 0:
            return
        bw = size / seconds
        if to_manager:
            self.mgr_bw = 0.7 * self.mgr_bw + 0.3 * bw
        else:
            self.peer_bw = 0.7 * self.peer_bw + 0.3 * bw

    def checkpointed(self, name: str) -> None:
        self._story(name, "checkpointed at the manager")

    def released_by_user(self, name: str) -> None:
        f = self.s.files.get(name)
        if f is not None and f.spec.kind == "temp":
            self.released.add(name)
            self.user_released.add(name)
            self._check.add(name)

    # ----------------------------------------------------------- a temp was made
    def produced(self, name: str, worker: str, task: TaskRecord) -> None:
        s = self.s
        f = s.files.get(name)
        if f is None or f.spec.kind != "temp":
            return
        self._story(name, f"made by task {task.spec.task_id} on {worker} ({f.size} bytes)")
        if name in self.user_released:  # remade by a recovery run: prune it again after
            self.released.add(name)
        if f.spec.checkpoint or (f.at_manager is False and self.decisions.get(name) == "checkpoint"):
            self._checkpoint(f, worker)
            return
        k = s.tune.temp_replica_count
        if s.tune.durability == "auto":
            choice = self._decide(f, task)
            if choice == "checkpoint":
                self._checkpoint(f, worker)
                return
            if choice == "replicate":
                k = max(k, 2)
        if k > 1:
            self.wanted_copies[name] = k

    def _decide(self, f: FileRecord, task: TaskRecord) -> str:
        s = self.s
        lost = s.stats.workers_lost
        lam = lost / self.worker_seconds if self.worker_seconds > 0 else 0.0
        runs = list(self.run_seconds.values())
        mean = sum(runs) / len(runs) if runs else 1.0
        horizon = max(10.0, 10 * mean)
        p = 1.0 - math.exp(-lam * horizon)
        r = self.recompute_cost(task)
        size = max(0, f.size)
        c_peer = size / self.peer_bw
        c_mgr = size / self.mgr_bw * max(1, len(s.workers))
        costs = {"one": p * r, "replicate": c_peer + p * p * r, "checkpoint": c_mgr}
        if len(s.workers) < 2:
            costs.pop("replicate")
        choice = min(costs, key=lambda k: (costs[k], k != "one"))
        self.decisions[f.spec.name] = choice
        s._log("DURABILITY", f.spec.name, choice.upper(), f"p={p:.4f}", f"R={r:.3f}",
               f"C_peer={c_peer:.3f}", f"C_mgr={c_mgr:.3f}", f"lambda={lam:.6f}")
        self._story(f.spec.name, f"auto policy chose {choice} (p={p:.3f}, recompute {r:.2f} s, "
                                 f"peer copy {c_peer:.2f} s, checkpoint {c_mgr:.2f} s)")
        return choice

    def recompute_cost(self, task: TaskRecord, depth: int = 0) -> float:
        """Seconds to re-run ``task`` and every producer upstream whose output has no safe copy."""
        s = self.s
        total = self.run_seconds.get(task.spec.task_id, 0.0)
        if depth > 50:
            return total
        for name, _ in task.spec.inputs:
            f = s.files.get(name)
            if f is None or f.at_manager or f.producer is None:
                continue
            if s.replicas.count_ready(name) > 1:
                continue
            p = s.tasks.get(f.producer)
            if p is not None:
                total += self.recompute_cost(p, depth + 1)
        return total

    def _checkpoint(self, f: FileRecord, worker: str) -> None:
        s = self.s
        if f.at_manager or worker not in s.workers:
            return
        base = s.tune.checkpoint_dir or s.staging_dir
        s._start_retrieval(f.spec.name, worker, posixpath.join(base, f.spec.name), "checkpoint")
        s._log("FILE", f.spec.name, "CHECKPOINT", worker)

    # ----------------------------------------------------------- replicas
    def _replicate(self) -> None:
        s = self.s
        for name, k in list(self.wanted_copies.items()):
            f = s.files.get(name)
            if f is None or f.at_manager:
                del self.wanted_copies[name]
                continue
            ready = s.replicas.ready_workers(name)
            if not ready:
                continue  # nothing to copy from (recovery will remake it)
            holders = set(s.replicas.holders(name))
            need = k - len(holders)
            if need <= 0:
                if len(ready) >= k:
                    del self.wanted_copies[name]
                continue
            targets = sorted(
                (w for w in s.workers.values() if w.worker_id not in holders
                 and self._disk_free(w) > max(0, f.size)),
                key=lambda w: (-self._disk_free(w), len(w.running)),
            )[:need]
            for w in targets:
                before = s.replicas.in_flight_to(name, w.worker_id)
                s._source_transfer(name, w.worker_id, replication=True)
                if before is None and s.replicas.in_flight_to(name, w.worker_id) is not None:
                    self._story(name, f"replicating to {w.worker_id}")

    def replica_made(self, name: str, worker: str) -> None:
        self.s.stats.replicas_made += 1
        self._story(name, f"replica made on {worker}")

    # ----------------------------------------------------------- pruning
    def _prune(self) -> None:
        """Prune the candidates nothing needs any more: no unfinished consumer (recovery
        runs included), no pending fetch, and a producer that is not running."""
        s = self.s
        candidates, self._check = self._check, set()
        for name in candidates:
            f = s.files.get(name)
            if f is None or name not in self.released:
                self.released.discard(name)
                continue
            if f.consumers or f.fetch_requests:
                continue  # looked at again when the last consumer ends
            p = s.tasks.get(f.producer) if f.producer is not None else None
            if p is not None and p.state is not TState.DONE:
                continue  # looked at again when the producer's run ends
            self.released.discard(name)
            workers = s.replicas.forget_file(name)
            for w in workers:
                if w in s.workers:
                    s._send(w, Unlink(name=name))
            self.wanted_copies.pop(name, None)
            self._story(name, f"pruned from {len(workers)} worker(s)")
            s.stats.files_pruned += 1
            s._log("FILE", name, "PRUNED", len(workers))

    # ----------------------------------------------------------- disk
    def _disk_free(self, w: WorkerRecord) -> int:
        used = max(w.disk_used, self.s.replicas.bytes_on(w.worker_id))
        return w.free.disk * MB - used

    def can_host(self, worker: WorkerRecord, task: TaskRecord) -> bool:
        """False if the worker's disk cannot hold the task's missing inputs."""
        missing = 0
        for name, _ in task.spec.inputs:
            if self.s.replicas.state(name, worker.worker_id) is None:
                f = self.s.files.get(name)
                if f is not None and f.size > 0:
                    missing += f.size
        if missing == 0:
            return True
        return self._disk_free(worker) >= missing
