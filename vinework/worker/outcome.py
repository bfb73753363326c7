"""Pure decisions about one task: its resources, its outcome, where its result goes.

``Ledger`` counts the cores, memory, disk and gpus committed by the tasks a
worker runs and refuses a task that would over-commit it. ``classify_exit``
turns the facts of a finished process (wait status, time limit, disk) into
either a final ``Verdict`` or "collect the outputs"; ``classify_outputs``
gives the verdict once the outputs were collected. ``inline_limit`` decides
whether a PythonTask's result comes back inline or stays in the cache.
Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..constants import TaskResult
from ..protocol import RunTask

INLINE_RESULT_MAX = 4 * 1024 * 1024  # bytes of a PythonTask result sent back inline


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
    """Resources committed by running tasks, never more than the worker's total."""

    def __init__(self, total: Resources) -> None:
        self.total = total
        self.committed = Resources()

    @property
    def free(self) -> Resources:
        return self.total - self.committed

    def commit(self, ask: Resources) -> None:
        """Take ``ask``; raise ``OverCommit`` (changing nothing) if it does not fit."""
        if min(ask.cores, ask.memory, ask.disk, ask.gpus) < 0:
            raise OverCommit(f"negative request ({ask})")
        if not ask.fits_in(self.free):
            raise OverCommit(f"asks {ask}; free {self.free} of {self.total}")
        self.committed = self.committed + ask

    def release(self, ask: Resources) -> None:
        after = self.committed - ask
        if min(after.cores, after.memory, after.disk, after.gpus) < 0:
            raise AssertionError(f"releasing {ask} more than committed {self.committed}")
        self.committed = after


@dataclass(frozen=True, slots=True)
class Verdict:
    """The final outcome of a task attempt, as reported in ``TaskDone``."""

    result: TaskResult
    exit_code: int
    message: str = ""
    python_result: bytes | None = None
    python_error: str = ""


COLLECT = None  # classify_exit's answer when the outputs must be collected first


def classify_exit(task: RunTask, *, status: int, timed_out: bool, disk_exhausted: bool,
                  setup_error: str, draining: bool, worker_error: str = "",
                  python_kind: str = "",
                  python_data: bytes | None = None, python_traceback: str = "",
                  hostname: str = "") -> Verdict | None:
    """The outcome of a finished process, or ``COLLECT`` (None) when it succeeded so far.

    Order of the checks: an error of the worker itself (FORSAKEN: not the task's
    fault); a sandbox that could not be set up (input missing);
    the time limit; for PythonTasks the function's own exception; death by a
    signal (during a drain this is the batch system stopping us: FORSAKEN, so
    the manager runs it elsewhere without charging the task); a non-zero exit
    with the disk full; any other non-zero exit (result SUCCESS with that exit
    code, TaskVine's convention); exit 0 means collect the outputs.
    """
    if worker_error:
        return Verdict(TaskResult.FORSAKEN, -1, f"worker error: {worker_error}")
    if setup_error:
        return Verdict(TaskResult.INPUT_MISSING, -1, setup_error)
    if timed_out:
        return Verdict(TaskResult.MAX_WALL_TIME, -1, f"killed after {task.time_max} s")
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
        return COLLECT
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if draining:
            return Verdict(TaskResult.FORSAKEN, -sig,
                           f"killed by signal {sig} while the worker was draining")
        return Verdict(TaskResult.SIGNAL, -sig, f"killed by signal {sig}")
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and disk_exhausted:
        where = f" of worker {hostname}" if hostname else ""
        return Verdict(TaskResult.DISK_EXHAUSTION, code, f"the task filled the disk{where}")
    if code != 0:
        return Verdict(TaskResult.SUCCESS, code)
    return COLLECT


def classify_outputs(*, missing: list[str], disk_full: str, result_error: str,
                     python_result: bytes | None) -> Verdict:
    """The outcome of a task whose process succeeded, once its outputs were collected."""
    if result_error:
        return Verdict(TaskResult.OUTPUT_MISSING, 1, f"result could not be stored: {result_error}")
    if disk_full:
        return Verdict(TaskResult.DISK_EXHAUSTION, 0, f"disk full storing {disk_full}")
    if missing:
        return Verdict(TaskResult.OUTPUT_MISSING, 0, "output missing: " + ", ".join(missing))
    return Verdict(TaskResult.SUCCESS, 0, python_result=python_result)
