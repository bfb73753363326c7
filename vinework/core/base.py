"""The data and the primitives every part of the manager's core shares.

``CoreBase`` holds the records (tasks, files, workers, replicas), the output
list of the event being handled, the queue of cascade steps, and the few
primitives the rest is built on: ``_transition`` (the one place a task's state
changes), ``_later`` (queue a cascade step instead of recursing), ``_log`` and
``_send`` (append commands), and the read-only queries. The behaviour lives in
three parts, one noun each, combined into ``ManagerState`` (``state.py``):
``tasks.TaskLifecycle``, ``workers.WorkerLifecycle`` and ``files.FileLogistics``;
the methods they call across parts are declared here, for type checking only.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..constants import TaskResult
from ..protocol import TaskDone
from . import durability as dur
from .events import (
    Command,
    FileSpec,
    LibrarySpec,
    Log,
    Send,
    TaskSpec,
)
from .fast import T
from .records import (
    FileRecord,
    LibraryInstance,
    RetrievalKind,
    RetrievalRecord,
    RunOutcome,
    RunRecord,
    TaskRecord,
    TaskState,
    WorkerRecord,
)
from .replicas import ReplicaTable
from .scheduling import Resources, task_allocation
from .stats import ManagerStats
from .transitions import VINE_TASK_STATE, check_task
from .tunables import Tunables

RECOVERY_ATTEMPTS = 2  # extra tries of a failed recovery run before its consumers fail
WORKER_FAULT_ATTEMPTS = 3  # runs that may fail for a worker's sake before the task does
RETRYABLE_ON_ANOTHER_WORKER = (TaskResult.DISK_EXHAUSTION,)
ABLE_EVERY = 1.0  # seconds a scan for the largest waiting task serves (stats_snapshot)
ABLE_SCAN_FREE = 5000  # tasks held below which that scan is always redone
PLACE_SKIP_MAX = 64  # ready tasks looked at per scheduling pass that do not fit anywhere


class CoreBase:
    """The shared records and primitives of the core (see the module docstring)."""

    def __init__(self, staging_dir: str = "/nonexistent", tunables: Tunables | None = None,
                 validate: bool = False) -> None:
        self.staging_dir = staging_dir
        self.tune = tunables or Tunables()
        if validate:
            self.tune.validate = True
        self.stats = ManagerStats()
        # worker -> worker bytes by (source, dest) worker ids (the dashboard's transfer graph)
        self.peer_pairs: dict[tuple[str, str], int] = {}
        self.tasks: dict[int, TaskRecord] = {}
        self.files: dict[str, FileRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.replicas = ReplicaTable()
        self.durability = dur.Durability(self.files, self.tasks, self.workers, self.replicas,
                                         self.stats, self.tune)
        self.now = 0.0
        self.hoisted: list[str] = []
        # files workers kept from an earlier manager, not declared (yet): name -> {wid: size}
        self._unclaimed: dict[str, dict[str, int]] = {}
        self._blocked: dict[str, float] = {}  # host -> until (0: for good)
        self._released_last = 0  # workers told to go by the last workers_shutdown
        # resource limits: category ("" = all) -> {"max"|"min": (cores, memory, disk, gpus)}
        self.limits: dict[str, dict[str, tuple[int | None, ...]]] = {}
        self._timed: list[tuple[float, int]] = []  # (end_by, task id) heap of deadlines
        # (when the manager gives up on it, task id, attempt) of running tasks with a limit
        self._deadlines: list[tuple[float, int, int]] = []
        self._full_until: dict[str, float] = {}  # worker -> no new inputs there before then
        self._bad_data: dict[str, int] = {}  # worker -> transfers it served wrong bytes for
        self._deferred = False  # a ready task waits for its start time (set_time_start)
        self._rng = random.Random(0)  # the "rand" scheduler's (seeded: deterministic core)
        self._seq = 0
        self._events = 0
        self._stim = ""
        self._ready: list[tuple[float, int, int]] = []
        self._stage_wait: dict[tuple[str, str], dict[int, None]] = {}
        self._unsourced: dict[tuple[str, str], None] = {}  # fetches waiting for a source
        # (input, worker) -> mini-task files to make there once that input is ready
        self._mini_wait: dict[tuple[str, str], dict[str, None]] = {}
        self._retrievals: dict[int, RetrievalRecord] = {}
        self._next_retrieval = 1
        self._drain_wait: dict[str, dict[str, None]] = {}  # draining worker -> files to save
        self._out: list[Command] = []
        self._work: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._unreturned = 0  # submitted tasks not yet handed to the API
        self._heartbeat_at = 0.0
        self._heartbeat_seq = 0
        self._unplaceable: dict[int, None] = {}  # READY tasks no connected worker can run
        self._peaks: dict[str, int] = {}  # the most entries each big dict has held
        self._counts: dict[TaskState, int] = dict.fromkeys(TaskState, 0)
        self._no_worker_since: float | None = None
        self._no_worker_noted = False
        # serverless libraries (libraries.py): installed specs, instances, queued calls
        self.libraries: dict[str, LibrarySpec] = {}
        self.instances: dict[int, LibraryInstance] = {}
        self._lib_instances: dict[str, dict[int, None]] = {}  # library -> its instance ids
        self._on_worker: dict[str, dict[int, None]] = {}  # worker -> instance ids there
        self._instance_names: dict[int, str] = {}  # started instances' libraries (logs)
        self._lib_ready: dict[str, list[tuple[float, int, int]]] = {}  # READY calls
        self._next_instance = 0
        # something changed that may let a queued call be placed (a slot or resources freed,
        # a worker came, a call became the head of its queue): the next pass looks
        self._calls_dirty = True
        self._lib_setup_failures: dict[str, int] = {}  # library -> failed set-ups in a row
        self._lib_broken: dict[str, str] = {}  # library -> why its calls end at once
        self._lib_noted: set[str] = set()  # libraries said to fit no connected worker

    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue one step of a cascade (run by ``_drain``, never recursively)."""
        self._work.append((fn, args))

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

    def manager_source(self, name: str) -> str | tuple[str, int] | None:
        """What the manager's transfer server sends for ``name``: the path, with the
        permission bits ``File.set_mode`` chose if any."""
        f = self.files.get(name)
        if f is None or not f.at_manager or f.manager_path is None:
            return None
        return (f.manager_path, f.spec.mode) if f.spec.mode >= 0 else f.manager_path

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

    def stats_snapshot(self) -> ManagerStats:
        """A copy of the counters with TaskVine's "now" fields filled in."""
        st = self.stats.copy()
        c = self._counts
        st.tasks_waiting = c[T.WAITING] + c[T.READY]
        st.tasks_running = c[T.RUNNING]
        st.tasks_on_workers = c[T.RUNNING] + c[T.STAGING] + c[T.WAITING_RETRIEVAL]
        st.tasks_with_results = c[T.RETRIEVED]
        ws = list(self.workers.values())
        st.workers_busy = sum(1 for w in ws if w.running)
        st.workers_idle = len(ws) - st.workers_busy
        big = self._largest_waiting()
        st.workers_able = sum(1 for w in ws if w.total.cores >= big[0]
                              and w.total.memory >= big[1] and w.total.disk >= big[2]
                              and w.total.gpus >= big[3])
        for r in ("cores", "memory", "disk", "gpus"):
            tot = [getattr(w.total, r) for w in ws]
            setattr(st, "total_" + r, sum(tot))
            setattr(st, "committed_" + r,
                    sum(getattr(w.total, r) - getattr(w.free, r) for w in ws))
            setattr(st, "max_" + r, max(tot, default=0))
            setattr(st, "min_" + r, min(tot, default=0))
        st.inuse_cache = sum(w.disk_used for w in ws)
        return st

    def _largest_waiting(self) -> list[int]:
        """The largest cores, memory, disk and gpus any waiting task asks for: a scan of
        every task, so with more than ``ABLE_SCAN_FREE`` tasks held it is redone at most
        once per ``ABLE_EVERY`` seconds of core time (status, the dashboard and the
        performance log ask often; ``workers_able`` may lag that much behind)."""
        cached = getattr(self, "_able_cache", None)
        if cached is not None and len(self.tasks) > ABLE_SCAN_FREE \
                and self.now - cached[0] < ABLE_EVERY:
            return cached[1]
        big = [0, 0, 0, 0]
        for t in self.tasks.values():
            if t.state is T.WAITING or t.state is T.READY:
                s = t.spec
                for i, v in enumerate((s.cores, s.memory, s.disk, s.gpus)):
                    if v and v > big[i]:
                        big[i] = v
        self._able_cache = (self.now, big)
        return big

    def hungry(self) -> int:
        """How many more tasks the manager would take now (TaskVine's ``hungry``).

        At least ``hungry-minimum`` minus the tasks waiting; and, with workers
        connected, as many tasks of the average size as fit in ``hungry-minimum-factor``
        times the workers' resources less what running tasks hold, minus the tasks
        waiting. The average size is that of the waiting tasks (up to
        ``attempt-schedule-depth`` of them), else that of the running ones, else one
        core; only the resources they ask for limit the count.
        """
        waiting = self._counts[T.WAITING] + self._counts[T.READY] + self._counts[T.STAGING]
        base = max(0, self.tune.hungry_minimum - waiting)
        workers = [w for w in self.workers.values() if not w.draining]
        if not workers:
            return base
        calls = self._hungry_calls()
        if calls is not None:  # FunctionCalls: what the instances' function slots take
            room, calls_waiting = calls
            waiting -= calls_waiting
            base = max(base, room)
        factor = self.tune.hungry_minimum_factor
        total = [0.0, 0.0, 0.0, 0.0]
        used = [0.0, 0.0, 0.0, 0.0]
        for w in workers:
            tot, free = w.total, w.free
            for i, (x, y) in enumerate(((tot.cores, free.cores), (tot.memory, free.memory),
                                        (tot.disk, free.disk), (tot.gpus, free.gpus))):
                total[i] += x
                used[i] += x - y
        sample: list[tuple[float, float, float, float]] = []
        depth = max(1, self.tune.attempt_schedule_depth)
        biggest = max((w.total for w in workers), key=lambda r: (r.cores, r.memory, r.disk))
        for t in self.tasks.values():
            if (t.state is T.WAITING or t.state is T.READY or t.state is T.STAGING) \
                    and not t.spec.library:  # (a call takes a slot, not the worker)
                s = t.spec  # what it would take of the biggest worker (unset: all of it)
                a = task_allocation(biggest, s.cores, s.memory, s.disk, s.gpus)
                sample.append((a.cores, a.memory, a.disk, a.gpus))
                if len(sample) >= depth:
                    break
        if not sample:
            for w in workers:
                for tid in w.running:
                    al = self.tasks[tid].run.alloc
                    if al is not None:
                        sample.append((al.cores, al.memory, al.disk, al.gpus))
        if not sample:
            sample = [(1, 0, 0, 0)]
        fits: list[float] = []
        for i in range(4):
            per = sum(x[i] for x in sample) / len(sample)
            if per > 0:
                fits.append(max(0.0, factor * total[i] - used[i]) / per)
        if not fits:
            fits.append(max(0.0, factor * total[0] - used[0]))
        return max(base, int(min(fits)) - waiting)

    def _hungry_calls(self) -> tuple[int, int] | None:
        """For ``hungry``: how many more calls the running library instances would take
        (``hungry-minimum-factor`` times their slots, less the calls they run and the
        calls queued), and how many calls are queued; None without instances."""
        if not self.instances:
            return None
        queued = sum(len(q) for q in self._lib_ready.values())
        live = [i for i in self.instances.values() if not i.dead]
        slots = sum(i.slots for i in live)
        busy = sum(len(i.calls) for i in live)
        return max(0, int(self.tune.hungry_minimum_factor * slots) - busy - queued), queued

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
        """The files a task makes (its outputs, and its result when kept as a temp)."""
        s = t.spec
        if not s.temp_output:
            return [n for n, _ in s.outputs] if s.outputs else []
        names = [n for n, _ in s.outputs]
        if s.python_output:
            names.append(s.python_output)
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
        t.story.append((self.now, old._value_, new._value_, f"{self._stim}: {why}" if why
                        else self._stim))
        self._out.append(Log("TASK", (t.spec.task_id, new._value_, t.worker or "-", t.attempt,
                                      why), self._stim))

    def _new_run(self, t: TaskRecord, recovery: bool = False) -> RunRecord:
        return_to = t.state if recovery else None
        r = RunRecord(attempt=len(t.runs), recovery=recovery, return_to=return_to)
        t.runs.append(r)
        return r

    if TYPE_CHECKING:  # implemented by the parts combined in ManagerState
        def _push_ready(self, t: TaskRecord) -> None: ...
        def _assign(self, t: TaskRecord, wid: str, alloc: Resources,
                    extra_inputs: list[str] | None = None) -> None: ...
        def _library_start(self, t: TaskRecord) -> None: ...
        def _call_slot_freed(self, t: TaskRecord) -> None: ...
        def _call_library_exit(self, t: TaskRecord, d: TaskDone) -> None: ...
        def _forget_worker_instances(self, wid: str) -> None: ...
        def _schedule_calls(self) -> None: ...
        def _evict_idle_for_tasks(self) -> None: ...
        def _declared(self, s: TaskSpec) -> tuple[int | None, int | None, int | None,
                                                  int | None]: ...
        def _requeue(self, t: TaskRecord, outcome: RunOutcome, why: str) -> None: ...
        def _expire(self) -> None: ...
        def _schedule(self) -> None: ...
        def _run_lost(self, t: TaskRecord, outcome: RunOutcome, why: str,
                      result: TaskResult = ..., exit_code: int = -1,
                      output: str = "") -> None: ...
        def _settle_report(self, t: TaskRecord, wid: str, d: TaskDone) -> None: ...
        def _end(self, t: TaskRecord, outcome: RunOutcome, result: TaskResult,
                 exit_code: int, output: str, why: str = "") -> None: ...
        def _file_lost(self, name: str, why: str) -> None: ...
        def _file_failed(self, name: str, producer: int) -> None: ...
        def _file_became_available(self, name: str) -> None: ...
        def _ensure_coming(self, name: str) -> None: ...
        def _manager_copy_missing(self, name: str, reason: str) -> None: ...
        def _maybe_forget_file(self, name: str) -> None: ...
        def _maybe_forget_task(self, task_id: int) -> None: ...
        def _run(self, t: TaskRecord) -> None: ...
        def _prune(self, name: str) -> None: ...
        def _source_transfer(self, name: str, dest: str, replication: bool = False) -> None: ...
        def _start_fetch(self, name: str, dest: str, src: str,
                         replication: bool = False) -> None: ...
        def _checkpoint(self, name: str, worker: str) -> None: ...
        def _retry_unsourced(self) -> None: ...
        def _arm_deadline(self, t: TaskRecord) -> None: ...
        def _check_deadlines(self) -> None: ...
        def _check_listed(self, wid: str, running: tuple[int, ...]) -> None: ...
        def _can_host(self, w: WorkerRecord, t: TaskRecord) -> bool: ...
        def _make_room_for(self, t: TaskRecord, wid: str) -> None: ...
        def _trim_cache(self, wid: str) -> None: ...
        def _no_room(self, name: str, wid: str, reason: str) -> None: ...
        def _worker_gone(self, wid: str, reason: str) -> None: ...
        def _start_retrieval(self, name: str, wid: str, dest: str, kind: RetrievalKind,
                             task_id: int = 0) -> int: ...
        def _serve_fetch(self, req: int, name: str) -> None: ...
        def _drain_saved(self, name: str) -> None: ...
        def _save_from_draining(self, name: str, w: WorkerRecord) -> None: ...
        def _maybe_drained(self, wid: str) -> None: ...
