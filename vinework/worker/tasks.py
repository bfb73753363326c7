"""The worker's core, tasks: starting them, classifying their ends, publishing outputs.

``TaskHandling`` takes ``RunTask`` (end time, inputs, resources), kills runs,
and turns a process exit into ``TaskDone`` through ``outcome.classify_exit``
and, when the outputs decide, ``CollectOutputs`` and
``outcome.classify_outputs``. Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..constants import TaskResult
from ..protocol import CacheInvalid, RunTask, TaskDone, TransferFailure
from .base import WORKFLOW, CoreBase, R
from .events import (
    DEBUG,
    CleanupTask,
    CollectOutputs,
    KillRequested,
    KillTask,
    OutputsCollected,
    RemoveFile,
    RunRequested,
    StartTask,
    TaskExited,
)
from .outcome import (
    TIME_KILL_EXIT,
    OverCommit,
    Resources,
    Verdict,
    classify_exit,
    classify_outputs,
    stdout_name,
)
from .outcome import inline_limit as _inline_limit
from .records import TaskRun, TaskState, Waiter

_NO_RESOURCES = Resources(0, 0, 0, 0)


class TaskHandling(CoreBase):
    """RunTask, Kill, process exits and output collection."""

    def _answer_ready(self, name: str, w: Waiter, seconds: float) -> None:
        raise NotImplementedError  # FetchHandling's

    def _done(self, task: RunTask, verdict: Verdict, start: float, end: float,
              output: str = "", outputs: list[tuple[str, int]] | None = None,
              run: TaskRun | None = None, stdout_file: str = "") -> None:
        self.tasks_run += 1
        self._record(task.task_id, f"done: {verdict.result} exit {verdict.exit_code} "
                     f"{verdict.message}".rstrip())
        self._log(DEBUG, f"task {task.task_id} finished: {verdict.result}, exit code "
                  f"{verdict.exit_code}" + (f" ({verdict.message})" if verdict.message else ""))
        size = run.stdout_size if run is not None else len(output.encode())
        self._send(TaskDone(task_id=task.task_id, attempt=task.attempt,
                            result=int(verdict.result), exit_code=verdict.exit_code,
                            output=output, start=start, end=end, outputs=outputs or [],
                            python_result=verdict.python_result,
                            python_error=verdict.python_error, message=verdict.message,
                            measured=list(run.measured) if run is not None else [],
                            stdout_file=stdout_file, stdout_size=size))

    def _on_run(self, ev: RunRequested) -> None:
        task = ev.task
        self.idle_since = ev.now
        if task.task_id in self.live:
            self._violation(f"RunTask for task {task.task_id}, which is already running")
            return
        if self.draining:
            self._done(task, Verdict(TaskResult.FORSAKEN, -1, "the worker is draining"),
                       ev.wall, ev.wall)
            return
        if task.time_end > 0 and ev.wall >= task.time_end:
            self._done(task, Verdict(TaskResult.MAX_END_TIME, TIME_KILL_EXIT,
                                     f"its end time {task.time_end:.3f} passed before it "
                                     "could start"), ev.wall, ev.wall)
            return
        for name, remote in task.inputs:
            entry = self.entries.get(name)
            if entry is None or entry.state is not R or entry.doomed:
                self._done(task, Verdict(TaskResult.INPUT_MISSING, -1,
                                         f"input {name} ({remote}) is not in the cache"),
                           ev.wall, ev.wall)
                return
        if task.library_instance:  # a FunctionCall: it runs in its library's resources
            refused = self._call_refused(task.library_instance)
            if refused:  # (not the call's doing: it runs again, uncharged)
                self._done(task, Verdict(TaskResult.FORSAKEN, -1, refused), ev.wall, ev.wall)
                return
        ask = Resources.of(task) if not task.library_instance else _NO_RESOURCES
        try:
            gpu_ids = self.ledger.commit(ask)
        except OverCommit as e:
            self._done(task, Verdict(TaskResult.FORSAKEN, -1,
                                     f"worker {self.worker_id} cannot run task "
                                     f"{task.task_id}: it {e}"), ev.wall, ev.wall)
            return
        inputs = tuple(dict.fromkeys(n for n, _ in task.inputs))
        for name in inputs:
            self.entries[name].pins += 1
        self._next_run += 1
        run = TaskRun(self._next_run, task, ask, inputs, ev.wall, gpu_ids)
        self.runs[run.run_id] = run
        self.live[task.task_id] = run.run_id
        self._record(task.task_id, f"started as run {run.run_id} ({ask})")
        self._log(DEBUG, f"task {task.task_id} started: "
                  + (task.command[:80] if task.python_payload is None else "PythonTask"))
        self._emit(StartTask(stimulus_id=self._sid, run_id=run.run_id, task=task,
                             inline_max=_inline_limit(task), gpu_ids=gpu_ids))

    def _kill_run(self, run: TaskRun, why: str) -> None:
        if run.state is TaskState.KILLED:
            return
        run.state = TaskState.KILLED
        self.ledger.release(run.ask, run.gpu_ids)
        if self.live.get(run.task.task_id) == run.run_id:
            del self.live[run.task.task_id]
        self._record(run.task.task_id, f"given up: {why}")
        self._emit(KillTask(stimulus_id=self._sid, run_id=run.run_id))

    def _give_up_tasks(self, why: str) -> None:
        for run in list(self.runs.values()):
            self._kill_run(run, why)
        self._stop_libraries(why)

    if TYPE_CHECKING:  # LibraryHandling's (libcore.py), combined in WorkerState
        def _stop_libraries(self, why: str) -> None: ...
        def _call_refused(self, instance_id: int) -> str: ...

    def _on_kill(self, ev: KillRequested) -> None:
        rid = self.live.get(ev.task_id)
        if rid is not None:
            self._kill_run(self.runs[rid], "Kill from the manager")

    def _cleanup(self, run: TaskRun) -> None:
        if run.state is not TaskState.KILLED:
            self.ledger.release(run.ask, run.gpu_ids)
            if self.live.get(run.task.task_id) == run.run_id:
                del self.live[run.task.task_id]
        del self.runs[run.run_id]
        self._emit(CleanupTask(stimulus_id=self._sid, run_id=run.run_id))
        for name in run.inputs:
            entry = self.entries[name]
            entry.pins -= 1
            if entry.pins == 0 and entry.doomed:
                self._remove(name, "its last pin was released")

    def _on_task_exited(self, ev: TaskExited) -> None:
        run = self.runs[ev.run_id]
        if run.state is TaskState.KILLED:
            self._cleanup(run)
            return
        if run.state is not TaskState.RUNNING:
            raise AssertionError(f"run {run.run_id} exited twice")
        run.output = ev.output
        run.measured = list(ev.measured)
        run.stdout_size = ev.stdout_size
        task = run.task
        if ev.library_exit:  # its library instance ended under it
            self._done(task, Verdict(TaskResult.LIBRARY_EXIT, -1, ev.library_exit),
                       run.start, ev.wall, ev.output, run=run)
            self._cleanup(run)
            return
        if task.library_instance and ev.python_kind == "inline" and not task.outputs \
                and not ev.timed_out and not ev.end_time_passed and not ev.worker_error:
            # a FunctionCall with nothing to collect (the fast path: no sandbox, no files)
            self._done(task, Verdict(TaskResult.SUCCESS, 0, python_result=ev.python_data),
                       run.start, ev.wall, ev.output, run=run)
            self._cleanup(run)
            return
        outcome = classify_exit(
            run.task, status=ev.status, timed_out=ev.timed_out,
            end_time_passed=ev.end_time_passed,
            disk_exhausted=ev.disk_exhausted, setup_error=ev.setup_error,
            worker_error=ev.worker_error,
            draining=self.draining, python_kind=ev.python_kind, python_data=ev.python_data,
            python_traceback=ev.python_traceback, hostname=self.config.hostname)
        stdout = stdout_name(run.task) if ev.stdout_big else ""
        if isinstance(outcome, Verdict):
            keep = [(n, r) for n, r in task.outputs if n in task.failure_outputs] \
                if task.failure_outputs else []
            if not stdout and not keep:
                self._done(run.task, outcome, run.start, ev.wall, ev.output, run=run)
                self._cleanup(run)
                return
            # final; only the big stdout and the failure_only outputs are still to be kept
            run.verdict = outcome
            run.state = TaskState.COLLECTING
            self._emit(CollectOutputs(stimulus_id=self._sid, run_id=run.run_id, outputs=keep,
                                      stdout=stdout))
            return
        run.state = TaskState.COLLECTING
        run.exit_code = outcome.exit_code
        file_result = run.task.python_payload is not None and ev.python_kind == "file"
        run.python_result = ev.python_data if ev.python_kind == "inline" else None
        if run.task.python_payload is not None and not run.task.outputs and not stdout \
                and not file_result:
            # a PythonTask with nothing to collect (its result inline, no outputs, no big
            # stdout): done now, without a CollectOutputs round through the runner
            verdict = classify_outputs(missing=[], disk_full="", result_error="",
                                       python_result=run.python_result,
                                       exit_code=run.exit_code)
            self._done(task, verdict, run.start, ev.wall, ev.output, run=run)
            self._cleanup(run)
            return
        self._emit(CollectOutputs(stimulus_id=self._sid, run_id=run.run_id,
                                  outputs=list(run.task.outputs),
                                  python_result=run.task.python_output if file_result else "",
                                  stdout=stdout))

    def _publish(self, name: str, size: int, why: str) -> None:
        """A task made ``name`` (an output, a result, its stdout): it is READY now."""
        self._transition(name, R, why, size)
        entry = self.entries[name]
        entry.doomed = entry.lost = False
        self._raise_level(entry, WORKFLOW)
        fl = self.fetching.get(name)
        if fl is not None:  # a transfer of the same name is superseded: answer it now
            for w in fl.waiters:
                self._answer_ready(name, w, 0.0)
            fl.waiters.clear()

    def _on_outputs_collected(self, ev: OutputsCollected) -> None:
        run = self.runs[ev.run_id]
        task = run.task
        if run.state is TaskState.KILLED:
            for name, _ in ev.stored:
                self._discard_output(name)
            if ev.stdout_stored >= 0:
                self._discard_output(stdout_name(task))
            self._cleanup(run)
            return
        if run.state is not TaskState.COLLECTING:
            raise AssertionError(f"outputs of run {run.run_id} collected while {run.state}")
        stdout_file = ""
        output = run.output
        if ev.stdout_stored >= 0:
            stdout_file = stdout_name(task)
            run.stdout_size = ev.stdout_stored
            self._publish(stdout_file, ev.stdout_stored, f"stdout of task {task.task_id}")
        elif ev.stdout_error:
            output += (f"\n[vinework: only the first {len(output.encode())} of "
                       f"{run.stdout_size} bytes of output kept: {ev.stdout_error}]\n")
            run.stdout_size = len(output.encode())
        verdict = run.verdict or classify_outputs(
            missing=ev.missing, disk_full=ev.disk_full, result_error=ev.result_error,
            python_result=run.python_result, exit_code=run.exit_code)
        if run.verdict is None and verdict.result is TaskResult.SUCCESS:
            for name, size in ev.stored:
                self._publish(name, size, f"produced by task {task.task_id}")
            outputs = list(ev.stored)
        else:  # failed: only its failure_only outputs are kept (TaskVine's rule)
            keep = set(task.failure_outputs)
            outputs = []
            for name, size in ev.stored:
                if name in keep:
                    self._publish(name, size, f"failure_only output of task {task.task_id}")
                    outputs.append((name, size))
                else:
                    self._discard_output(name)
        self._done(task, verdict, run.start, ev.wall, output, outputs, run=run,
                   stdout_file=stdout_file)
        self._cleanup(run)

    def _discard_output(self, name: str) -> None:
        """Delete an output stored by a task that failed (or was given up)."""
        entry = self.entries.get(name)
        if entry is None or entry.state is not R:
            self._emit(RemoveFile(stimulus_id=self._sid, name=name))
            return
        # the stored file replaced an older copy the manager knows of: that copy is gone
        self._send(CacheInvalid(name=name, transfer_id=0, cause=TransferFailure.LOCAL_IO,
                                reason="replaced by the output of a failed task"))
        self._remove(name, "replaced by the output of a failed task")
