"""Pure durability decisions: replicate, checkpoint, prune, and account for recoveries.

Theory of operation: ``ManagerState`` tells the policy what happened (a temp
was made, a worker was lost, a task ran, the user released a file) and, after
every event, asks it for *intents*: ``Replicate``, ``Checkpoint``, ``Prune``
and story lines. The policy reads the core's records but never changes them
and never calls the state; the state carries the intents out through its own
transitions. No I/O and no clock: times come from the state.

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

auto: for each temp once it is made, compare the expected cost of each choice,
in seconds:

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
from collections.abc import Mapping
from dataclasses import dataclass

from .fast import T
from .records import FileRecord, TaskRecord, WorkerRecord
from .replicas import ReplicaTable
from .stats import ManagerStats
from .tunables import Tunables

MB = 1 << 20
LINEAGE_MAX = 256  # producers looked at when estimating a recomputation


@dataclass(slots=True)
class Replicate:
    name: str
    dest: str


@dataclass(slots=True)
class Checkpoint:
    name: str
    worker: str


@dataclass(slots=True)
class Prune:
    name: str


@dataclass(slots=True)
class Story:
    name: str
    text: str


@dataclass(slots=True)
class Decision:
    """The auto policy's choice for a temp, with its numbers (for the log)."""

    name: str
    choice: str
    numbers: tuple[str, ...]


Intent = Replicate | Checkpoint | Prune | Story | Decision


