"""The manager's pure state machine: tasks, files, workers, replicas.

Everything that changes the manager's view of the world lives here. The one
way in is ``ManagerState.handle(event) -> list[Command]``; the asyncio server
feeds events (a worker joined, a task finished, a replica is ready, ...) and
carries out the commands (send this message, retrieve that file, return that
task to the user). Nothing here touches a socket, a thread, a clock or a disk.

Theory of operation
-------------------
A task moves WAITING -> READY -> STAGING -> RUNNING -> (RETRIEVING) -> DONE.
WAITING: some input has no copy anywhere yet (its producer has not run, or
its copies were lost). READY: every input can be obtained. STAGING: a worker
was chosen and its resources committed; the inputs it lacks are being fetched
(from a peer that holds them, else from the manager). RUNNING: the worker was
told to run it. RETRIEVING: outputs that must come back to the manager are on
their way. DONE: returned to the user.

A file's copies are replicas in the ``ReplicaTable``. A temp file's only
origin is the task that produces it: when its last copy is lost while an
unfinished task still needs it, the producer runs again as a *recovery* run
(never two at once for the same task, not charged to the user's retries, not
returned to the user a second time). Durability decisions (replicate,
checkpoint, prune) are made by ``durability.Durability`` from this state.
"""

from __future__ import annotations

import heapq
import posixpath
from typing import Any

from ..constants import CacheLevel, TaskResult
from ..protocol import Fetch, Kill, RunTask, TaskDone, Unlink
from . import retrieval
from .events import (
    Command,
    DiskReport,
    Event,
    FetchRequested,
    FileDeclared,
    FileReleased,
    FileSpec,
    FileUndeclared,
    Log,
    ReplicaFailed,
    ReplicaReady,
    RetrievalDone,
    Send,
    TaskCancelled,
    TaskReported,
    TaskReturned,
    TaskSpec,
    TaskSubmitted,
    Tick,
    Tuned,
    WorkerJoined,
    WorkerLeft,
)
from .records import FileRecord, TaskRecord, TState, WorkerRecord, _RetrievalFor
from .replicas import MANAGER, ReplicaState, ReplicaTable
from .scheduling import Candidate, Resources, choose_worker, could_ever_fit
from .stats import ManagerStats, Tunables

INLINE_RESULT_MAX = 4 * 1024 * 1024
RECOVERY_ATTEMPTS = 2  # extra tries of a failed recovery run before its consumers fail
RETRYABLE_ON_ANOTHER_WORKER = (TaskResult.DISK_EXHAUSTION, TaskResult.FORSAKEN)


