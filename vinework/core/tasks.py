"""A task's life in the core: readiness, placement, runs, results, and the cascades.

``TaskLifecycle`` moves tasks through their states (always by ``_transition``):
WAITING or READY by their inputs, STAGING and RUNNING once placed, then
RETRIEVED (or back to READY/WAITING for a new run: a retry, a worker lost, a
recovery). When a run is over for good it settles the files it made and the
consumers downstream; a failure, a loss, a recovery and a pruning each move
on by queueing their next step (``_later``), never by calling themselves.
A DONE task's record is forgotten as soon as no kept temp can need it re-run.
"""

from __future__ import annotations

import heapq
import posixpath

from ..constants import CacheLevel, TaskResult
from ..protocol import (
    Kill,
    RunTask,
    TaskDone,
    Unlink,
)
from .base import (
    PLACE_SKIP_MAX,
    RECOVERY_ATTEMPTS,
    RETRYABLE_ON_ANOTHER_WORKER,
    WORKER_FAULT_ATTEMPTS,
    CoreBase,
)
from .events import (
    FetchDone,
    ResourcesLimited,
    TaskCancelled,
    TaskCollected,
    TaskReported,
    TaskReturned,
    TaskSpec,
    TaskSubmitted,
)
from .fast import RK, RO, RS, TR, T
from .mountflags import (
    all_outputs,
    failure_outputs,
    optional_outputs,
    strict_inputs,
    symlink_inputs,
    unwanted_outputs,
    watched_outputs,
)
from .records import (
    RunOutcome,
    RunRecord,
    TaskRecord,
    WorkerRecord,
)
from .scheduling import Candidate, Resources, choose_worker, could_ever_fit, task_allocation


