"""Pure decisions about one task: its resources, its outcome, where its result goes.

``Ledger`` counts the cores, memory, disk and gpus committed by the tasks a
worker runs (and which gpu indices each holds) and refuses a task that would
over-commit it. ``classify_exit`` turns the facts of a finished process (wait
status, time limits, disk) into either a final ``Verdict`` or ``Collect`` ("the
outputs decide"); ``classify_outputs`` gives the verdict once the outputs were
collected. ``inline_limit`` decides
whether a PythonTask's result comes back inline or stays in the cache.
Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..constants import TaskResult
from ..protocol import RunTask

INLINE_RESULT_MAX = 4 * 1024 * 1024  # bytes of a PythonTask result sent back inline
OUTPUT_INLINE_MAX = 64 * 1024  # bytes of stdout+stderr inside TaskDone; more: a cache file


def stdout_name(task: RunTask) -> str:
    """The cache name of a task's stdout when it is too large to travel inline."""
    return f"stdout-{task.task_id}-{task.attempt}"


def inline_limit(task: RunTask) -> int:
    """Largest result (bytes) returned inline; -1: always a file kept in the cache.

    A PythonTask with temp output (``python_keep``) keeps its result on the
    worker for the tasks that consume it; any other result comes back inline
    up to ``INLINE_RESULT_MAX`` and as a file (retrieved by the manager) above.
    """
    return -1 if task.python_keep else INLINE_RESULT_MAX


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of each resource (memory and disk in MB)."""

    cores: int = 0
    memory: int = 0
    disk: int = 0
    gpus: int = 0

    @staticmethod
    def of(task: RunTask) -> Resources:
        return Resources(task.cores, task.memory, task.disk, task.gpus)

    def __add__(self, o: Resources) -> Resources:
        return Resources(self.cores + o.cores, self.memory + o.memory, self.disk + o.disk,
                         self.gpus + o.gpus)

    def __sub__(self, o: Resources) -> Resources:
        return Resources(self.cores - o.cores, self.memory - o.memory, self.disk - o.disk,
                         self.gpus - o.gpus)

    def fits_in(self, o: Resources) -> bool:
        return (self.cores <= o.cores and self.memory <= o.memory and self.disk <= o.disk
                and self.gpus <= o.gpus)

    def __str__(self) -> str:
        return (f"{self.cores} cores, {self.memory} MB memory, {self.disk} MB disk, "
                f"{self.gpus} gpus")


class OverCommit(Exception):
    """A task asks for more than the worker has free."""


class Ledger:
    """Resources committed by running tasks, never more than the worker's total.

    GPUs are also counted by index: a task that commits ``n`` gpus holds the
    ``n`` lowest free indices (its ``CUDA_VISIBLE_DEVICES``) until released.
    """

    def __init__(self, total: Resources) -> None:
        self.total = total
        self.committed = Resources()
        self.free_gpus: list[int] = list(range(max(0, total.gpus)))

    @property
    def free(self) -> Resources:
        return self.total - self.committed

    def commit(self, ask: Resources) -> tuple[int, ...]:
        """Take ``ask``; return the gpu indices given. Raise ``OverCommit`` (changing
        nothing) if it does not fit."""
        if min(ask.cores, ask.memory, ask.disk, ask.gpus) < 0:
            raise OverCommit(f"negative request ({ask})")
        if not ask.fits_in(self.free):
            raise OverCommit(f"asks {ask}; free {self.free} of {self.total}")
        self.committed = self.committed + ask
        gpus = tuple(self.free_gpus[: ask.gpus])
        del self.free_gpus[: ask.gpus]
        return gpus

    def release(self, ask: Resources, gpus: tuple[int, ...] = ()) -> None:
        after = self.committed - ask
        if min(after.cores, after.memory, after.disk, after.gpus) < 0:
            raise AssertionError(f"releasing {ask} more than committed {self.committed}")
        self.committed = after
        self.free_gpus = sorted(self.free_gpus + list(gpus))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The final outcome of a task attempt, as reported in ``TaskDone``."""

    result: TaskResult
    exit_code: int
    message: str = ""
    python_result: bytes | None = None
    python_error: str = ""


