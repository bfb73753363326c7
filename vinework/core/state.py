"""The manager's pure state machine: tasks, their runs, files, replicas, workers.

Everything that changes the manager's view of the world lives in this package.
The one way in is ``ManagerState.handle(event) -> list[Command]``; the asyncio
shell feeds events (a worker joined, a task finished, a replica is ready, the
user submitted or waited, a second passed) and carries out the commands (send
this message, retrieve that file, return that task to the user, drop that
worker). Nothing here touches a socket, a thread, a clock or a disk.

Theory of operation
-------------------
*Transitions.* A task's state changes only in ``_transition``, which checks the
(from, to) pair against ``transitions.TASK``, appends a line to the task's
story (time, from, to, stimulus id and why) and writes the transaction log.
A replica's state changes only inside ``ReplicaTable`` (checked against
``transitions.REPLICA``). States: INITIAL, WAITING (an input has no copy
yet), READY, STAGING (placed; inputs on their way), RUNNING,
WAITING_RETRIEVAL (outputs coming back), RETRIEVED (finished, handed to the
API), DONE (returned by ``wait()``). Each execution is a ``RunRecord``; a
recovery is a new run of a finished task, which returns to RETRIEVED or DONE
when it ends.

*Cascades.* A failure propagates to every consumer downstream, a lost temp
re-runs its producer (and, upstream, the producers of its lost inputs), a
finished task releases what it held, and a pruned file lets its lineage go.
None of these recurse: each step pushes the next onto ``_work`` (a FIFO of
pending steps), and ``_drain`` runs them until none is left, with a guard
against endless loops (``CascadeOverflow``). A chain of 100,000 tasks costs a
loop of 100,000 steps, never a deep stack.

*Causality.* Every event has a stimulus id (given by the shell or made here);
every command, story line and transition it causes carries it.

*Errors.* An exception raised while handling an event escapes ``handle``: the
state is then not trusted again (the shell turns it into a ``ManagerError``
at the user's next call). ``validate_state`` checks every invariant and runs
after every event when ``tune.validate`` is on (the test suite turns it on).

*Determinism.* Iteration orders are insertion orders (dicts, or sets of task
ids, which hash to themselves), so the same events give the same commands and
the same log under any ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import heapq
import posixpath
from collections import deque
from collections.abc import Callable
from typing import Any

from ..constants import CacheLevel, TaskResult
from ..protocol import (
    Fetch,
    Heartbeat,
    Hoist,
    Kill,
    RunTask,
    Shutdown,
    TaskDone,
    TransferFailure,
    Unlink,
)
from . import durability as dur
from .events import (
    Command,
    DropWorker,
    Event,
    FetchDone,
    FetchRequested,
    FileDeclared,
    FileReleased,
    FileSpec,
    FileUndeclared,
    HoistRequested,
    Log,
    Notice,
    ReplicaFailed,
    ReplicaReady,
    RetrievalDone,
    Retrieve,
    Send,
    TaskCancelled,
    TaskCollected,
    TaskReported,
    TaskReturned,
    TaskSubmitted,
    Tick,
    Tuned,
    WorkerHeard,
    WorkerJoined,
    WorkerLeaving,
    WorkerLeft,
)
from .records import (
    FileRecord,
    RetrievalKind,
    RetrievalRecord,
    RunOutcome,
    RunRecord,
    TaskRecord,
    TaskState,
    WorkerRecord,
)
from .replicas import MANAGER, ReplicaState, ReplicaTable
from .scheduling import Candidate, Resources, choose_worker, could_ever_fit, task_allocation
from .stats import ManagerStats, Tunables
from .transitions import VINE_TASK_STATE, check_task

T = TaskState
RECOVERY_ATTEMPTS = 2  # extra tries of a failed recovery run before its consumers fail
WORKER_FAULT_ATTEMPTS = 3  # runs that may fail for a worker's sake before the task does
RETRYABLE_ON_ANOTHER_WORKER = (TaskResult.DISK_EXHAUSTION, TaskResult.FORSAKEN)
PLACE_SKIP_MAX = 64  # ready tasks looked at per scheduling pass that do not fit anywhere


class CascadeOverflow(RuntimeError):
    """A cascade did not settle: the core would loop forever (a bug)."""


class ManagerState:
    """All of the manager's decisions; see the module docstring."""

    def __init__(self, staging_dir: str = "/nonexistent", tunables: Tunables | None = None,
                 validate: bool = False) -> None:
        self.staging_dir = staging_dir
        self.tune = tunables or Tunables()
        if validate:
            self.tune.validate = True
        self.stats = ManagerStats()
        self.tasks: dict[int, TaskRecord] = {}
        self.files: dict[str, FileRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.replicas = ReplicaTable()
        self.durability = dur.Durability(self.files, self.tasks, self.workers, self.replicas,
                                         self.stats, self.tune)
        self.now = 0.0
        self.hoisted: list[str] = []
        self._seq = 0
        self._events = 0
        self._stim = ""
        self._ready: list[tuple[float, int, int]] = []
        self._stage_wait: dict[tuple[str, str], dict[int, None]] = {}
        self._unsourced: dict[tuple[str, str], None] = {}  # fetches waiting for a source
        self._retrievals: dict[int, RetrievalRecord] = {}
        self._next_retrieval = 1
        self._drain_wait: dict[str, dict[str, None]] = {}  # draining worker -> files to save
        self._out: list[Command] = []
        self._work: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._unreturned = 0  # submitted tasks not yet handed to the API
        self._heartbeat_at = 0.0
        self._heartbeat_seq = 0
        self._unplaceable: dict[int, None] = {}  # READY tasks no connected worker can run
        self._counts: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self._no_worker_since: float | None = None
        self._no_worker_noted = False

    # ================================================================ entry point
    def handle(self, event: Event) -> list[Command]:
        """Apply one event and return the commands it calls for."""
        self.now = event.now
        self._events += 1
        self._stim = event.stimulus_id or f"{type(event).__name__}-{self._events}"
        out: list[Command] = []
        self._out = out
        _HANDLERS[type(event)](self, event)
        self._drain()
        self._apply_intents(self.durability.after_event(self.now))
        self._schedule()
        self._drain()
        if self.tune.validate:
            self.validate_state()
        self._out = []
        return out

    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue one step of a cascade (run by ``_drain``, never recursively)."""
        self._work.append((fn, args))

    def _drain(self) -> None:
        work = self._work
        limit = 1000 + 50 * (len(self.tasks) + len(self.files))
        n = 0
        while work:
            fn, args = work.popleft()
            fn(*args)
            n += 1
            if n > limit:
                work.clear()
                raise CascadeOverflow(f"cascade of {n} steps did not settle "
                                      f"(stimulus {self._stim})")
            if not work:
                intents = self.durability.take()
                if intents:
                    self._apply_intents(intents)

    def _apply_intents(self, intents: list[dur.Intent]) -> None:
        for it in intents:
            if type(it) is dur.Story:
                self.file_story_add(it.name, it.text)
            elif type(it) is dur.Replicate:
                before = self.replicas.in_flight_to(it.name, it.dest)
                self._source_transfer(it.name, it.dest, replication=True)
                if before is None and self.replicas.in_flight_to(it.name, it.dest) is not None:
                    self.file_story_add(it.name, f"replicating to {it.dest}")
            elif type(it) is dur.Checkpoint:
                base = self.tune.checkpoint_dir or self.staging_dir
                self._start_retrieval(it.name, it.worker, posixpath.join(base, it.name),
                                      RetrievalKind.CHECKPOINT)
                self._log("FILE", it.name, "CHECKPOINT", it.worker)
            elif type(it) is dur.Prune:
                self._prune(it.name)
            elif type(it) is dur.Decision:
                self._log("DURABILITY", it.name, it.choice.upper(), *it.numbers)

    # ================================================================ queries
    @property
    def stimulus(self) -> str:
        """The stimulus id of the event being (or last) handled."""
        return self._stim

    def unreturned(self) -> int:
        """Submitted tasks not yet handed to the API (RETRIEVED)."""
        return self._unreturned

    def count(self, state: TaskState) -> int:
        """Tasks the core holds in ``state`` (DONE tasks are forgotten once nothing needs
        them, so DONE counts only those kept for their lineage)."""
        return self._counts[state]

    def available(self, name: str) -> bool:
        f = self.files.get(name)
        if f is None:
            return False
        return f.at_manager or self.replicas.count_ready(name) > 0

    def manager_path(self, name: str) -> str | None:
        """Where the manager holds a copy of ``name`` it can serve, if it does."""
        f = self.files.get(name)
        return f.manager_path if f is not None and f.at_manager else None

    def task_state(self, task_id: int) -> int | None:
        """TaskVine's VINE_TASK_* value for a task the core still holds (else None)."""
        t = self.tasks.get(task_id)
        if t is None:
            return None
        if t.runs and t.run.recovery and t.run.return_to is not None:
            return VINE_TASK_STATE[t.run.return_to]  # the user sees the finished task
        return VINE_TASK_STATE[t.state]

    def task_story(self, task_id: int) -> list[tuple[float, str, str, str]]:
        t = self.tasks.get(task_id)
        return list(t.story) if t is not None else []

    def file_story(self, name: str) -> list[tuple[float, str, str]]:
        f = self.files.get(name)
        return list(f.story) if f is not None else []

    def file_story_add(self, name: str, text: str) -> None:
        """Append to a file's history (``Manager.file_story``)."""
        f = self.files.get(name)
        if f is not None:
            f.story.append((self.now, text, self._stim))

    def hungry(self) -> int:
        """How many more tasks the manager would take now (TaskVine's ``hungry``)."""
        waiting = self._counts[T.WAITING] + self._counts[T.READY]
        cores = sum(w.total.cores for w in self.workers.values() if not w.draining)
        return max(0, max(self.tune.hungry_minimum, 2 * cores) - waiting)

    # ================================================================ helpers
    def _log(self, kind: str, *fields: object) -> None:
        self._out.append(Log(kind, fields, self._stim))

    def _send(self, worker_id: str, msg: Any) -> None:
        self._out.append(Send(worker_id, msg, self._stim))

    def _file(self, name: str) -> FileRecord:
        f = self.files.get(name)
        if f is None:  # a name only a worker knew: a produced output we were not told about
            f = FileRecord(FileSpec(name=name, kind="temp"), -1, False, None)
            self.files[name] = f
        return f

    def _outputs_of(self, t: TaskRecord) -> list[str]:
        names = [n for n, _ in t.spec.outputs]
        if t.spec.python_output and t.spec.temp_output:
            names.append(t.spec.python_output)
        return names

    # ================================================================ transitions
    def _transition(self, t: TaskRecord, new: TaskState, why: str = "") -> None:
        """The one place a task's state changes (checked against ``transitions.TASK``)."""
        old = t.state
        check_task(old, new)
        t.state = new
        counts = self._counts
        counts[old] -= 1
        counts[new] += 1
        t.story.append((self.now, old.value, new.value, f"{self._stim}: {why}" if why
                        else self._stim))
        self._out.append(Log("TASK", (t.spec.task_id, new.value, t.worker or "-", t.attempt,
                                      why), self._stim))

    def _new_run(self, t: TaskRecord, recovery: bool = False) -> RunRecord:
        return_to = t.state if recovery else None
        r = RunRecord(attempt=len(t.runs), recovery=recovery, return_to=return_to)
        t.runs.append(r)
        return r

    def _wait_or_ready(self, t: TaskRecord, why: str = "") -> None:
        """Move a task to READY if every input can be had, else to WAITING (asking for
        what is missing to be made), or end it if an input can never exist."""
        t.missing.clear()
        for name, _ in t.spec.inputs:
            f = self._file(name)
            if f.failed_producer is not None:
                self._end_input_failed(t, name, f.failed_producer)
                return
            if f.undeclared:
                t.message = f"input {name} was undeclared"
                self._end(t, RunOutcome.INPUT_FAILED, TaskResult.INPUT_MISSING, -1, "",
                          "input undeclared")
                return
            if not self.available(name):
                t.missing.add(name)
        if t.missing:
            for name in t.missing:
                self.files[name].waiting.add(t.spec.task_id)
            self._transition(t, T.WAITING, why or "missing " + ",".join(sorted(t.missing))[:200])
            for name in sorted(t.missing):
                self._later(self._ensure_coming, name)
        else:
            self._transition(t, T.READY, why)
            heapq.heappush(self._ready, (-t.spec.priority, t.seq, t.spec.task_id))

    def _requeue(self, t: TaskRecord, outcome: RunOutcome, why: str) -> None:
        """End the current run with ``outcome`` and start a new one (same recovery-ness)."""
        marker = "FORSAKEN" if outcome is RunOutcome.WORKER_LOST else "RETRY"
        self._log("TASK", t.spec.task_id, marker, t.worker or "-", t.attempt, why)
        rec = t.run.recovery
        ret = t.run.return_to
        t.run.outcome = outcome
        self._release(t)
        r = RunRecord(attempt=len(t.runs), recovery=rec, return_to=ret)
        t.runs.append(r)
        self._wait_or_ready(t, why)

    def _end(self, t: TaskRecord, outcome: RunOutcome, result: TaskResult, exit_code: int,
             output: str, why: str = "") -> None:
        """A run is over for good: settle the task (RETRIEVED, or back where a recovery
        run came from) and tell the files and the consumers downstream."""
        run = t.run
        run.outcome = outcome
        self._release(t)
        ok = outcome is RunOutcome.SUCCEEDED
        for name, _ in t.spec.inputs:
            f = self.files.get(name)
            if f is not None:
                f.consumers.pop(t.spec.task_id, None)
                f.waiting.discard(t.spec.task_id)
        outputs = self._outputs_of(t)
        if not ok:
            for name in outputs:
                self._later(self._file_failed, name, t.spec.task_id)
        self.durability.task_ended(t, outputs)
        if run.recovery and run.return_to is not None:
            self._transition(t, run.return_to, why or f"recovery run {outcome.value}")
            self.durability.recovery_finished(t, outputs, self.now)
            if run.return_to is T.DONE:
                self._later(self._maybe_forget_task, t.spec.task_id)
            return
        t.result, t.exit_code, t.output = result, exit_code, output
        self._transition(t, T.RETRIEVED, why or str(result))
        self._unreturned -= 1
        if ok:
            self.stats.tasks_done += 1
        else:
            self.stats.tasks_failed += 1
        d = t.done
        self._out.append(TaskReturned(
            task_id=t.spec.task_id, result=int(result), exit_code=exit_code, output=output,
            worker_id=t.done_worker, hostname=t.hostname,
            start=d.start if d else 0.0, end=d.end if d else 0.0, attempts=len(t.runs),
            python_result=t.python_result, python_error=d.python_error if d else "",
            message=t.message or (d.message if d else ""), python_result_path=t.result_path,
            story=tuple(t.story), stimulus_id=self._stim,
        ))
        t.python_result = None
        t.result_path = ""
        t.done = None
        t.output = ""

    def _end_input_failed(self, t: TaskRecord, name: str, producer: int) -> None:
        t.message = f"input {name} is missing: its producer task {producer} failed"
        self._end(t, RunOutcome.INPUT_FAILED, TaskResult.INPUT_MISSING, -1, "", "input missing")

    def _free(self, t: TaskRecord) -> None:
        """Give back the resources the current run holds (it keeps its worker, whose
        transfer server may still serve its outputs)."""
        run = t.run
        if run.alloc is None or run.worker is None:
            return
        w = self.workers.get(run.worker)
        if w is not None:
            w.running.discard(t.spec.task_id)
            w.free.add(run.alloc)
            self._drop_task_level_inputs(t, w)
        run.alloc = None

    def _release(self, t: TaskRecord) -> None:
        """Give back everything the current run holds on its worker."""
        run = t.run
        wid = run.worker
        if wid is None:
            return
        self._free(t)
        for name in t.staging:
            waiters = self._stage_wait.get((name, wid))
            if waiters is not None:
                waiters.pop(t.spec.task_id, None)
        t.staging.clear()
        run.worker, run.alloc = None, None

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

    # ================================================================ cascade steps
    def _ensure_coming(self, name: str) -> None:
        """A needed file has no copy: make sure something will make it, or say why not."""
        f = self.files.get(name)
        if f is None or self.available(name) or f.undeclared:
            return
        if f.failed_producer is not None:
            self._file_failed(name, f.failed_producer)
            return
        if f.producer is None:
            self._log("FILE", name, "UNAVAILABLE", "no copy and no task produces it")
            return
        p = self.tasks.get(f.producer)
        if p is None or p.state not in (T.RETRIEVED, T.DONE):
            return  # it is being made (or will be)
        if p.run.outcome is RunOutcome.SUCCEEDED:
            self._start_recovery(p, name)
        else:
            self._file_failed(name, p.spec.task_id)

    def _start_recovery(self, p: TaskRecord, name: str) -> None:
        self._new_run(p, recovery=True)
        for inp, _ in p.spec.inputs:  # a consumer again, until this run ends
            self._file(inp).consumers[p.spec.task_id] = None
        self.stats.tasks_recovery += 1
        self._log("TASK", p.spec.task_id, "RECOVERY", "-", p.attempt, f"to remake {name}")
        self.durability.recovery_started(p.spec.task_id, name, self.now)
        self._wait_or_ready(p, f"recovery: to remake {name}")

    def _file_failed(self, name: str, producer: int) -> None:
        """``name`` can never exist (its producer failed): end every task waiting for it."""
        f = self.files.get(name)
        if f is None:
            return
        f.failed_producer = producer
        for tid in list(f.consumers):
            t = self.tasks.get(tid)
            if t is not None and t.state in (T.WAITING, T.READY):
                self._end_input_failed(t, name, producer)
        if f.fetch_requests:
            for req in f.fetch_requests:
                self._out.append(FetchDone(req, None, f"producer task {producer} failed",
                                           self._stim))
            f.fetch_requests.clear()

    def _file_lost(self, name: str, why: str) -> None:
        """No copy of ``name`` is left: unstage what needed it, then recover or fail."""
        f = self.files.get(name)
        if f is None or self.available(name):
            return
        self.stats.files_lost += 1
        self._log("FILE", name, "LOST", why)
        self.file_story_add(name, f"lost: {why}")
        needed = False
        for key in [k for k in self._stage_wait if k[0] == name]:
            self._unsourced.pop(key, None)
            for tid in self._stage_wait.pop(key):
                t = self.tasks.get(tid)
                if t is not None and t.state is T.STAGING:
                    self._requeue(t, RunOutcome.WORKER_LOST, f"input {name} lost")
                    needed = True
        for tid in list(f.consumers):
            t = self.tasks.get(tid)
            if t is None:
                continue
            if t.state is T.READY:
                t.missing.add(name)
                f.waiting.add(tid)
                self._transition(t, T.WAITING, f"input {name} lost")
                needed = True
            elif t.state is T.WAITING:
                t.missing.add(name)
                f.waiting.add(tid)
                needed = True
        if needed or f.fetch_requests:
            self._later(self._ensure_coming, name)

    def _file_became_available(self, name: str) -> None:
        f = self.files.get(name)
        if f is None:
            return
        if f.waiting:
            for tid in list(f.waiting):
                t = self.tasks.get(tid)
                f.waiting.discard(tid)
                if t is None or t.state is not T.WAITING:
                    continue
                t.missing.discard(name)
                if not t.missing:
                    self._transition(t, T.READY, f"input {name} available")
                    heapq.heappush(self._ready, (-t.spec.priority, t.seq, t.spec.task_id))
        if f.fetch_requests:
            reqs, f.fetch_requests = f.fetch_requests, []
            for req in reqs:
                self._serve_fetch(req, name)

    def _prune(self, name: str) -> None:
        f = self.files.get(name)
        if f is None or f.pruned:
            return
        workers = self.replicas.forget_file(name)
        for w in workers:
            if w in self.workers:
                self._send(w, Unlink(name=name))
        f.pruned = True
        self.file_story_add(name, f"pruned from {len(workers)} worker(s)")
        self.stats.files_pruned += 1
        self._log("FILE", name, "PRUNED", len(workers))
        self._later(self._maybe_forget_file, name)

    # ---------------------------------------------------------------- lineage
    def _maybe_forget_task(self, task_id: int) -> None:
        """Drop a DONE task's record once no kept file can need it to be re-run."""
        t = self.tasks.get(task_id)
        if t is None or t.state is not T.DONE:
            return
        for name in self._outputs_of(t):
            f = self.files.get(name)
            if f is not None and f.spec.kind == "temp":
                return  # its output may be lost and need this task again
        del self.tasks[task_id]
        self._counts[T.DONE] -= 1
        for name, _ in t.spec.inputs:
            f = self.files.get(name)
            if f is not None:
                f.readers -= 1
                if f.readers <= 0 and (f.pruned or f.spec.kind != "temp"):
                    self._later(self._maybe_forget_file, name)

    def _maybe_forget_file(self, name: str) -> None:
        """Drop a pruned temp's record once no kept task reads it (nothing downstream can
        need it remade)."""
        f = self.files.get(name)
        if f is None or f.readers > 0 or f.consumers or f.fetch_requests:
            return
        if f.spec.kind == "temp" and not f.pruned:
            return
        if f.spec.kind != "temp" and not f.released:
            return
        if self.replicas.holders(name):
            return
        del self.files[name]
        self.durability.forget(name)
        if f.producer is not None:
            self._later(self._maybe_forget_task, f.producer)

    # ================================================================ files
    def _on_file_declared(self, ev: FileDeclared) -> None:
        s = ev.spec
        old = self.files.get(s.name)
        at_manager = s.kind in ("file", "buffer") and s.path is not None and s.size >= 0
        if old is not None:
            old.spec = s
            old.released = old.pruned = old.undeclared = False
            if at_manager:
                old.at_manager, old.manager_path, old.size = True, s.path, s.size
            return
        self.files[s.name] = FileRecord(s, s.size, at_manager, s.path if at_manager else None)

    def _on_file_undeclared(self, ev: FileUndeclared) -> None:
        f = self.files.get(ev.name)
        if f is None:
            return
        for w in self.replicas.forget_file(ev.name):
            if w in self.workers:
                self._send(w, Unlink(name=ev.name))
        self.stats.files_pruned += 1 if f.spec.kind == "temp" else 0
        self._log("FILE", ev.name, "UNDECLARED", f.size)
        self.file_story_add(ev.name, "undeclared by the user")
        f.released = f.pruned = f.undeclared = True
        f.at_manager = False
        for key in [k for k in self._stage_wait if k[0] == ev.name]:
            self._unsourced.pop(key, None)
            for tid in self._stage_wait.pop(key):
                t = self.tasks.get(tid)
                if t is not None and t.state is T.STAGING:
                    t.message = f"input {ev.name} was undeclared"
                    self._end(t, RunOutcome.INPUT_FAILED, TaskResult.INPUT_MISSING, -1, "",
                              "input undeclared")
        for tid in list(f.consumers):
            t = self.tasks.get(tid)
            if t is not None and t.state in (T.WAITING, T.READY):
                t.message = f"input {ev.name} was undeclared"
                self._end(t, RunOutcome.INPUT_FAILED, TaskResult.INPUT_MISSING, -1, "",
                          "input undeclared")
        self._later(self._maybe_forget_file, ev.name)

    def _on_file_released(self, ev: FileReleased) -> None:
        f = self.files.get(ev.name)
        if f is None:
            return
        if f.spec.kind == "temp":
            self.durability.released_by_user(ev.name)
        else:
            f.released = True
            self._later(self._maybe_forget_file, ev.name)

    # ================================================================ workers
    def _on_worker_joined(self, ev: WorkerJoined) -> None:
        total = Resources(ev.cores, ev.memory, ev.disk, ev.gpus)
        w = WorkerRecord(ev.worker_id, ev.host, ev.transfer_port, ev.hostname, total,
                         Resources(ev.cores, ev.memory, ev.disk, ev.gpus), last_heard=self.now)
        self.workers[ev.worker_id] = w
        self.stats.workers_connected += 1
        self.stats.workers_joined += 1
        self._no_worker_since, self._no_worker_noted = None, False
        self._log("WORKER", ev.worker_id, "CONNECTION", ev.host, ev.cores, ev.memory, ev.disk)
        if self.hoisted:
            self._send(ev.worker_id, Hoist(modules=list(self.hoisted)))
        for name, size in ev.cached:
            f = self.files.get(name)
            if f is not None and not f.pruned:
                if f.size < 0:
                    f.size = size
                self.replicas.set_ready(name, ev.worker_id, size)
                self._file_became_available(name)
            else:
                self._send(ev.worker_id, Unlink(name=name))
        for tid in self._unplaceable:  # a bigger worker may make them placeable
            u = self.tasks.get(tid)
            if u is not None:
                u.unplaceable_since = -1.0
        self._unplaceable.clear()
        self._retry_unsourced()

    def _on_worker_heard(self, ev: WorkerHeard) -> None:
        w = self.workers.get(ev.worker_id)
        if w is not None and ev.disk_used >= 0:
            w.disk_used = ev.disk_used

    def _on_worker_left(self, ev: WorkerLeft) -> None:
        self._worker_gone(ev.worker_id, ev.reason)

    def _worker_gone(self, wid: str, reason: str) -> None:
        w = self.workers.pop(wid, None)
        if w is None:
            return
        self.stats.workers_connected -= 1
        if not w.draining or self._drain_wait.get(wid):
            self.stats.workers_lost += 1  # a drained worker left as agreed: not a loss
        self._drain_wait.pop(wid, None)
        self._log("WORKER", wid, "DISCONNECTION", reason)
        if not self.workers:
            self._no_worker_since = self.now
        names, transfers = self.replicas.drop_worker(wid)
        for key in [k for k in self._stage_wait if k[1] == wid]:
            del self._stage_wait[key]
        for key in [k for k in self._unsourced if k[1] == wid]:
            del self._unsourced[key]
        forsaken = sorted(w.running)
        for tid in forsaken:
            t = self.tasks[tid]
            t.staging.clear()
            t.run.worker, t.run.alloc = None, None  # (the worker's resources are gone too)
        w.running.clear()
        lost = dict.fromkeys(names)
        for tr in transfers:  # transfers from the lost worker to others must find a new source
            if tr.dest != wid and tr.dest in self.workers:
                self.replicas.remove(tr.name, tr.dest)
                if self.available(tr.name):
                    if self._stage_wait.get((tr.name, tr.dest)):
                        self._source_transfer(tr.name, tr.dest)
                else:
                    lost[tr.name] = None
        for name in lost:
            f = self.files.get(name)
            if f is not None and not f.pruned and not self.available(name):
                self._later(self._file_lost, name, f"last copy was on {wid}")
        for tid in forsaken:  # after the losses, so a recovery is logged after its loss
            t = self.tasks[tid]
            self._later(self._requeue, t, RunOutcome.WORKER_LOST, f"worker lost: {reason}")
        self.durability.worker_lost(wid, names)

    def _on_worker_leaving(self, ev: WorkerLeaving) -> None:
        """Drain: no new task there; its running tasks go elsewhere; the temps only it
        holds are copied to a peer with room (else checkpointed); then tell it to go."""
        w = self.workers.get(ev.worker_id)
        if w is None or w.draining:
            return
        w.draining = True
        self._log("WORKER", w.worker_id, "DRAINING", ev.reason)
        for tid in sorted(w.running):
            t = self.tasks[tid]
            if t.state is T.RUNNING:
                self._send(w.worker_id, Kill(task_id=tid))
            self._requeue(t, RunOutcome.WORKER_LOST, f"worker draining: {ev.reason}")
        save: dict[str, None] = {}
        for name in self.replicas.files_on(w.worker_id):
            f = self.files.get(name)
            if f is None or f.at_manager or f.pruned or f.spec.kind != "temp":
                continue
            if self.replicas.state(name, w.worker_id) is not ReplicaState.READY:
                continue
            if self.replicas.count_ready(name) > 1:
                continue
            save[name] = None
            self._save_from_draining(name, w)
        self._drain_wait[w.worker_id] = save
        self._maybe_drained(w.worker_id)

    def _save_from_draining(self, name: str, w: WorkerRecord) -> None:
        f = self.files[name]
        dests = sorted((x for x in self.workers.values() if not x.draining
                        and self.replicas.state(name, x.worker_id) is None
                        and self.durability.disk_free(x) > max(0, f.size)),
                       key=lambda x: (-self.durability.disk_free(x), x.worker_id))
        if dests and self.tune.peer_transfers and f.spec.peer_transfer:
            dest = dests[0].worker_id
            tr = self.replicas.start_transfer(name, dest, w.worker_id, self.now, replication=True)
            self._send(dest, Fetch(transfer_id=tr.transfer_id, name=name, host=w.host,
                                   port=w.transfer_port, size=f.size))
            self._log("TRANSFER", name, "START", w.worker_id, dest, tr.transfer_id)
            self.file_story_add(name, f"moving off draining {w.worker_id} to {dest}")
        else:
            base = self.tune.checkpoint_dir or self.staging_dir
            self._start_retrieval(name, w.worker_id, posixpath.join(base, name),
                                  RetrievalKind.CHECKPOINT)
            self.file_story_add(name, f"checkpointing off draining {w.worker_id}")

    def _drain_saved(self, name: str) -> None:
        for wid, names in self._drain_wait.items():
            if name in names and (self.replicas.count_ready(name) > 1 or self.available(name)
                                  and self.files[name].at_manager or wid not in self.workers):
                del names[name]
                self._later(self._maybe_drained, wid)

    def _maybe_drained(self, wid: str) -> None:
        names = self._drain_wait.get(wid)
        if names is not None and not names:
            self._send(wid, Shutdown(reason="drained"))
            self._log("WORKER", wid, "DRAINED", "-")

    def _on_tick(self, ev: Tick) -> None:
        timeout = self.tune.keepalive_timeout
        for w in list(self.workers.values()):
            if self.now - w.last_heard > timeout:
                why = f"no message for {timeout:g} s"
                self._out.append(DropWorker(w.worker_id, why, self._stim))
                self._worker_gone(w.worker_id, why)
        if self.now - self._heartbeat_at >= self.tune.keepalive_interval:
            self._heartbeat_at = self.now
            self._heartbeat_seq += 1
            for wid in self.workers:
                self._send(wid, Heartbeat(seq=self._heartbeat_seq))
        self._retry_unsourced()
        self._explain_waits()

    def _explain_waits(self) -> None:
        if not self.workers and self._unreturned > 0:
            if self._no_worker_since is None:
                self._no_worker_since = self.now
            elif (not self._no_worker_noted
                  and self.now - self._no_worker_since >= self.tune.no_worker_hint_delay):
                self._no_worker_noted = True
                text = (f"{self._unreturned} task(s) wait, and no worker has been connected "
                        f"for {self.now - self._no_worker_since:.0f} s: start workers with "
                        f"'vinework worker HOST PORT' or a Factory")
                self._out.append(Notice(text, self._stim))
                self._log("MANAGER", "HINT", text)
        delay = self.tune.unplaceable_hint_delay
        for tid in list(self._unplaceable):
            t = self.tasks.get(tid)
            if t is None or t.state is not T.READY or t.unplaceable_since < 0:
                del self._unplaceable[tid]
                continue
            if self.now - t.unplaceable_since >= delay and not t.unplaceable_noted:
                t.unplaceable_noted = True
                s = t.spec
                biggest = max(self.workers.values(), key=lambda w: w.total.cores, default=None)
                have = (f"the largest has {biggest.total.cores} cores, {biggest.total.memory} MB "
                        f"memory, {biggest.total.disk} MB disk, {biggest.total.gpus} gpus"
                        if biggest else "none is connected")
                t.message = (f"no connected worker could ever run it: it needs cores={s.cores} "
                             f"memory={s.memory} disk={s.disk} gpus={s.gpus}; {have}")
                self._out.append(Notice(f"task {s.task_id}: {t.message}", self._stim))
                self._log("TASK", s.task_id, "UNPLACEABLE", "-", t.attempt, t.message)

    # ================================================================ tasks
    def _on_task_submitted(self, ev: TaskSubmitted) -> None:
        s = ev.spec
        if s.task_id in self.tasks:
            raise ValueError(f"task {s.task_id} submitted twice")
        self._seq += 1
        t = TaskRecord(s, self._seq)
        self.tasks[s.task_id] = t
        self._counts[T.INITIAL] += 1
        self._unreturned += 1
        self.stats.tasks_submitted += 1
        for name in self._outputs_of(t):
            self._file(name).producer = s.task_id
        for name, _ in s.inputs:
            f = self._file(name)
            f.consumers[s.task_id] = None
            f.readers += 1
        t.story.append((self.now, "", T.INITIAL.value, self._stim))
        self._log("TASK", s.task_id, "SUBMITTED", "-", 0, s.command[:80])
        self._new_run(t)
        self._wait_or_ready(t)

    def _on_task_cancelled(self, ev: TaskCancelled) -> None:
        t = self.tasks.get(ev.task_id)
        if t is None or t.state in (T.RETRIEVED, T.DONE):
            return
        if t.state is T.RUNNING and t.worker is not None:
            self._send(t.worker, Kill(task_id=t.spec.task_id))
        if t.state is T.WAITING_RETRIEVAL:
            t.retrievals.clear()
        if t.run.recovery:  # a recovery run is the core's business, not the user's
            return
        t.message = "cancelled by the user"
        self._end(t, RunOutcome.CANCELLED, TaskResult.CANCELLED, -1, "", "cancelled")

    def _on_task_collected(self, ev: TaskCollected) -> None:
        t = self.tasks.get(ev.task_id)
        if t is None:
            return
        if t.state is T.RETRIEVED:
            self._transition(t, T.DONE, "returned by wait()")
            self._maybe_forget_task(t.spec.task_id)
        elif t.run.recovery and t.run.return_to is T.RETRIEVED:
            t.run.return_to = T.DONE  # collected while a recovery run remakes its output

    def _on_task_reported(self, ev: TaskReported) -> None:
        d = ev.done
        inline = len(d.python_result or b"")
        self.stats.bytes_received_inline += inline
        self.stats.bytes_received += inline
        t = self.tasks.get(d.task_id)
        if t is None or t.worker != ev.worker_id or t.attempt != d.attempt \
                or t.state is not T.RUNNING:
            return  # a stale report (the task was cancelled or moved)
        w = self.workers.get(ev.worker_id)
        if w is None:
            return
        w.tasks_done += 1
        self._free(t)
        run = t.run
        run.seconds = max(0.0, d.end - d.start)
        self.durability.task_ran(run.seconds)
        t.done, t.done_worker, t.hostname = d, ev.worker_id, w.hostname
        result = TaskResult(d.result) if d.result in TaskResult._value2member_map_ \
            else TaskResult.UNKNOWN
        if not (result is TaskResult.SUCCESS and d.exit_code == 0):
            self._task_failed(t, result, d)
            return
        for name, size in d.outputs:
            f = self._file(name)
            f.size, f.produced = size, True
            f.failed_producer = None
            if f.pruned and f.released and f.spec.kind == "temp":
                f.pruned = False  # remade by a recovery run
            self.replicas.set_ready(name, ev.worker_id, size)
            self.durability.produced(name, ev.worker_id, t)
        t.python_result = d.python_result
        if not run.recovery:
            for name, _ in t.spec.outputs:
                f = self.files[name]
                if f.spec.kind == "file" and f.spec.path:
                    t.retrievals.add(self._start_retrieval(
                        name, ev.worker_id, f.spec.path, RetrievalKind.TASK_OUTPUT,
                        t.spec.task_id))
            if t.spec.python_payload is not None and not t.spec.temp_output \
                    and d.python_result is None:
                pyout = f"pyout-{t.spec.task_id}-{t.attempt}"
                if any(n == pyout for n, _ in d.outputs):
                    t.retrievals.add(self._start_retrieval(
                        pyout, ev.worker_id, posixpath.join(self.staging_dir, pyout),
                        RetrievalKind.PYTHON_RESULT, t.spec.task_id))
        for name, _ in d.outputs:
            self._file_became_available(name)
            self._drain_saved(name)
        if t.retrievals:
            self._transition(t, T.WAITING_RETRIEVAL)
        else:
            self._end(t, RunOutcome.SUCCEEDED, TaskResult.SUCCESS, d.exit_code, d.output)

    def _task_failed(self, t: TaskRecord, result: TaskResult, d: TaskDone) -> None:
        if result in RETRYABLE_ON_ANOTHER_WORKER \
                and t.count(RunOutcome.WORKER_FAULT) < WORKER_FAULT_ATTEMPTS:
            t.avoid.add(t.done_worker)  # it failed there for the worker's sake: go elsewhere
            self._requeue(t, RunOutcome.WORKER_FAULT,
                          f"retry: {result} on {t.done_worker}: {d.message[:120]}")
            return
        if t.run.recovery:
            if t.count(RunOutcome.FAILED, recovery=True) < RECOVERY_ATTEMPTS:
                # a recovery run has its own budget: the user's retries are not charged
                self._requeue(t, RunOutcome.FAILED, f"retry recovery: {result} exit {d.exit_code}")
                return
        elif t.count(RunOutcome.FAILED, recovery=False) < t.spec.max_retries:
            self._requeue(t, RunOutcome.FAILED, f"retry: {result} exit {d.exit_code}")
            return
        t.message = d.message
        t.python_result = d.python_result  # a PythonTask's pickled exception
        self._end(t, RunOutcome.FAILED, result, d.exit_code, d.output)

    # ================================================================ dispatch
    def _schedule(self) -> None:
        if not self._ready or not self.workers:
            return
        skipped: list[tuple[float, int, int]] = []
        workers = self.workers
        while self._ready:
            if not any((w.free.cores > 0 or w.free.gpus > 0) and not w.draining
                       for w in workers.values()):
                break
            item = heapq.heappop(self._ready)
            t = self.tasks.get(item[2])
            if t is None or t.state is not T.READY:
                continue
            if not self._place(t):
                skipped.append(item)
                if len(skipped) > PLACE_SKIP_MAX:
                    break
        for item in skipped:
            heapq.heappush(self._ready, item)

    def _place(self, t: TaskRecord) -> bool:
        s = t.spec
        declared = (s.cores, s.memory, s.disk, s.gpus)
        input_bytes: dict[str, int] = {}
        for name, _ in s.inputs:
            size = max(0, self.files[name].size)
            for holder in self.replicas.holders(name):
                input_bytes[holder] = input_bytes.get(holder, 0) + size + 1
        cands = [Candidate(w.worker_id, w.total, w.free, len(w.running))
                 for w in self.workers.values()
                 if not w.draining and w.worker_id not in t.avoid
                 and self.durability.can_host(w, t)]
        choice = choose_worker(cands, declared, input_bytes)
        if choice is None:
            if t.unplaceable_since < 0 and not could_ever_fit(
                    (w.total for w in self.workers.values() if not w.draining), declared):
                t.unplaceable_since = self.now
                self._unplaceable[s.task_id] = None
            return False
        wid, alloc = choice
        w = self.workers[wid]
        w.free.sub(alloc)
        w.running.add(s.task_id)
        t.run.worker, t.run.alloc = wid, alloc
        if t.unplaceable_since >= 0:
            t.unplaceable_since = -1.0
            self._unplaceable.pop(s.task_id, None)
        t.staging.clear()
        for name, _ in s.inputs:
            st = self.replicas.state(name, wid)
            if st is ReplicaState.READY:
                continue
            t.staging.add(name)
            self._stage_wait.setdefault((name, wid), {})[s.task_id] = None
        if not t.staging:
            self._transition(t, T.STAGING, wid)
            self._run(t)
            return True
        self._transition(t, T.STAGING, ",".join(sorted(t.staging))[:200])
        for name in sorted(t.staging):
            if self.replicas.state(name, wid) is None:
                self._source_transfer(name, wid)
        return True

    def _run(self, t: TaskRecord) -> None:
        s = t.spec
        a = t.run.alloc or Resources()
        py_out = s.python_output
        if s.python_payload is not None and not s.temp_output:
            py_out = f"pyout-{s.task_id}-{t.attempt}"
        self._send(t.worker or "", RunTask(
            task_id=s.task_id, attempt=t.attempt, command=s.command,
            inputs=list(s.inputs), outputs=list(s.outputs), env=list(s.env),
            cores=a.cores, memory=a.memory, disk=a.disk, gpus=a.gpus, time_max=s.time_max,
            python_payload=s.python_payload, python_output=py_out,
            python_mode=(s.python_mode or self.tune.python_exec) if s.python_payload else "",
            python_keep=s.temp_output,
        ))
        self._transition(t, T.RUNNING, t.worker or "")

    def allocation(self, task_id: int, worker_id: str) -> Resources:
        """What a task would take of a worker (for status and tests)."""
        s = self.tasks[task_id].spec
        return task_allocation(self.workers[worker_id].total, s.cores, s.memory, s.disk, s.gpus)

    # ================================================================ transfers
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
            if not any(r.name == name and r.kind in (RetrievalKind.FETCH, RetrievalKind.CHECKPOINT)
                       for r in self._retrievals.values()):
                holder = self.replicas.ready_workers(name)[0]
                self._start_retrieval(name, holder, posixpath.join(self.staging_dir, name),
                                      RetrievalKind.FETCH)
                self._log("TRANSFER", name, "QUEUED", "-", dest, f"via the manager from {holder}")
            return
        if src is None:
            if replication:
                return  # retried by the durability policy after the next event
            self._unsourced[(name, dest)] = None
            if not self.available(name):
                self._later(self._file_lost, name, "no source left")
            else:
                self._log("TRANSFER", name, "QUEUED", "-", dest, "all sources busy or avoided")
            return
        self._unsourced.pop((name, dest), None)
        tr = self.replicas.start_transfer(name, dest, src, self.now, replication)
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

    def _on_replica_ready(self, ev: ReplicaReady) -> None:
        if ev.worker_id not in self.workers:
            return
        tr = self.replicas.end_transfer(ev.transfer_id) if ev.transfer_id else None
        f = self.files.get(ev.name)
        if f is None or f.pruned:  # undeclared or pruned meanwhile: it is not wanted there
            self.replicas.remove(ev.name, ev.worker_id)
            self._send(ev.worker_id, Unlink(name=ev.name))
            return
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
            if tr.replication:
                self.stats.replicas_made += 1
                self.file_story_add(ev.name, f"replica made on {ev.worker_id}")
        self._stage_arrived(ev.name, ev.worker_id)
        self._file_became_available(ev.name)
        self._drain_saved(ev.name)
        self._retry_unsourced()

    def _stage_arrived(self, name: str, wid: str) -> None:
        for tid in self._stage_wait.pop((name, wid), ()):
            t = self.tasks.get(tid)
            if t is None or t.state is not T.STAGING or t.worker != wid:
                continue
            t.staging.discard(name)
            if not t.staging:
                self._run(t)

    def _on_replica_failed(self, ev: ReplicaFailed) -> None:
        tr = self.replicas.end_transfer(ev.transfer_id) if ev.transfer_id else None
        self.replicas.remove(ev.name, ev.worker_id)
        if ev.cause is TransferFailure.NONE:  # the worker cancelled it for our Unlink
            if ev.worker_id in self.workers and ev.name in self.files \
                    and self._stage_wait.get((ev.name, ev.worker_id)):
                self._source_transfer(ev.name, ev.worker_id)
            return
        self._log("TRANSFER", ev.name, "FAILED", tr.source if tr else "-", ev.worker_id,
                  f"{ev.cause.name}: {ev.reason[:200]}")
        at_source = ev.cause.at_source
        if tr is not None and tr.source != MANAGER:
            self.replicas.avoid(tr.source, self.now + self.tune.transfer_avoid_seconds)
            if at_source:
                self.replicas.remove(ev.name, tr.source)  # the source no longer has it
                src = self.workers.get(tr.source)
                if src is not None and src.draining and ev.name in self._drain_wait.get(
                        tr.source, {}):
                    self._save_from_draining(ev.name, src)  # try the manager instead
        if ev.worker_id not in self.workers or ev.name not in self.files:
            return
        if tr is not None and tr.source == MANAGER and at_source:
            self._manager_copy_missing(ev.name, ev.reason)
            return
        if self._stage_wait.get((ev.name, ev.worker_id)):
            self._source_transfer(ev.name, ev.worker_id)  # a lost file is handled there
        elif not self.available(ev.name):
            self._later(self._file_lost, ev.name, ev.reason)

    def _manager_copy_missing(self, name: str, reason: str) -> None:
        f = self.files[name]
        f.at_manager = False
        for key in [k for k in self._stage_wait if k[0] == name]:
            for tid in self._stage_wait.pop(key):
                t = self.tasks.get(tid)
                if t is not None and t.state is T.STAGING:
                    t.message = f"input {name} could not be read at the manager: {reason}"
                    self._end(t, RunOutcome.INPUT_FAILED, TaskResult.INPUT_MISSING, -1, "",
                              "input missing at the manager")

    # ================================================================ retrievals
    def _start_retrieval(self, name: str, wid: str, dest: str, kind: RetrievalKind,
                         task_id: int = 0) -> int:
        rid = self._next_retrieval
        self._next_retrieval += 1
        w = self.workers[wid]
        self._retrievals[rid] = RetrievalRecord(kind, name, wid, task_id, dest)
        f = self.files.get(name)
        self._out.append(Retrieve(rid, wid, w.host, w.transfer_port, name, dest,
                                  f.size if f else -1, self._stim))
        return rid

    def _on_retrieval_done(self, ev: RetrievalDone) -> None:
        r = self._retrievals.pop(ev.retrieval_id, None)
        if r is None:
            return
        w = self.workers.get(r.worker)
        if ev.ok:
            self.stats.bytes_received += ev.size
            self.stats.bytes_received_files += ev.size
            self.stats.transfers_received += 1
            if w is not None:
                w.bytes_out += ev.size
            self._log("TRANSFER", r.name, "DONE", r.worker, MANAGER, ev.size,
                      round(ev.seconds, 6))
            self.durability.transfer_measured(ev.size, ev.seconds, to_manager=True)
        else:
            self._log("TRANSFER", r.name, "FAILED", r.worker, MANAGER,
                      f"{ev.cause.name}: {ev.error[:200]}")
        if r.kind in (RetrievalKind.FETCH, RetrievalKind.CHECKPOINT):
            self._file_retrieved(r, ev)
        else:
            self._output_retrieved(r, ev, w)

    def _file_retrieved(self, r: RetrievalRecord, ev: RetrievalDone) -> None:
        f = self.files.get(r.name)
        if f is None:
            return
        if ev.ok:
            f.at_manager, f.manager_path = True, r.dest
            if r.kind is RetrievalKind.CHECKPOINT:
                self.stats.bytes_checkpointed += ev.size
                self.file_story_add(r.name, "checkpointed at the manager")
            for req in f.fetch_requests:
                self._out.append(FetchDone(req, r.dest, "", self._stim))
            f.fetch_requests.clear()
            self._drain_saved(r.name)
            self._retry_unsourced()  # transfers waiting for a manager copy can start
        else:
            if r.worker in self._drain_wait and r.name in self._drain_wait[r.worker]:
                del self._drain_wait[r.worker][r.name]  # nowhere to save it: it may be lost
                self._later(self._maybe_drained, r.worker)
            if f.fetch_requests:
                if self.replicas.ready_workers(r.name):
                    reqs, f.fetch_requests = f.fetch_requests, []
                    for req in reqs:
                        self._serve_fetch(req, r.name)
                else:
                    for req in f.fetch_requests:
                        self._out.append(FetchDone(req, None, f"could not fetch: {ev.error}",
                                                   self._stim))
                    f.fetch_requests.clear()
        self.durability.recheck(r.name)

    def _output_retrieved(self, r: RetrievalRecord, ev: RetrievalDone,
                          w: WorkerRecord | None) -> None:
        t = self.tasks.get(r.task_id)
        if t is None or t.state is not T.WAITING_RETRIEVAL or ev.retrieval_id not in t.retrievals:
            return
        t.retrievals.discard(ev.retrieval_id)
        if ev.ok:
            f = self.files.get(r.name)
            if f is not None and r.kind is RetrievalKind.TASK_OUTPUT:
                f.at_manager, f.manager_path = True, r.dest
                if f.spec.cache_level <= CacheLevel.TASK and w is not None:
                    self.replicas.remove(r.name, r.worker)
                    self._send(r.worker, Unlink(name=r.name))
            if r.kind is RetrievalKind.PYTHON_RESULT:
                t.result_path = r.dest
                self.replicas.remove(r.name, r.worker)
                if w is not None:
                    self._send(r.worker, Unlink(name=r.name))
        elif w is None or (ev.cause.at_source
                           and t.count(RunOutcome.OUTPUT_LOST) < WORKER_FAULT_ATTEMPTS):
            # the worker went away with the outputs, or cannot serve them (a killed worker
            # refuses connections before its disconnection is seen): run the task again
            t.retrievals.clear()
            self._requeue(t, RunOutcome.OUTPUT_LOST, f"output {r.name} not served: "
                                                     f"{ev.error[:120]}")
            return
        else:
            t.message = f"could not retrieve output {r.name}: {ev.error}"
        if not t.retrievals:
            d = t.done
            code = d.exit_code if d else -1
            out = d.output if d else ""
            if t.message.startswith("could not retrieve output"):
                self._end(t, RunOutcome.OUTPUT_LOST, TaskResult.OUTPUT_TRANSFER_ERROR, code, out)
            else:
                self._end(t, RunOutcome.SUCCEEDED, TaskResult.SUCCESS, code, out)

    # ---------------------------------------------------------------- fetch_file
    def _on_fetch_requested(self, ev: FetchRequested) -> None:
        if ev.name not in self.files:
            self._out.append(FetchDone(ev.request_id, None, f"unknown file {ev.name}",
                                       self._stim))
            return
        self._serve_fetch(ev.request_id, ev.name)

    def _serve_fetch(self, req: int, name: str) -> None:
        f = self.files[name]
        if f.at_manager and f.manager_path:
            self._out.append(FetchDone(req, f.manager_path, "", self._stim))
            return
        holders = self.replicas.ready_workers(name)
        if holders:
            pending = any(r.name == name and r.kind in (RetrievalKind.FETCH,
                                                        RetrievalKind.CHECKPOINT)
                          for r in self._retrievals.values())
            f.fetch_requests.append(req)
            if not pending:
                self._start_retrieval(name, holders[0], posixpath.join(self.staging_dir, name),
                                      RetrievalKind.FETCH)
            return
        if f.failed_producer is not None:
            self._out.append(FetchDone(req, None, f"producer task {f.failed_producer} failed",
                                       self._stim))
            return
        if f.producer is None or f.pruned and f.spec.kind != "temp":
            self._out.append(FetchDone(req, None, f"no copy of {name} exists", self._stim))
            return
        f.fetch_requests.append(req)
        self._later(self._ensure_coming, name)

    # ================================================================ misc
    def _on_tuned(self, ev: Tuned) -> None:
        self.tune.set(ev.name, ev.value)
        self._log("MANAGER", "TUNE", ev.name, ev.value)

    def _on_hoist(self, ev: HoistRequested) -> None:
        new = [m for m in ev.modules if m not in self.hoisted]
        self.hoisted.extend(new)
        if new:
            for wid in self.workers:
                self._send(wid, Hoist(modules=list(new)))

    # ================================================================ invariants
    def validate_state(self) -> None:
        """Check every invariant of the records (raises AssertionError naming the breach)."""
        from .validate import validate

        validate(self)


def _heard(handler: Callable[[ManagerState, Any], None]) -> Callable[[ManagerState, Any], None]:
    """Wrap a handler of a worker's message: any message counts as a sign of life."""
    def wrapped(s: ManagerState, ev: Any) -> None:
        w = s.workers.get(ev.worker_id)
        if w is not None:
            w.last_heard = s.now
        handler(s, ev)
    return wrapped


_HANDLERS: dict[type[Event], Callable[[ManagerState, Any], None]] = {
    WorkerJoined: ManagerState._on_worker_joined,
    WorkerLeft: ManagerState._on_worker_left,
    WorkerHeard: _heard(ManagerState._on_worker_heard),
    WorkerLeaving: _heard(ManagerState._on_worker_leaving),
    FileDeclared: ManagerState._on_file_declared,
    FileUndeclared: ManagerState._on_file_undeclared,
    FileReleased: ManagerState._on_file_released,
    TaskSubmitted: ManagerState._on_task_submitted,
    TaskCancelled: ManagerState._on_task_cancelled,
    TaskCollected: ManagerState._on_task_collected,
    TaskReported: _heard(ManagerState._on_task_reported),
    ReplicaReady: _heard(ManagerState._on_replica_ready),
    ReplicaFailed: _heard(ManagerState._on_replica_failed),
    RetrievalDone: ManagerState._on_retrieval_done,
    FetchRequested: ManagerState._on_fetch_requested,
    Tick: ManagerState._on_tick,
    Tuned: ManagerState._on_tuned,
    HoistRequested: ManagerState._on_hoist,
}