class TaskLifecycle(CoreBase):
    """Tasks: readiness, placement, runs, results and the cascades they start."""

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
                self._end(t, RO.INPUT_FAILED, TR.INPUT_MISSING, -1, "",
                          "input undeclared")
                return
            if not self.available(name):
                if f.producer is None and f.spec.kind != "temp":
                    # a file or buffer of the manager's that it can no longer serve, and
                    # that no task makes: it can never come
                    t.message = f"input {name} has no copy anywhere and no task makes it"
                    self._end(t, RO.INPUT_FAILED, TR.INPUT_MISSING, -1, "", "input missing")
                    return
                t.missing.add(name)
        if t.missing:
            for name in t.missing:
                self.files[name].waiting.add(t.spec.task_id)
            self._transition(t, T.WAITING, why or "missing " + ",".join(sorted(t.missing))[:200])
            for name in sorted(t.missing):
                self._later(self._ensure_coming, name)
        else:
            self._transition(t, T.READY, why)
            self._push_ready(t)

    def _requeue(self, t: TaskRecord, outcome: RunOutcome, why: str) -> None:
        """End the current run with ``outcome`` and start a new one (same recovery-ness)."""
        marker = "FORSAKEN" if outcome is RO.WORKER_LOST else "RETRY"
        self._log("TASK", t.spec.task_id, marker, t.worker or "-", t.attempt, why)
        rec = t.run.recovery
        ret = t.run.return_to
        t.run.outcome = outcome
        self._release(t)
        r = RunRecord(attempt=len(t.runs), recovery=rec, return_to=ret)
        t.runs.append(r)
        self._wait_or_ready(t, why)

    def _run_lost(self, t: TaskRecord, outcome: RunOutcome, why: str,
                  result: TaskResult = TR.MAX_RETRIES, exit_code: int = -1,
                  output: str = "") -> None:
        """A run lost for the worker's sake (TaskVine's retries: worker loss, resource
        exhaustion, transient faults): run again, unless ``set_retries(n)`` is spent —
        then the task ends with ``result`` (MAX_RETRIES for a lost worker)."""
        n = t.spec.retries
        if n >= 1 and not t.run.recovery and t.runs:
            charged = 1 + sum(1 for r in t.runs if not r.recovery and r.outcome in
                              (RO.WORKER_LOST, RO.WORKER_FAULT))
            if charged > n:
                t.message = f"{why} (tried {len(t.runs)} times; set_retries({n}))"
                self._end(t, outcome, result, exit_code, output, why)
                return
        self._requeue(t, outcome, why)

    def _end(self, t: TaskRecord, outcome: RunOutcome, result: TaskResult, exit_code: int,
             output: str, why: str = "") -> None:
        """A run is over for good: settle the task (RETRIEVED, or back where a recovery
        run came from) and tell the files and the consumers downstream."""
        run = t.run
        run.outcome = outcome
        self._release(t)
        ok = outcome is RO.SUCCEEDED
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
            if t.state is not run.return_to:  # (a run that could not start never left it)
                self._transition(t, run.return_to, why or f"recovery run {outcome.value}")
            self.durability.recovery_finished(t, outputs, self.now)
            if run.return_to is T.DONE:
                self._later(self._maybe_forget_task, t.spec.task_id)
            return
        t.result, t.exit_code, t.output = result, exit_code, output
        self._transition(t, T.RETRIEVED, why or str(result))
        self._unreturned -= 1
        self.stats.tasks_done += 1
        if result is not TR.SUCCESS:
            self.stats.tasks_failed += 1
            if result is TR.CANCELLED:
                self.stats.tasks_cancelled += 1
        d = t.done
        self._out.append(TaskReturned(
            task_id=t.spec.task_id, result=int(result), exit_code=exit_code, output=output,
            worker_id=t.done_worker, hostname=t.hostname,
            start=d.start if d else 0.0, end=d.end if d else 0.0, attempts=len(t.runs),
            python_result=t.python_result, python_error=d.python_error if d else "",
            message=t.message or (d.message if d else ""), python_result_path=t.result_path,
            stdout_path=t.stdout_path, measured=tuple(d.measured) if d else (),
            allocated=(a.cores, a.memory, a.disk, a.gpus) if (a := t.last_alloc) else (),
            story=tuple(t.story), stimulus_id=self._stim,
        ))
        t.python_result = None
        t.result_path = ""
        t.stdout_path = ""
        t.done = None
        t.output = ""

    def _end_input_failed(self, t: TaskRecord, name: str, producer: int) -> None:
        p = self.tasks.get(producer)
        how = (f"could not run again to remake it ({p.message})"
               if p is not None and p.run.recovery and p.message else "failed")
        t.message = f"input {name} is missing: its producer task {producer} {how}"
        self._end(t, RO.INPUT_FAILED, TR.INPUT_MISSING, -1, "", "input missing")

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
        if run.instance:
            self._call_slot_freed(t)
        elif run.alloc.cores or run.alloc.gpus or run.alloc.memory:
            self._calls_dirty = True  # room for a library instance, maybe
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
            if f.spec.kind in ("file", "buffer") and not f.at_manager \
                    and self.replicas.ready_workers(name) == [w.worker_id]:
                continue  # the last copy (the manager's own was lost): kept
            if self.replicas.state(name, w.worker_id) is not None:
                # (a copy on its way for this task alone, which never ran, is called off:
                # the worker drops it at the Unlink, and its source has a slot free)
                if self.replicas.remove(name, w.worker_id):
                    self._later(self._retry_unsourced)
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
            if f.spec.kind in ("file", "buffer") and not f.at_manager:
                # the manager's own copy was unreadable and the last worker copy is gone:
                # nothing can bring it back, so the tasks that need it end
                self._manager_copy_missing(name, "no worker has a copy either")
            return
        p = self.tasks.get(f.producer)
        if p is None or p.state not in (T.RETRIEVED, T.DONE):
            return  # it is being made (or will be)
        if p.run.outcome is RO.SUCCEEDED:
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
        if f.lost:  # (already counted and handled since its last copy went)
            if f.consumers or f.fetch_requests:
                self._later(self._ensure_coming, name)
            return
        f.lost = True
        self.stats.files_lost += 1
        self._log("FILE", name, "LOST", why)
        self.file_story_add(name, f"lost: {why}")
        needed = False
        for key in [k for k in self._stage_wait if k[0] == name]:
            self._unsourced.pop(key, None)
            for tid in self._stage_wait.pop(key):
                t = self.tasks.get(tid)
                if t is not None and t.state is T.STAGING:
                    self._requeue(t, RO.WORKER_LOST, f"input {name} lost")
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
        f.lost = False
        if f.waiting:
            for tid in list(f.waiting):
                t = self.tasks.get(tid)
                f.waiting.discard(tid)
                if t is None or t.state is not T.WAITING:
                    continue
                t.missing.discard(name)
                if not t.missing:
                    self._transition(t, T.READY, f"input {name} available")
                    self._push_ready(t)
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
        if s.end_by:
            heapq.heappush(self._timed, (s.end_by, s.task_id))
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
            t.retrievals = frozenset()
        if t.run.recovery:  # a recovery run is the core's business, not the user's
            return
        t.message = "cancelled by the user"
        self._end(t, RO.CANCELLED, TR.CANCELLED, -1, "", "cancelled")

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
        inline = len(d.python_result or b"")  # (and the output text: bytes on the link)
        if d.output:
            inline += len(d.output) if d.output.isascii() else len(d.output.encode(
                "utf-8", "surrogateescape"))
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
        w.exec_seconds += run.seconds
        self.stats.time_workers_execute += int(run.seconds * 1e6)
        if d.result == 0 and d.exit_code == 0:
            self.stats.time_workers_execute_good += int(run.seconds * 1e6)
        elif d.result == TR.RESOURCE_EXHAUSTION:
            self.stats.tasks_exhausted_attempts += 1
        self.durability.task_ran(run.seconds)
        t.done, t.done_worker, t.hostname = d, ev.worker_id, w.hostname
        if d.stdout_file and not run.recovery:
            # a long stdout comes as a file: bring it back before settling the task
            self._transition(t, T.WAITING_RETRIEVAL, "stdout")
            t.retrievals = frozenset({self._start_retrieval(
                d.stdout_file, ev.worker_id, posixpath.join(self.staging_dir, d.stdout_file),
                RK.STDOUT, t.spec.task_id)})
            return
        if d.stdout_file:
            self._send(ev.worker_id, Unlink(name=d.stdout_file))
        self._settle_report(t, ev.worker_id, d)

    def _settle_report(self, t: TaskRecord, wid: str, d: TaskDone) -> None:
        """What a finished run's report means: failure handling, or its outputs."""
        result = TaskResult(d.result) if d.result in TaskResult._value2member_map_ \
            else TR.UNKNOWN
        optional = optional_outputs(t.spec)
        complete = all_outputs(t.spec.outputs, d.outputs, optional)
        command = t.spec.python_payload is None
        if result is TR.SUCCESS and not complete and command:
            result = TR.OUTPUT_MISSING  # TaskVine: whatever the exit code
        # A command that exits non-zero but made every output completes (TaskVine:
        # "success" with that exit code, outputs kept); a recovery run must exit 0.
        counts = result is TR.SUCCESS and (d.exit_code == 0 or (
            command and not t.run.recovery))
        if not counts:
            keep = set(failure_outputs(t.spec)) if optional else set()
            for name, _ in d.outputs:  # what the run made will not be used
                if name not in keep and self.replicas.state(name, wid) is None:
                    self._send(wid, Unlink(name=name))
            self._task_failed(t, result, d)
            if keep and t.run.final_failure is None:  # retried, or ended: not wanted
                for name, _ in d.outputs:
                    if name in keep and self.replicas.state(name, wid) is None:
                        self._send(wid, Unlink(name=name))
            return
        # failure_only / success_only outputs: kept only on the matching outcome (TaskVine:
        # "succeeded" is result success with exit code 0); never missing
        made = d.outputs
        if optional:
            unwanted = unwanted_outputs(optional, d.exit_code == 0)
            made = [(n, size) for n, size in d.outputs if n not in unwanted]
            kept = {n for n, _ in made}
            for name, _ in d.outputs:
                if name not in kept and self.replicas.state(name, wid) is None:
                    self._send(wid, Unlink(name=name))
            for name in optional:
                if name not in kept:  # not brought back: its consumers cannot have it
                    self._later(self._file_failed, name, t.spec.task_id)
        sums = dict(zip((n for n, _ in d.outputs), d.checksums)) if d.checksums else {}
        for name, size in made:
            f = self._file(name)
            f.size, f.produced = size, True
            f.failed_producer = None
            f.checksum = sums.get(name, "")
            if f.pruned and f.released and f.spec.kind == "temp":
                f.pruned = False  # remade by a recovery run
            self.replicas.set_ready(name, wid, size)
            self.durability.produced(name, wid, t)
        t.python_result = d.python_result
        if not t.run.recovery:
            made_names = {n for n, _ in made}
            for name, _ in t.spec.outputs:
                if name not in made_names:
                    continue  # an optional output not made, or not wanted on this outcome
                f = self.files[name]
                if f.spec.kind == "file" and f.spec.path:
                    t.retrievals |= {self._start_retrieval(
                        name, wid, f.spec.path, RK.TASK_OUTPUT,
                        t.spec.task_id)}
            if t.spec.python_payload is not None and not t.spec.temp_output \
                    and d.python_result is None:
                pyout = f"pyout-{t.spec.task_id}-{t.attempt}"
                if any(n == pyout for n, _ in d.outputs):
                    t.retrievals |= {self._start_retrieval(
                        pyout, wid, posixpath.join(self.staging_dir, pyout),
                        RK.PYTHON_RESULT, t.spec.task_id)}
        for name, _ in made:
            self._file_became_available(name)
            self._drain_saved(name)
        if made:
            self._trim_cache(wid)
        if t.retrievals:
            if t.state is not T.WAITING_RETRIEVAL:
                self._transition(t, T.WAITING_RETRIEVAL)
        else:
            self._end(t, RO.SUCCEEDED, TR.SUCCESS, d.exit_code, d.output)

    def _task_failed(self, t: TaskRecord, result: TaskResult, d: TaskDone) -> None:
        if result is TR.FORSAKEN:
            # not run, for the worker's sake: again elsewhere, without limit unless
            # set_max_forsaken(n) (TaskVine's rule)
            m = t.spec.max_forsaken
            if m < 0 or t.count(RO.FORSAKEN) < m:
                avoid = t.avoid | {t.done_worker}
                if all(w in avoid for w in self.workers):
                    avoid = frozenset()  # every worker forsook it: try them all again
                t.avoid = frozenset(avoid)
                self._requeue(t, RO.FORSAKEN,
                              f"forsaken on {t.done_worker}: {d.message[:120]}")
                return
            t.message = f"forsaken {m + 1} times: {d.message}"
            self._end(t, RO.FORSAKEN, TR.FORSAKEN, -1, d.output)
            return
        if result in RETRYABLE_ON_ANOTHER_WORKER \
                and t.count(RO.WORKER_FAULT) < WORKER_FAULT_ATTEMPTS:
            t.avoid |= {t.done_worker}  # it failed there for the worker's sake: go elsewhere
            self._run_lost(t, RO.WORKER_FAULT,
                           f"retry: {result} on {t.done_worker}: {d.message[:120]}",
                           result, d.exit_code, d.output)
            return
        if result is TR.LIBRARY_EXIT and t.spec.library:
            self._call_library_exit(t, d)
            return
        if result is TR.RESOURCE_EXHAUSTION and not t.run.recovery:
            self._run_lost(t, RO.WORKER_FAULT, f"resource exhaustion: {d.message[:120]}",
                           result, d.exit_code, d.output)
            return
        if t.run.recovery:
            if t.count(RO.FAILED, recovery=True) < RECOVERY_ATTEMPTS:
                # a recovery run has its own budget: the user's retries are not charged
                self._requeue(t, RO.FAILED, f"retry recovery: {result} exit {d.exit_code}")
                return
        t.message = d.message
        t.python_result = d.python_result  # a PythonTask's pickled exception
        if self._keep_failure_outputs(t, result, d):
            return  # it ends when they are back
        self._end(t, RO.FAILED, result, d.exit_code, d.output)

    def _keep_failure_outputs(self, t: TaskRecord, result: TaskResult, d: TaskDone) -> bool:
        """A task failed for good: keep the ``failure_only`` outputs its run made (files
        come back to the manager first). True if it now waits for their retrieval."""
        wanted = set(failure_outputs(t.spec)) if t.spec.mount_flags else set()
        made = [(n, size) for n, size in d.outputs if n in wanted]
        if not made or t.run.recovery or t.done_worker not in self.workers:
            return False
        wid = t.done_worker
        t.run.final_failure = result
        for name, size in made:
            f = self._file(name)
            f.size, f.produced, f.failed_producer = size, True, None
            self.replicas.set_ready(name, wid, size)
            if f.spec.kind == "file" and f.spec.path:
                t.retrievals |= {self._start_retrieval(name, wid, f.spec.path,
                                                       RK.TASK_OUTPUT, t.spec.task_id)}
        for name, _ in made:
            self._file_became_available(name)
        if not t.retrievals:
            return False
        self._transition(t, T.WAITING_RETRIEVAL, "failure_only outputs")
        return True

    # ================================================================ dispatch
    def _schedule(self) -> None:
        if not self._ready or not self.workers:
            return
        if len(self.workers) < self.tune.wait_for_workers:
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
            if t.spec.start_after and t.spec.start_after > self.now:
                skipped.append(item)  # not yet (set_time_start): a Tick tries again
                self._deferred = True
                continue
            if not self._place(t):
                skipped.append(item)
                if len(skipped) > PLACE_SKIP_MAX:
                    break
        for item in skipped:
            heapq.heappush(self._ready, item)

    def _declared(self, s: TaskSpec) -> tuple[int | None, int | None, int | None, int | None]:
        """What a task asks for: its own numbers; where it set none, its category's
        maximum, else the manager's (set_resources_max); raised to the minimums."""
        d = [s.cores, s.memory, s.disk, s.gpus]
        limits = self.limits
        for key in (s.category, ""):
            lim = limits.get(key)
            if lim is None:
                continue
            mx = lim.get("max")
            if mx is not None:
                for i in range(4):
                    if d[i] is None and mx[i] is not None:
                        d[i] = mx[i]
        for key in ("", s.category):
            lim = limits.get(key)
            mn = lim.get("min") if lim is not None else None
            if mn is not None:
                for i in range(4):
                    v = d[i]
                    if v is not None and mn[i] is not None and v < mn[i]:  # type: ignore[operator]
                        d[i] = mn[i]
        return d[0], d[1], d[2], d[3]

    def _on_resources_limited(self, ev: ResourcesLimited) -> None:
        vals = (ev.cores, ev.memory, ev.disk, ev.gpus)
        self.limits.setdefault(ev.category, {})[ev.which] = vals
        self._log("CATEGORY", ev.category or "*", ev.which.upper(), *vals)
        for tid in self._unplaceable:  # a limit may make them placeable
            u = self.tasks.get(tid)
            if u is not None:
                u.unplaceable_since = -1.0
        self._unplaceable.clear()

    def _expire(self) -> None:
        """Tasks whose end time (set_time_end) passed before they could start."""
        timed = self._timed
        while timed and timed[0][0] <= self.now:
            _, tid = heapq.heappop(timed)
            t = self.tasks.get(tid)
            if t is None or t.run.recovery or t.state not in (T.WAITING, T.READY, T.STAGING):
                continue
            t.message = "its end time (set_time_end) passed before it could start"
            self._end(t, RO.FAILED, TR.MAX_END_TIME, -1, "", "end time passed")

    def _place(self, t: TaskRecord) -> bool:
        s = t.spec
        declared = (s.cores, s.memory, s.disk, s.gpus) if not self.limits \
            else self._declared(s)
        input_bytes: dict[str, int] = {}
        n_in = len(s.inputs)
        for k, (name, _) in enumerate(s.inputs):
            # bytes already there decide; between equal bytes, the holder of the earlier
            # declared input wins (a stable order, so that consumers of a ring of equal
            # inputs spread one per holder instead of two landing on the same one)
            size = max(0, self.files[name].size) + n_in - k
            for holder in self.replicas.holders(name):
                input_bytes[holder] = input_bytes.get(holder, 0) + size
        avoid = t.avoid
        can_host = self._can_host  # (evicting unneeded cached files counts as room)
        feats = s.features
        mode = s.scheduler or self.tune.scheduler
        strict = strict_inputs(s) if s.mount_flags else ()
        holds = self.replicas.state
        if strict and not any(not w.draining and all(holds(n, w.worker_id) is not None
                                                     for n in strict)
                              for w in self.workers.values()):
            if t.run.recovery:
                return False
            # TaskVine: no worker has a strict input (VINE_FIXED_LOCATION): it ends now
            t.message = ("no connected worker holds its strict input(s) "
                         + ", ".join(strict)[:200])
            self._end(t, RO.FAILED, TR.FIXED_LOCATION_MISSING, -1, "",
                      "fixed location missing")
            return True
        cands = [Candidate(w.worker_id, w.total, w.free, len(w.running),
                           w.exec_seconds / w.tasks_done if w.tasks_done else 0.0)
                 for w in self.workers.values()
                 if not w.draining and (not avoid or w.worker_id not in avoid)
                 # (a worker without room is passed over before the disk check, which may
                 # weigh every file it holds for eviction)
                 and task_allocation(w.total, *declared).fits_in(w.free)
                 and (not s.inputs or can_host(w, t))
                 and (not feats or w.features.issuperset(feats))
                 and (not strict or all(holds(n, w.worker_id) is not None for n in strict))]
        choice = choose_worker(cands, declared, input_bytes, mode, self._rng)
        if choice is None:
            if t.unplaceable_since < 0 and not could_ever_fit(
                    (w.total for w in self.workers.values() if not w.draining
                     and (not feats or w.features.issuperset(feats))), declared):
                t.unplaceable_since = self.now
                self._unplaceable[s.task_id] = None
            return False
        wid, alloc = choice
        self._make_room_for(t, wid)
        self._assign(t, wid, alloc)
        return True

    def _assign(self, t: TaskRecord, wid: str, alloc: Resources,
                extra_inputs: list[str] | None = None) -> None:
        """Give the READY task's run ``alloc`` of worker ``wid``; stage the inputs it
        lacks there (and ``extra_inputs``: a library's files, for a call), or run it."""
        s = t.spec
        w = self.workers[wid]
        w.free.sub(alloc)
        w.running.add(s.task_id)
        t.run.worker, t.run.alloc = wid, alloc
        t.last_alloc = alloc
        if t.unplaceable_since >= 0:
            t.unplaceable_since = -1.0
            self._unplaceable.pop(s.task_id, None)
        t.staging.clear()
        names = [n for n, _ in s.inputs]
        if extra_inputs:
            names += extra_inputs
        for name in names:
            st = self.replicas.state(name, wid)
            if st is RS.READY:
                continue
            t.staging.add(name)
            self._stage_wait.setdefault((name, wid), {})[s.task_id] = None
        if not t.staging:
            self._run(t)  # every input is there already: READY -> RUNNING
            return
        self._transition(t, T.STAGING, ",".join(sorted(t.staging))[:200])
        for name in sorted(t.staging):
            if self.replicas.state(name, wid) is None:
                self._source_transfer(name, wid)

    def _run(self, t: TaskRecord) -> None:
        s = t.spec
        a = t.run.alloc or Resources()
        if t.run.instance:
            self._library_start(t)  # the instance's StartLibrary goes first
        py_out = s.python_output
        if s.python_payload is not None and not s.temp_output:
            py_out = f"pyout-{s.task_id}-{t.attempt}"
        self._send(t.worker or "", RunTask(
            task_id=s.task_id, attempt=t.attempt, command=s.command,
            inputs=list(s.inputs), outputs=list(s.outputs), env=list(s.env),
            cores=a.cores, memory=a.memory, disk=a.disk, gpus=a.gpus, time_max=s.time_max,
            python_payload=s.python_payload, python_output=py_out,
            python_mode=(s.python_mode or ("" if s.library else self.tune.python_exec))
            if s.python_payload else "",
            python_keep=s.temp_output, time_end=s.time_end, env_unset=s.env_unset,
            stdout_max=self.tune.stdout_max,
            symlink_inputs=symlink_inputs(s) if s.mount_flags else [],
            optional_outputs=list(optional_outputs(s)) if s.mount_flags else [],
            failure_outputs=failure_outputs(s) if s.mount_flags else [],
            watch_outputs=watched_outputs(s) if s.mount_flags else [],
            library_instance=t.run.instance, function=s.function,
        ))
        self.stats.tasks_dispatched += 1
        self._transition(t, T.RUNNING, t.worker or "")
        self._arm_deadline(t)