@dataclass(frozen=True, slots=True)
class Collect:
    """``classify_exit``'s answer when the outputs decide: collect them, then
    ``classify_outputs(exit_code=...)`` gives the verdict."""

    exit_code: int


TIME_KILL_EXIT = 9  # exit code of a task the worker killed for a time limit (TaskVine's)


def classify_exit(task: RunTask, *, status: int, timed_out: bool, disk_exhausted: bool,
                  setup_error: str, draining: bool, worker_error: str = "",
                  end_time_passed: bool = False, python_kind: str = "",
                  python_data: bytes | None = None, python_traceback: str = "",
                  hostname: str = "") -> Verdict | Collect:
    """The outcome of a finished process, or ``Collect`` when its outputs decide.

    TaskVine's outcome matrix, checked in this order:

    - an error of the worker itself, a sandbox it could not set up for its own
      reasons included: FORSAKEN, -1 (not the task's fault: it runs elsewhere);
    - an input that is not there: INPUT_MISSING, -1;
    - killed by the worker for ``time_max``: MAX_WALL_TIME, 9; for ``time_end``:
      MAX_END_TIME, 9;
    - PythonTasks: the function raised: SUCCESS, 1 with the exception; the
      interpreter died: SIGNAL (-N) or UNKNOWN (during a drain: FORSAKEN);
      returned: collect (exit 0);
    - command tasks killed by a signal the worker did not send: during a drain
      FORSAKEN (the batch system is stopping us; the task is not charged), else
      collect with exit code = the signal number;
    - a non-zero exit with the disk full: DISK_EXHAUSTION with that code;
    - any other exit (0 or not, 127/126 for a command /bin/sh could not find or
      run): collect with that code. ``classify_outputs`` then says SUCCESS with
      the code when every declared output exists, else OUTPUT_MISSING.
    """
    if worker_error:
        return Verdict(TaskResult.FORSAKEN, -1, f"worker error: {worker_error}")
    if setup_error:
        return Verdict(TaskResult.INPUT_MISSING, -1, setup_error)
    if timed_out:
        return Verdict(TaskResult.MAX_WALL_TIME, TIME_KILL_EXIT,
                       f"killed after {task.time_max:g} s (time_max)")
    if end_time_passed:
        return Verdict(TaskResult.MAX_END_TIME, TIME_KILL_EXIT,
                       f"killed at its end time {task.time_end:.3f}")
    if task.python_payload is not None:
        if python_kind == "error":
            return Verdict(TaskResult.SUCCESS, 1, "the function raised an exception",
                           python_result=python_data or None, python_error=python_traceback)
        if python_kind == "crash" or not os.WIFEXITED(status):
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            if draining:
                return Verdict(TaskResult.FORSAKEN, -sig or 1,
                               f"the Python process died (status {status}) while the worker "
                               "was draining")
            return Verdict(TaskResult.SIGNAL if sig else TaskResult.UNKNOWN, -sig or 1,
                           f"the Python process died (status {status})")
        return Collect(0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if draining:
            return Verdict(TaskResult.FORSAKEN, -sig,
                           f"killed by signal {sig} while the worker was draining")
        return Collect(sig)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and disk_exhausted:
        where = f" of worker {hostname}" if hostname else ""
        return Verdict(TaskResult.DISK_EXHAUSTION, code, f"the task filled the disk{where}")
    return Collect(code)


def classify_outputs(*, missing: list[str], disk_full: str, result_error: str,
                     python_result: bytes | None, exit_code: int = 0) -> Verdict:
    """The outcome of a task whose outputs were collected (``exit_code`` from ``Collect``).

    Every declared output there: SUCCESS with the exit code, whatever it is
    (TaskVine's rule: a non-zero exit is the application's business). Any
    output missing: OUTPUT_MISSING with the exit code.
    """
    if result_error:
        return Verdict(TaskResult.OUTPUT_MISSING, 1, f"result could not be stored: {result_error}")
    if disk_full:
        return Verdict(TaskResult.DISK_EXHAUSTION, exit_code, f"disk full storing {disk_full}")
    if missing:
        return Verdict(TaskResult.OUTPUT_MISSING, exit_code,
                       "output missing: " + ", ".join(missing))
    return Verdict(TaskResult.SUCCESS, exit_code, python_result=python_result)