class ManagerState:
    """All of the manager's decisions; see the module docstring."""

    def __init__(self, staging_dir: str = "/nonexistent", tunables: Tunables | None = None) -> None:
        self.staging_dir = staging_dir
        self.tune = tunables or Tunables()
        self.stats = ManagerStats()
        self.tasks: dict[int, TaskRecord] = {}
        self.files: dict[str, FileRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.replicas = ReplicaTable()
        self.now = 0.0
        self._seq = 0
        self._ready: list[tuple[float, int, int]] = []
        self._stage_wait: dict[tuple[str, str], set[int]] = {}
        self._unsourced: dict[tuple[str, str], None] = {}  # fetches waiting for a source
        self._retrievals: dict[int, _RetrievalFor] = {}
        self._next_retrieval = 1
        self._out: list[Command] = []
        self._unfinished = 0
        self._replication_transfers: set[int] = set()
        self.stories: dict[str, list[tuple[float, str]]] = {}
        from .durability import Durability  # local import: durability reads this module

        self.durability = Durability(self)

    # ================================================================ entry point
    def handle(self, event: Event) -> list[Command]:
        """Apply one event and return the commands it calls for."""
        self.now = event.now
        out: list[Command] = []
        self._out = out
        handler: Any = _HANDLERS[type(event)]
        handler(self, event)
        self.durability.after_event()
        self._schedule()
        self._out = []
        return out

    # ================================================================ queries
    def unfinished(self) -> int:
        """User tasks submitted and not yet returned."""
        return self._unfinished

    def count(self, state: TState) -> int:
        return sum(1 for t in self.tasks.values() if t.state is state)

    def available(self, name: str) -> bool:
        f = self.files.get(name)
        if f is None:
            return False
        return f.at_manager or self.replicas.count_ready(name) > 0

    def story(self, name: str, text: str) -> None:
        """Append to a file's history (``Manager.file_story``)."""
        self.stories.setdefault(name, []).append((self.now, text))

    # ================================================================ helpers
    def _log(self, kind: str, *fields: object) -> None:
        self._out.append(Log(kind, fields))

    def _send(self, worker_id: str, msg: object) -> None:
        self._out.append(Send(worker_id, msg))  # type: ignore[arg-type]

    def _task_log(self, t: TaskRecord, state: str, extra: str = "") -> None:
        self._log("TASK", t.spec.task_id, state, t.worker or "-", t.attempt, extra)

    def _file(self, name: str) -> FileRecord:
        f = self.files.get(name)
        if f is None:  # a name only a worker knew: a produced output we were not told about
            f = FileRecord(FileSpec(name=name, kind="temp"), -1, False, None)
            self.files[name] = f
        return f

    # ================================================================ files
    def _on_file_declared(self, ev: FileDeclared) -> None:
        s = ev.spec
        old = self.files.get(s.name)
        at_manager = s.kind in ("file", "buffer") and s.path is not None and s.size >= 0
        if old is not None:
            old.spec = s
            if at_manager:
                old.at_manager, old.manager_path, old.size = True, s.path, s.size
            return
        self.files[s.name] = FileRecord(s, s.size, at_manager, s.path if at_manager else None)

    def _on_file_undeclared(self, ev: FileUndeclared) -> None:
        f = self.files.pop(ev.name, None)
        if f is None:
            return
        for w in self.replicas.forget_file(ev.name):
            if w in self.workers:
                self._send(w, Unlink(name=ev.name))
        self.stats.files_pruned += 1 if f.spec.kind == "temp" else 0
        self._log("FILE", ev.name, "UNDECLARED", f.size)

    # ================================================================ workers
    def _on_worker_joined(self, ev: WorkerJoined) -> None:
        total = Resources(ev.cores, ev.memory, ev.disk, ev.gpus)
        w = WorkerRecord(ev.worker_id, ev.host, ev.transfer_port, ev.hostname, total,
                         Resources(ev.cores, ev.memory, ev.disk, ev.gpus))
        self.workers[ev.worker_id] = w
        self.stats.workers_connected += 1
        self.stats.workers_joined += 1
        for name, size in ev.cached:
            if name in self.files:
                if self.files[name].size < 0:
                    self.files[name].size = size
                self.replicas.set_ready(name, ev.worker_id, size)
                self._file_became_available(name)
            else:
                self._send(ev.worker_id, Unlink(name=name))
        self._log("WORKER", ev.worker_id, "CONNECTION", ev.host, ev.cores, ev.memory, ev.disk)
        self._retry_unsourced()

    def _on_worker_left(self, ev: WorkerLeft) -> None:
        w = self.workers.pop(ev.worker_id, None)
        if w is None:
            return
        self.stats.workers_connected -= 1
        self.stats.workers_lost += 1
        self._log("WORKER", ev.worker_id, "DISCONNECTION", ev.reason)
        names, transfers = self.replicas.drop_worker(ev.worker_id)
        for key in [k for k in self._stage_wait if k[1] == ev.worker_id]:
            del self._stage_wait[key]
        for key in [k for k in self._unsourced if k[1] == ev.worker_id]:
            del self._unsourced[key]
        forsaken = [self.tasks[tid] for tid in w.running]
        for t in forsaken:
            t.worker, t.alloc = None, None
            t.staging.clear()
            self._task_log(t, "FORSAKEN", f"worker lost: {ev.reason}")
        w.running.clear()
        # transfers from the lost worker to others must find another source
        lost = set(names)
        for tr in transfers:
            if tr.dest != ev.worker_id and tr.dest in self.workers:
                self.replicas.remove(tr.name, tr.dest)
                if self.available(tr.name):
                    self._source_transfer(tr.name, tr.dest)
                else:
                    lost.add(tr.name)  # no copy left: handled (once) just below
        gone = sorted(n for n in lost if n in self.files and not self.available(n))
        for name in gone:  # count and log every loss before any recovery: recovering one
            self.stats.files_lost += 1  # file may re-run the producers of the others
            self._log("FILE", name, "LOST", f"last copy was on {ev.worker_id}")
        for name in gone:
            self._file_lost(name, "", counted=True)
        for t in forsaken:  # after the losses, so that a recovery is logged after its loss
            self._requeue(t)
        self.durability.worker_lost(ev.worker_id, names)

    def _on_disk_report(self, ev: DiskReport) -> None:
        w = self.workers.get(ev.worker_id)
        if w is not None:
            w.disk_used = ev.used

    # ================================================================ tasks
    def _on_task_submitted(self, ev: TaskSubmitted) -> None:
        s = ev.spec
        self._seq += 1
        t = TaskRecord(s, self._seq)
        self.tasks[s.task_id] = t
        self._unfinished += 1
        self.stats.tasks_submitted += 1
        for name, _ in s.outputs:
            self._file(name).producer = s.task_id
        if s.python_output and s.temp_output:
            self._file(s.python_output).producer = s.task_id
        for name, _ in s.inputs:
            self._file(name).consumers.add(s.task_id)
        self._task_log(t, "SUBMITTED", s.command[:80])
        self._make_ready_or_wait(t)

    def _make_ready_or_wait(self, t: TaskRecord) -> None:
        """Put a task in READY if every input can be had, else WAITING (recovering if needed)."""
        t.missing.clear()
        for name, _ in t.spec.inputs:
            f = self._file(name)
            if f.failed_producer is not None:
                self._finish_failed_input(t, name, f.failed_producer)
                return
            if not self.available(name):
                t.missing.add(name)
                f.waiting.add(t.spec.task_id)
        if t.missing:
            t.state = TState.WAITING
            for name in t.missing:
                self._ensure_coming(name)
            self._task_log(t, "WAITING", ",".join(sorted(t.missing))[:200])
        else:
            self._set_ready(t)

    def _set_ready(self, t: TaskRecord) -> None:
        t.state = TState.READY
        heapq.heappush(self._ready, (-t.spec.priority, t.seq, t.spec.task_id))
        self._task_log(t, "READY")

    def _ensure_coming(self, name: str) -> None:
        """A needed file has no copy: make sure something will produce it, or say why not."""
        f = self._file(name)
        if f.producer is None:
            self._log("FILE", name, "UNAVAILABLE", "no copy and no task produces it")
            return
        p = self.tasks.get(f.producer)
        if p is None:
            return
        if p.state is TState.DONE:
            if p.succeeded:
                self._start_recovery(p, name)
            else:
                self._fail_consumers(name, p.spec.task_id)

    def _start_recovery(self, p: TaskRecord, name: str) -> None:
        p.recovery = True
        p.attempt += 1
        for inp, _ in p.spec.inputs:  # a consumer again, until this run ends
            self._file(inp).consumers.add(p.spec.task_id)
        self.stats.tasks_recovery += 1
        self._task_log(p, "RECOVERY", f"to remake {name}")
        self.durability.recovery_started(p.spec.task_id, name)
        self._make_ready_or_wait(p)

    def _requeue(self, t: TaskRecord) -> None:
        t.attempt += 1
        self._make_ready_or_wait(t)

    def _finish_failed_input(self, t: TaskRecord, name: str, producer: int) -> None:
        t.message = f"input {name} is missing: its producer task {producer} failed"
        self._finish(t, TaskResult.INPUT_MISSING, -1, "")

    def _fail_consumers(self, name: str, producer: int) -> None:
        f = self._file(name)
        f.failed_producer = producer
        for tid in list(f.consumers):
            t = self.tasks.get(tid)
            if t is not None and t.state in (TState.WAITING, TState.READY):
                self._finish_failed_input(t, name, producer)

    def _on_task_cancelled(self, ev: TaskCancelled) -> None:
        t = self.tasks.get(ev.task_id)
        if t is None or t.state is TState.DONE:
            return
        if t.worker is not None:
            if t.state is TState.RUNNING:
                self._send(t.worker, Kill(task_id=t.spec.task_id))
            self._release(t)
        t.message = "cancelled by the user"
        self._finish(t, TaskResult.CANCELLED, -1, "")

    def _release(self, t: TaskRecord) -> None:
        w = self.workers.get(t.worker or "")
        if w is not None:
            w.running.discard(t.spec.task_id)
            if t.alloc is not None:
                w.free.add(t.alloc)
            self._drop_task_level_inputs(t, w)
        for name in t.staging:
            waiters = self._stage_wait.get((name, t.worker or ""))
            if waiters is not None:
                waiters.discard(t.spec.task_id)
        t.staging.clear()
        t.worker, t.alloc = None, None

    def _drop_task_level_inputs(self, t: TaskRecord, w: WorkerRecord) -> None:
        for name, _ in t.spec.inputs:
            f = self.files.get(name)
            if f is None or f.spec.cache_level > CacheLevel.TASK or f.spec.kind == "temp":
                continue
            if any(name in (n for n, _ in self.tasks[o].spec.inputs) for o in w.running):
                continue
            if self.replicas.state(name, w.worker_id) is not None:
                self.replicas.remove(name, w.worker_id)
                self._send(w.worker_id, Unlink(name=name))

    def _finish(self, t: TaskRecord, result: TaskResult, exit_code: int, output: str) -> None:
        """A task reaches DONE: return it to the user (once) and settle its outputs."""
        was_recovery = t.recovery
        t.state = TState.DONE
        t.recovery = False
        t.succeeded = result is TaskResult.SUCCESS and exit_code == 0
        for name, _ in t.spec.inputs:
            f = self.files.get(name)
            if f is not None:
                f.consumers.discard(t.spec.task_id)
                f.waiting.discard(t.spec.task_id)
        if not t.succeeded:
            for name in self._outputs_of(t):
                self._fail_consumers(name, t.spec.task_id)
        self._task_log(t, "DONE", str(result))
        self.durability.task_ended(t)
        if was_recovery and t.returned:
            self.durability.recovery_finished(t.spec.task_id, self.now)
            return
        t.returned = True
        self._unfinished -= 1
        if t.succeeded:
            self.stats.tasks_done += 1
        else:
            self.stats.tasks_failed += 1
        d = t.done
        self._out.append(TaskReturned(
            task_id=t.spec.task_id, result=int(result), exit_code=exit_code, output=output,
            worker_id=t.done_worker, hostname=t.hostname,
            start=d.start if d else 0.0, end=d.end if d else 0.0, attempts=t.attempt + 1,
            python_result=t.python_result, python_error=d.python_error if d else "",
            message=t.message or (d.message if d else ""), python_result_path=t.result_path,
        ))
        t.python_result = None
        t.result_path = ""

    def _outputs_of(self, t: TaskRecord) -> list[str]:
        names = [n for n, _ in t.spec.outputs]
        if t.spec.python_output and t.spec.temp_output:
            names.append(t.spec.python_output)
        return names

    # ================================================================ dispatch
    def _schedule(self) -> None:
        if not self._ready or not self.workers:
            return
        skipped: list[tuple[float, int, int]] = []
        while self._ready:
            if not any(w.free.cores > 0 or w.free.gpus > 0 for w in self.workers.values()):
                break
            item = heapq.heappop(self._ready)
            t = self.tasks.get(item[2])
            if t is None or t.state is not TState.READY or t.seq != item[1]:
                continue
            if not self._place(t):
                skipped.append(item)
                if len(skipped) > 64:
                    break
        for item in skipped:
            heapq.heappush(self._ready, item)

    def _declared(self, s: TaskSpec) -> tuple[int | None, int | None, int | None, int | None]:
        return (s.cores, s.memory, s.disk, s.gpus)

    def _place(self, t: TaskRecord) -> bool:
        s = t.spec
        declared = self._declared(s)
        input_bytes: dict[str, int] = {}
        for name, _ in s.inputs:
            size = max(0, self.files[name].size)
            for holder in self.replicas.holders(name):
                input_bytes[holder] = input_bytes.get(holder, 0) + size + 1
        cands = [Candidate(w.worker_id, w.total, w.free, len(w.running))
                 for w in self.workers.values()
                 if w.worker_id not in t.avoid and self.durability.can_host(w, t)]
        choice = choose_worker(cands, declared, input_bytes)
        if choice is None:
            if not could_ever_fit((w.total for w in self.workers.values()), declared):
                self._log("TASK", s.task_id, "UNPLACEABLE", "-", t.attempt,
                          "no connected worker is large enough")
            return False
        wid, alloc = choice
        w = self.workers[wid]
        w.free.sub(alloc)
        w.running.add(s.task_id)
        t.worker, t.alloc, t.state = wid, alloc, TState.STAGING
        t.staging.clear()
        for name, _ in s.inputs:
            st = self.replicas.state(name, wid)
            if st is ReplicaState.READY:
                continue
            t.staging.add(name)
            self._stage_wait.setdefault((name, wid), set()).add(s.task_id)
            if st is None:
                self._source_transfer(name, wid)
        if not t.staging:
            self._run(t)
        else:
            self._task_log(t, "STAGING", ",".join(sorted(t.staging))[:200])
        return True

    def _source_transfer(self, name: str, dest: str, replication: bool = False) -> None:
        """Start bringing ``name`` to ``dest``, or remember to when a source frees up."""
        if self.replicas.in_flight_to(name, dest) is not None:
            return
        f = self.files[name]
        peers_ok = self.tune.peer_transfers and f.spec.peer_transfer
        src = self.replicas.pick_source(
            name, dest, self.now, self.tune.transfer_source_max, peers_ok, f.at_manager
        )
        if src is None and not peers_ok and not f.at_manager \
                and self.replicas.ready_workers(name):
            # no peer transfers: the file must come to the manager first, then go out
            if not replication:  # (a replication is retried by the durability policy)
                self._unsourced[(name, dest)] = None
            if not any(r.name == name and r.kind in ("fetch", "checkpoint")
                       for r in self._retrievals.values()):
                holder = self.replicas.ready_workers(name)[0]
                self._start_retrieval(name, holder, posixpath.join(self.staging_dir, name),
                                      "fetch")
                self._log("TRANSFER", name, "QUEUED", "-", dest, f"via the manager from {holder}")
            return
        if src is None:
            if replication:
                return  # retried by the durability policy after the next event
            self._unsourced[(name, dest)] = None
            if not self.available(name):
                self._file_lost(name, "no source left")
            else:
                self._log("TRANSFER", name, "QUEUED", "-", dest, "all sources busy or avoided")
            return
        self._unsourced.pop((name, dest), None)
        tr = self.replicas.start_transfer(name, dest, src, self.now)
        if replication:
            self._replication_transfers.add(tr.transfer_id)
        if src == MANAGER:
            host, port = "", 0  # the worker uses the manager's address it knows
        else:
            sw = self.workers[src]
            host, port = sw.host, sw.transfer_port
        self._send(dest, Fetch(transfer_id=tr.transfer_id, name=name, host=host, port=port,
                               size=f.size))
        self._log("TRANSFER", name, "START", src, dest, tr.transfer_id)

    def _retry_unsourced(self) -> None:
        if not self._unsourced:
            return
        for name, dest in list(self._unsourced):
            if dest in self.workers and name in self.files and self._stage_wait.get((name, dest)):
                del self._unsourced[(name, dest)]
                self._source_transfer(name, dest)
            elif dest not in self.workers or not self._stage_wait.get((name, dest)):
                self._unsourced.pop((name, dest), None)

    def _run(self, t: TaskRecord) -> None:
        s = t.spec
        a = t.alloc or Resources()
        py_out = s.python_output
        if s.python_payload is not None and not s.temp_output:
            py_out = f"pyout-{s.task_id}-{t.attempt}"
        t.state = TState.RUNNING
        self._send(t.worker or "", RunTask(
            task_id=s.task_id, attempt=t.attempt, command=s.command,
            inputs=list(s.inputs), outputs=list(s.outputs), env=list(s.env),
            cores=a.cores, memory=a.memory, disk=a.disk, gpus=a.gpus, time_max=s.time_max,
            python_payload=s.python_payload, python_output=py_out,
            python_mode=(s.python_mode or self.tune.python_exec) if s.python_payload else "",
            python_keep=s.temp_output,
        ))
        self._task_log(t, "RUNNING")

    # ================================================================ replicas
    def _on_replica_ready(self, ev: ReplicaReady) -> None:
        if ev.worker_id not in self.workers:
            return
        tr = self.replicas.end_transfer(ev.transfer_id) if ev.transfer_id else None
        f = self._file(ev.name)
        if f.size < 0 or ev.size > 0:
            f.size = ev.size
        self.replicas.set_ready(ev.name, ev.worker_id, ev.size)
        dest = self.workers[ev.worker_id]
        if tr is not None:
            dest.bytes_in += ev.size
            if tr.source == MANAGER:
                self.stats.bytes_sent += ev.size
                self.stats.transfers_sent += 1
            else:
                self.stats.bytes_peer += ev.size
                self.stats.transfers_peer += 1
                src = self.workers.get(tr.source)
                if src is not None:
                    src.bytes_out += ev.size
            self._log("TRANSFER", ev.name, "DONE", tr.source, ev.worker_id, ev.size,
                      round(ev.seconds, 6))
            self.durability.transfer_measured(ev.size, ev.seconds)
            if tr.transfer_id in self._replication_transfers:
                self._replication_transfers.discard(tr.transfer_id)
                self.durability.replica_made(ev.name, ev.worker_id)
        self._stage_arrived(ev.name, ev.worker_id)
        self._file_became_available(ev.name)
        self._retry_unsourced()

    def _stage_arrived(self, name: str, wid: str) -> None:
        for tid in self._stage_wait.pop((name, wid), ()):
            t = self.tasks.get(tid)
            if t is None or t.state is not TState.STAGING or t.worker != wid:
                continue
            t.staging.discard(name)
            if not t.staging:
                self._run(t)

    def _file_became_available(self, name: str) -> None:
        f = self.files.get(name)
        if f is None:
            return
        for tid in list(f.waiting):
            t = self.tasks.get(tid)
            f.waiting.discard(tid)
            if t is None or t.state is not TState.WAITING:
                continue
            t.missing.discard(name)
            if not t.missing:
                self._set_ready(t)
        # _serve_fetch may queue a request again (until the retrieval is done): take the list
        reqs, f.fetch_requests = f.fetch_requests, []
        for req in reqs:
            self._serve_fetch(req, name)

    def _on_replica_failed(self, ev: ReplicaFailed) -> None:
        tr = self.replicas.end_transfer(ev.transfer_id) if ev.transfer_id else None
        self.replicas.remove(ev.name, ev.worker_id)
        self._log("TRANSFER", ev.name, "FAILED", tr.source if tr else "-", ev.worker_id,
                  ev.reason[:200])
        if tr is not None and tr.source != MANAGER:
            self.replicas.avoid(tr.source, self.now + self.tune.transfer_avoid_seconds)
            if ev.reason.startswith("source:"):
                self.replicas.remove(ev.name, tr.source)  # the source no longer has it
        if ev.worker_id not in self.workers or ev.name not in self.files:
            return
        if tr is not None and tr.source == MANAGER and ev.reason.startswith("source:"):
            self._manager_copy_missing(ev.name, ev.reason)
            return
        if self._stage_wait.get((ev.name, ev.worker_id)):
            self._source_transfer(ev.name, ev.worker_id)  # calls _file_lost if no copy is left
        elif not self.available(ev.name):
            self._file_lost(ev.name, ev.reason)

    def _manager_copy_missing(self, name: str, reason: str) -> None:
        f = self.files[name]
        f.at_manager = False
        for key in [k for k in self._stage_wait if k[0] == name]:
            for tid in self._stage_wait.pop(key):
                t = self.tasks.get(tid)
                if t is not None and t.state is TState.STAGING:
                    self._release(t)
                    t.message = f"input {name} could not be read at the manager: {reason}"
                    self._finish(t, TaskResult.INPUT_MISSING, -1, "")

    def _file_lost(self, name: str, why: str, counted: bool = False) -> None:
        """No copy of ``name`` is left: unstage what needed it, then recover or fail."""
        f = self.files.get(name)
        if f is None:
            return
        if not counted:
            self.stats.files_lost += 1
            self._log("FILE", name, "LOST", why)
        needed = False
        for key in [k for k in self._stage_wait if k[0] == name]:
            self._unsourced.pop(key, None)
            for tid in self._stage_wait.pop(key):
                t = self.tasks.get(tid)
                if t is not None and t.state is TState.STAGING:
                    self._release(t)
                    self._make_ready_or_wait(t)
                    needed = True
        for tid in list(f.consumers):
            t = self.tasks.get(tid)
            if t is None:
                continue
            if t.state in (TState.READY, TState.WAITING):
                t.state = TState.WAITING  # (a WAITING task now also waits for this file)
                t.missing.add(name)
                f.waiting.add(tid)
                needed = True
        if needed or f.fetch_requests:
            self._ensure_coming(name)

    # ================================================================ task results
    def _on_task_reported(self, ev: TaskReported) -> None:
        d = ev.done
        t = self.tasks.get(d.task_id)
        if t is None or t.worker != ev.worker_id or t.attempt != d.attempt \
                or t.state is not TState.RUNNING:
            return  # a stale report (the task was cancelled or moved)
        w = self.workers[ev.worker_id]
        w.tasks_done += 1
        self._release(t)
        t.done, t.done_worker, t.hostname = d, ev.worker_id, w.hostname
        result = TaskResult(d.result) if d.result in TaskResult._value2member_map_ \
            else TaskResult.UNKNOWN
        ok = result is TaskResult.SUCCESS and d.exit_code == 0
        self.durability.task_ran(t.spec.task_id, d.end - d.start)
        if not ok:
            self._task_failed(t, result, d)
            return
        for name, size in d.outputs:
            f = self._file(name)
            f.size, f.produced = size, True
            self.replicas.set_ready(name, ev.worker_id, size)
            self.durability.produced(name, ev.worker_id, t)
        t.python_result = d.python_result
        t.state = TState.RETRIEVING
        t.worker = ev.worker_id  # retrievals come from here
        if not t.recovery:
            for name, _ in t.spec.outputs:
                f = self.files[name]
                if f.spec.kind == "file" and f.spec.path:
                    self._retrieve(t, name, f.spec.path, "task")
            if t.spec.python_payload is not None and not t.spec.temp_output \
                    and d.python_result is None:
                pyout = f"pyout-{t.spec.task_id}-{t.attempt}"
                if any(n == pyout for n, _ in d.outputs):
                    self._retrieve(t, pyout, posixpath.join(self.staging_dir, pyout), "python")
        for name, _ in d.outputs:
            self._file_became_available(name)
        if not t.retrievals:
            t.worker = None
            self._finish(t, TaskResult.SUCCESS, d.exit_code, d.output)

    def _task_failed(self, t: TaskRecord, result: TaskResult, d: TaskDone) -> None:
        if result in RETRYABLE_ON_ANOTHER_WORKER and t.forsaken < 3:
            t.forsaken += 1
            t.avoid.add(t.done_worker)  # it failed there for the worker's sake: go elsewhere
            self._task_log(t, "RETRY", f"{result} on {t.done_worker}: {d.message[:120]}")
            self._requeue(t)
            return
        if t.recovery and t.recovery_failures < RECOVERY_ATTEMPTS:
            # a recovery run has its own budget: the user's retries are not charged
            t.recovery_failures += 1
            self._task_log(t, "RETRY", f"recovery run: {result} exit {d.exit_code}")
            self._requeue(t)
            return
        if not t.recovery and t.retries_used < t.spec.max_retries:
            t.retries_used += 1
            self._task_log(t, "RETRY", f"{result} exit {d.exit_code}")
            self._requeue(t)
            return
        t.message = d.message
        t.python_result = d.python_result  # a PythonTask's pickled exception
        self._finish(t, result, d.exit_code, d.output)

    # ================================================================ retrieval.py
    _retrieve = retrieval._retrieve
    _start_retrieval = retrieval._start_retrieval
    _on_retrieval_done = retrieval._on_retrieval_done
    _on_fetch_requested = retrieval._on_fetch_requested
    _serve_fetch = retrieval._serve_fetch

    # ================================================================ misc
    def _on_file_released(self, ev: FileReleased) -> None:
        self.durability.released_by_user(ev.name)

    def _on_tick(self, ev: Tick) -> None:
        self._retry_unsourced()

    def _on_tuned(self, ev: Tuned) -> None:
        self.tune.set(ev.name, ev.value)


_HANDLERS = {
    WorkerJoined: ManagerState._on_worker_joined,
    WorkerLeft: ManagerState._on_worker_left,
    FileDeclared: ManagerState._on_file_declared,
    FileUndeclared: ManagerState._on_file_undeclared,
    TaskSubmitted: ManagerState._on_task_submitted,
    TaskCancelled: ManagerState._on_task_cancelled,
    TaskReported: ManagerState._on_task_reported,
    ReplicaReady: ManagerState._on_replica_ready,
    ReplicaFailed: ManagerState._on_replica_failed,
    RetrievalDone: ManagerState._on_retrieval_done,
    FetchRequested: ManagerState._on_fetch_requested,
    DiskReport: ManagerState._on_disk_report,
    Tick: ManagerState._on_tick,
    FileReleased: ManagerState._on_file_released,
    Tuned: ManagerState._on_tuned,
}
