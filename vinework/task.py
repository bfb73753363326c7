"""User-side Task and PythonTask: what to run, with which files and resources.

These objects hold what the user asked for and, once the manager returns the
task from ``wait()``, what happened (result, exit code, output, timing). The
manager copies what it needs into its pure state at ``submit``; the user's
object is only written again when the task completes.
"""

from __future__ import annotations

from typing import Any

from .constants import TaskResult
from .file import File, FileKind, check_remote_name
from .pickling import dumps_call

PYTHON_OUTPUT_NAME = ".vinework-result.p"



class TaskOutputUnavailable(RuntimeError):
    """A PythonTask's return value was kept on a worker (temp output)."""


class RemoteTaskError(Exception):
    """A PythonTask raised on the worker and its exception could not be unpickled."""


class Task:
    """A command to run on a worker, TaskVine's ``Task``."""

    def __init__(self, command: str) -> None:
        if not isinstance(command, str):
            raise TypeError("Task command must be a string")
        self.command = command
        self.inputs: list[tuple[File, str]] = []
        self.outputs: list[tuple[File, str]] = []
        self.env: dict[str, str] = {}
        self.cores: int | None = None
        self.memory: int | None = None
        self.disk: int | None = None
        self.gpus: int | None = None
        self.tag: str | None = None
        self.category: str = "default"
        self.priority: float = 0.0
        self.max_retries: int = 0
        self.time_max: float = 0.0
        self.id: int = 0
        self._reset_results()

    def _reset_results(self) -> None:
        self._story: tuple[tuple[float, str, str, str], ...] = ()
        self.result: TaskResult = TaskResult.UNKNOWN
        self.exit_code: int = -1
        self._output: Any = None
        self.std_output: str = ""
        self.hostname: str = ""
        self.worker: str = ""
        self.addrport: str = ""
        self.start_time: float = 0.0
        self.end_time: float = 0.0
        self.wall_time: float = 0.0
        self.retries: int = 0
        self.error_message: str = ""
        self._done = False

    # ----- inputs and outputs
    def add_input(self, file: File, remote_name: str) -> None:
        """Place ``file`` in the task's sandbox as ``remote_name``."""
        if not isinstance(file, File):
            raise TypeError(f"add_input expects a File, got {type(file).__name__}")
        self.inputs.append((file, check_remote_name(remote_name)))

    def add_output(self, file: File, remote_name: str) -> None:
        """Collect ``remote_name`` from the sandbox into ``file`` when the task ends."""
        if not isinstance(file, File):
            raise TypeError(f"add_output expects a File, got {type(file).__name__}")
        if file.kind is FileKind.BUFFER:
            raise ValueError("a buffer cannot be a task output; use declare_temp or declare_file")
        self.outputs.append((file, check_remote_name(remote_name)))

    # ----- resources and options (TaskVine names)
    def set_cores(self, cores: int) -> None:
        """Cores the task needs."""
        self.cores = _nonneg_int("cores", cores)

    def set_memory(self, memory: int) -> None:
        """Memory the task needs, in MB."""
        self.memory = _nonneg_int("memory", memory)

    def set_disk(self, disk: int) -> None:
        """Sandbox disk the task needs, in MB."""
        self.disk = _nonneg_int("disk", disk)

    def set_gpus(self, gpus: int) -> None:
        """GPUs the task needs."""
        self.gpus = _nonneg_int("gpus", gpus)

    def set_env_var(self, name: str, value: str) -> None:
        """Set an environment variable for the task."""
        self.env[str(name)] = str(value)

    def set_tag(self, tag: str) -> None:
        """A free-form label (see ``Manager.cancel_by_task_tag``)."""
        self.tag = str(tag)

    def set_category(self, category: str) -> None:
        """A category name, for grouping in statistics."""
        self.category = str(category)

    def set_priority(self, priority: float) -> None:
        """Higher runs first; ties run in submission order."""
        self.priority = float(priority)

    def set_max_retries(self, retries: int) -> None:
        """Retry a failed attempt (non-zero exit, time limit) up to this many times."""
        self.max_retries = _nonneg_int("max_retries", retries)

    def set_time_max(self, seconds: float) -> None:
        """Kill the task after this many seconds of running (0 = no limit)."""
        if seconds < 0:
            raise ValueError("time_max must be >= 0")
        self.time_max = float(seconds)

    # ----- results
    @property
    def output(self) -> Any:
        """stdout and stderr of the command (a PythonTask overrides this)."""
        return self.std_output

    def successful(self) -> bool:
        """True if the task ran to completion with exit code 0."""
        return self._done and self.result == TaskResult.SUCCESS and self.exit_code == 0

    def completed(self) -> bool:
        """True if the task ran to completion (any exit code)."""
        return self._done and self.result == TaskResult.SUCCESS

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.command!r}>"


class PythonTask(Task):
    """Run ``fn(*args, **kwargs)`` on a worker, TaskVine's ``PythonTask``."""

    def __init__(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError("PythonTask needs a callable")
        name = getattr(fn, "__name__", "function")
        super().__init__(f"python:{name}")
        self.function = fn
        self.payload = dumps_call(fn, args, kwargs)
        self.temp_output = False
        self.exec_mode = ""
        self._output_file: File | None = None
        self.remote_traceback = ""

    def set_exec_mode(self, mode: str) -> None:
        """How the worker runs the call: "direct" (a warm executor process, reused; the
        default) or "fork" (a fresh forked child, so no process state leaks between tasks)."""
        if mode not in ("direct", "fork"):
            raise ValueError("exec mode must be 'direct' or 'fork'")
        self.exec_mode = mode

    def enable_temp_output(self) -> None:
        """Keep the return value on the worker; pass ``output_file`` to later tasks."""
        self.temp_output = True

    @property
    def output_file(self) -> File:
        """The File holding the cloudpickled return value (a temp when temp output is on)."""
        if self._output_file is None:
            self._output_file = File(FileKind.TEMP)
        return self._output_file

    @property
    def output(self) -> Any:
        """The function's return value, or its exception if it raised."""
        if self.temp_output:
            raise TaskOutputUnavailable(
                f"task {self.id} keeps its result on the worker (enable_temp_output); "
                "pass t.output_file as an input to a later task, or m.fetch_file(t.output_file)"
            )
        return self._output


def _nonneg_int(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{what} must be a non-negative number, got {value!r}")
    return int(value)