class Durability:
    """Per-file durability policy of one manager."""

    def __init__(self, files: Mapping[str, FileRecord], tasks: Mapping[int, TaskRecord],
                 workers: Mapping[str, WorkerRecord], replicas: ReplicaTable,
                 stats: ManagerStats, tune: Tunables) -> None:
        self.files, self.tasks, self.workers = files, tasks, workers
        self.replicas, self.stats, self.tune = replicas, stats, tune
        self.recovering: dict[int, float] = {}  # task id -> when its recovery run began
        self.wanted_copies: dict[str, int] = {}  # temp -> copies the policy wants
        self._check: dict[str, None] = {}  # released temps to look at after this event
        self.peer_bw = 100e6  # bytes/s, refined by measurement
        self.mgr_bw = 100e6
        self.start: float | None = None
        self.worker_seconds = 0.0
        # losses of workers that had run a task or held a file: only those estimate the
        # loss rate (a peer that connects and leaves without working cannot steer it)
        self.losses = 0
        self._last = 0.0
        self._runs = 0
        self._run_total = 0.0
        self.out: list[Intent] = []

    # ----------------------------------------------------------- the state asks
    def after_event(self, now: float) -> list[Intent]:
        """Accrue worker-time, then the replicas and prunings wanted now."""
        if self.start is None:
            self.start = self._last = now
        self.worker_seconds += max(0.0, now - self._last) * len(self.workers)
        self._last = now
        if self.wanted_copies:
            self._replicate()
        if self._check:
            self._prune()
        return self.take()

    def take(self) -> list[Intent]:
        """The intents gathered since the last call."""
        out, self.out = self.out, []
        return out

    # ----------------------------------------------------------- the state tells
    def worker_lost(self, worker_id: str, names: list[str], worked: bool = True) -> None:
        if worked:
            self.losses += 1
        for n in names:
            f = self.files.get(n)
            if f is not None and f.spec.kind == "temp":
                self.out.append(Story(n, f"copy lost with worker {worker_id}"))
                k = self.tune.temp_replica_count
                if f.decision == "replicate":  # the auto policy's choice holds
                    k = max(k, 2)
                if k > 1 or n in self.wanted_copies:
                    self.wanted_copies.setdefault(n, k)

    def recovery_started(self, task_id: int, name: str, now: float) -> None:
        self.recovering.setdefault(task_id, now)
        self.out.append(Story(name, f"lost and needed: re-running task {task_id}"))

    def recovery_finished(self, t: TaskRecord, outputs: list[str], now: float) -> None:
        began = self.recovering.pop(t.spec.task_id, None)
        if began is not None:
            secs = max(0.0, now - began)
            self.stats.recovery_seconds += secs
            for n in outputs:
                self.out.append(Story(n, f"recomputed by task {t.spec.task_id} in {secs:.3f} s"))

    def task_ended(self, t: TaskRecord, outputs: list[str]) -> None:
        """A task (or a recovery run) is done: its inputs and outputs may be prunable now."""
        for name, _ in t.spec.inputs:
            f = self.files.get(name)
            if f is not None and f.released:
                self._check[name] = None
        for name in outputs:
            f = self.files.get(name)
            if f is not None and f.released:
                self._check[name] = None

    def recheck(self, name: str) -> None:
        """Something that kept ``name`` alive went away (a fetch was answered)."""
        f = self.files.get(name)
        if f is not None and f.released:
            self._check[name] = None

    def task_ran(self, seconds: float) -> None:
        self._runs += 1
        self._run_total += max(0.0, seconds)

    def transfer_measured(self, size: int, seconds: float, to_manager: bool = False) -> None:
        if size < MB or seconds <= 0:
            return
        bw = size / seconds
        if to_manager:
            self.mgr_bw = 0.7 * self.mgr_bw + 0.3 * bw
        else:
            self.peer_bw = 0.7 * self.peer_bw + 0.3 * bw

    def released_by_user(self, name: str) -> None:
        f = self.files.get(name)
        if f is not None and f.spec.kind == "temp":
            f.released = True
            self._check[name] = None

    def forget(self, name: str) -> None:
        self.wanted_copies.pop(name, None)
        self._check.pop(name, None)

    # ----------------------------------------------------------- a temp was made
    def produced(self, name: str, worker: str, task: TaskRecord) -> None:
        f = self.files.get(name)
        if f is None or f.spec.kind != "temp":
            return
        self.out.append(Story(name, f"made by task {task.spec.task_id} on {worker} "
                                    f"({f.size} bytes)"))
        if f.released:  # remade by a recovery run: prune it again once unneeded
            self._check[name] = None
        if f.spec.checkpoint or (not f.at_manager and f.decision == "checkpoint"):
            self._checkpoint(f, worker)
            return
        k = self.tune.temp_replica_count
        if self.tune.durability == "auto":
            choice = self._decide(f, task)
            if choice == "checkpoint":
                self._checkpoint(f, worker)
                return
            if choice == "replicate":
                k = max(k, 2)
        if k > 1:
            self.wanted_copies[name] = k

    def _decide(self, f: FileRecord, task: TaskRecord) -> str:
        lost = self.losses
        lam = lost / self.worker_seconds if self.worker_seconds > 0 else 0.0
        if lam == 0.0:  # no loss seen: one copy, as TaskVine (and no cost estimate needed)
            f.decision = "one"
            self.out.append(Decision(f.spec.name, "one", ("p=0", "lambda=0")))
            return "one"
        mean = self._run_total / self._runs if self._runs else 1.0
        horizon = max(10.0, 10 * mean)
        p = 1.0 - math.exp(-lam * horizon)
        r = self.recompute_cost(task)
        size = max(0, f.size)
        c_peer = size / self.peer_bw
        c_mgr = size / self.mgr_bw * max(1, len(self.workers))
        costs = {"one": p * r, "replicate": c_peer + p * p * r, "checkpoint": c_mgr}
        if len(self.workers) < 2:
            costs.pop("replicate")
        choice = min(costs, key=lambda k: (costs[k], k != "one"))
        f.decision = choice
        self.out.append(Decision(f.spec.name, choice, (
            f"p={p:.4f}", f"R={r:.3f}", f"C_peer={c_peer:.3f}", f"C_mgr={c_mgr:.3f}",
            f"lambda={lam:.6f}")))
        self.out.append(Story(f.spec.name, f"auto policy chose {choice} (p={p:.3f}, recompute "
                                           f"{r:.2f} s, peer copy {c_peer:.2f} s, checkpoint "
                                           f"{c_mgr:.2f} s)"))
        return choice

    def recompute_cost(self, task: TaskRecord) -> float:
        """Seconds to re-run ``task`` and every producer upstream whose output has no safe
        copy (iterative, at most ``LINEAGE_MAX`` producers)."""
        total = 0.0
        seen: set[int] = set()
        stack = [task]
        while stack and len(seen) < LINEAGE_MAX:
            t = stack.pop()
            if t.spec.task_id in seen:
                continue
            seen.add(t.spec.task_id)
            total += max((r.seconds for r in t.runs), default=0.0)
            for name, _ in t.spec.inputs:
                f = self.files.get(name)
                if f is None or f.at_manager or f.producer is None:
                    continue
                if self.replicas.count_ready(name) > 1:
                    continue
                p = self.tasks.get(f.producer)
                if p is not None:
                    stack.append(p)
        return total

    def _checkpoint(self, f: FileRecord, worker: str) -> None:
        if f.at_manager or worker not in self.workers:
            return
        self.out.append(Checkpoint(f.spec.name, worker))

    # ----------------------------------------------------------- replicas
    def _replicate(self) -> None:
        for name, k in list(self.wanted_copies.items()):
            f = self.files.get(name)
            if f is None or f.at_manager or f.pruned:
                del self.wanted_copies[name]
                continue
            ready = self.replicas.ready_workers(name)
            if not ready:
                continue  # nothing to copy from (recovery will remake it)
            holders = self.replicas.holders(name)
            need = k - len(holders)
            if need <= 0:
                if len(ready) >= k:
                    del self.wanted_copies[name]
                continue
            targets = sorted(
                (w for w in self.workers.values() if w.worker_id not in holders
                 and not w.draining and self.disk_free(w) > max(0, f.size)),
                key=lambda w: (-self.disk_free(w), len(w.running), w.worker_id),
            )[:need]
            for w in targets:
                self.out.append(Replicate(name, w.worker_id))

    # ----------------------------------------------------------- pruning
    def _prune(self) -> None:
        """Prune the candidates nothing needs any more: no unfinished consumer (recovery
        runs included), no pending fetch, and a producer that is not running."""
        candidates, self._check = self._check, {}
        for name in candidates:
            f = self.files.get(name)
            if f is None or not f.released or f.pruned:
                continue
            if f.consumers or f.fetch_requests:
                continue  # looked at again when the last consumer ends
            p = self.tasks.get(f.producer) if f.producer is not None else None
            if p is not None and p.state not in (T.RETRIEVED, T.DONE):
                continue  # looked at again when the producer's run ends
            self.wanted_copies.pop(name, None)
            self.out.append(Prune(name))

    # ----------------------------------------------------------- disk
    def disk_free(self, w: WorkerRecord) -> int:
        used = max(w.disk_used, self.replicas.bytes_on(w.worker_id))
        return w.free.disk * MB - used

    def can_host(self, worker: WorkerRecord, task: TaskRecord) -> bool:
        """False if the worker's disk cannot hold the task's missing inputs."""
        missing = 0
        for name, _ in task.spec.inputs:
            if self.replicas.state(name, worker.worker_id) is None:
                f = self.files.get(name)
                if f is not None and f.size > 0:
                    missing += f.size
        if missing == 0:
            return True
        return self.disk_free(worker) >= missing
