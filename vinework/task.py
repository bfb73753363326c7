"""User-side Task and PythonTask: what to run, with which files and resources.

These objects hold what the user asked for and, once the manager returns the
task from ``wait()``, what happened (result, exit code, output, timing,
resources measured). The manager copies what it needs into its pure state at
``submit``; the user's object is only written again when the task completes.
Every setter of TaskVine's ``Task`` and ``PythonTask`` is here with TaskVine's
meaning; the few that need a feature vinework does not have yet raise
``NotImplementedError`` naming it.
"""

from __future__ import annotations

from typing import Any

from ._later import not_yet
from .constants import (
    VINE_FAILURE_ONLY,
    VINE_FIXED_LOCATION,
    VINE_MOUNT_SYMLINK,
    VINE_SUCCESS_ONLY,
    VINE_WATCH,
    ResultString,
    TaskResult,
    result_string,
    scheduler_name,
)
from .file import File, FileKind, check_remote_name
from .pickling import dumps_call, raw_result

PYTHON_OUTPUT_NAME = ".vinework-result.p"

# TaskVine's task states, as ``Task.state`` spells them (by VINE_TASK_* number)
STATE_NAMES = ("INITIAL", "READY", "RUNNING", "WAITING_RETRIEVAL", "RETRIEVED", "DONE")

# the keys ``Task(command, **task_info)`` accepts that call ``set_<key>(value)``
_SETTER_KEYS = ("library_required", "library_provided", "scheduler", "tag", "category",
                "snapshot_file", "retries", "cores", "memory", "disk", "gpus", "priority",
                "time_end", "time_start", "time_max", "time_min", "monitor_output")


class TaskOutputUnavailable(RuntimeError, ValueError):
    """A PythonTask's return value was kept on a worker (temp output)."""


class RemoteTaskError(Exception):
    """A PythonTask raised on the worker and its exception could not be unpickled."""


class PythonTaskNoResult(Exception):
    """What ``t.output`` of a PythonTask is when the task produced no result at all (it
    was cancelled, never ran, lost its worker for good, or its result could not be
    brought back), as in TaskVine. A function that raised gives its exception instead."""


class ResourceSummary:
    """Resources of one task (TaskVine's rmsummary): ``cores``, ``memory`` (MB), ``disk``
    (MB), ``gpus``; for measured resources also ``wall_time`` and ``cpu_time`` (seconds),
    ``start`` and ``end`` (microseconds since the epoch). -1 means unknown."""

    def __init__(self, cores: float = -1, memory: float = -1, disk: float = -1,
                 gpus: float = -1, wall_time: float = -1, cpu_time: float = -1,
                 start: float = -1, end: float = -1) -> None:
        self.cores = cores
        self.memory = memory
        self.disk = disk
        self.gpus = gpus
        self.wall_time = wall_time
        self.cpu_time = cpu_time
        self.start = start
        self.end = end

    def to_dict(self) -> dict[str, float]:
        return dict(vars(self))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in vars(self).items() if v != -1)
        return f"ResourceSummary({inner})"


_NOTHING_ALLOCATED = ResourceSummary()  # (shared, read-only: before a run was placed)


class Task:
    """A command to run on a worker, TaskVine's ``Task``.

    ``Task(command, **task_info)`` also takes TaskVine's keyword form: ``cores=``,
    ``memory=``, ``tag=``, ``retries=``, ... (each calls ``set_<key>``), ``features=``
    (a name or a list), ``inputs=``/``outputs=`` (``{file: "remote name"}`` or
    ``{file: {"remote_name": ..., <add_input/add_output options>}}``) and ``env=``.
    """

    def __init__(self, command: str, **task_info: Any) -> None:
        if not isinstance(command, str):
            raise TypeError("Task command must be a string")
        self.command = command
        self.inputs: list[tuple[File, str]] = []
        self.outputs: list[tuple[File, str]] = []
        self.env: dict[str, str | None] = {}
        # remote name -> TaskVine mount flags (VINE_FIXED_LOCATION, VINE_MOUNT_SYMLINK,
        # VINE_FAILURE_ONLY, VINE_SUCCESS_ONLY) of the inputs and outputs that set any
        self.mount_flags: dict[str, int] = {}
        self.environments: list[str] = []  # remote names of add_environment packages
        self.cores: int | None = None
        self.memory: int | None = None
        self.disk: int | None = None
        self.gpus: int | None = None
        self.tag: str | None = None
        self.category: str = "default"
        self.priority: float = 0.0
        self.retries_max: int = 0  # set_retries: < 1 = unlimited (TaskVine's default)
        self.max_forsaken: int = -1
        self.time_max: float = 0.0
        self.time_min: float = 0.0
        self.time_start: float = 0.0  # epoch seconds
        self.time_end: float = 0.0  # epoch seconds
        self.features: list[str] = []
        self.scheduler: str = ""
        self.monitor_output: str = ""
        self.id: int = 0
        self._manager: Any = None
        self._refs = 1
        self._reset_results()
        for key, value in task_info.items():
            self._apply_info(key, value)

    def _apply_info(self, key: str, value: Any) -> None:
        if key in _SETTER_KEYS:
            getattr(self, "set_" + key)(value)
        elif key == "features":
            for name in [value] if isinstance(value, str) else list(value):
                self.add_feature(name)
        elif key in ("inputs", "outputs"):
            add = self.add_input if key == "inputs" else self.add_output
            for f, spec in dict(value).items():
                if isinstance(spec, str):
                    add(f, spec)
                else:
                    opts = dict(spec)
                    add(f, opts.pop("remote_name"), **opts)
        elif key == "env":
            for name, v in dict(value).items():
                self.set_env_var(name, v)
        else:
            raise TypeError(f"Task() got an unknown option {key!r}")

    def _reset_results(self) -> None:
        self._story: tuple[tuple[float, str, str, str], ...] = ()
        self.result: ResultString = result_string(TaskResult.UNKNOWN)
        self.exit_code: int = -1
        self._output = None
        self.std_output: str = ""
        self.hostname: str = ""
        self.worker: str = ""
        self.addrport: str = ""
        self.start_time: float = 0.0
        self.end_time: float = 0.0
        self.wall_time: float = 0.0
        self.retries: int = 0
        self.error_message: str = ""
        self.cached = False
        # what the manager reported (measured, allocated, start, end): summaries on demand
        self._raw: tuple[tuple[float, ...], tuple[int, ...], float, float] | None = None
        self._measured: ResourceSummary | None = None
        self._allocated: ResourceSummary | None = None
        self._limits: ResourceSummary | None = None
        self._limits_known = False
        self._times: tuple[float, float, float, float] | None = None  # submit, start, end, done
        self._submit_time = 0.0
        self._state = 0
        self._done = False

    # ----- the result, read lazily
    @property
    def _output(self) -> Any:
        """The task's result, made on first use (in the reader's thread): a PythonTask's
        result is unpickled only when the user reads it, never on the manager's loop."""
        pending = self.__dict__.pop("_output_pending", None)
        if pending is not None:
            self.__dict__["_output_value"] = pending()
        return self.__dict__.get("_output_value")

    @_output.setter
    def _output(self, value: Any) -> None:
        self.__dict__.pop("_output_pending", None)
        self.__dict__["_output_value"] = value

    def _output_later(self, make: Any) -> None:
        """Make the result with ``make()`` when it is first read."""
        self.__dict__.pop("_output_value", None)
        self.__dict__["_output_pending"] = make

    # ----- inputs and outputs
    def add_input(self, file: File, remote_name: str, strict_input: bool = False,
                  mount_symlink: bool = False) -> None:
        """Place ``file`` in the task's sandbox as ``remote_name``.

        Args:
            file: a File from ``m.declare_*``.
            remote_name: its path inside the sandbox (relative, no ``..``).
            strict_input: run the task only on a worker that already holds (or is being
                sent) a copy of ``file``; if no connected worker has one when the task
                could run, it comes back with result "fixed location missing"
                (TaskVine's ``VINE_FIXED_LOCATION``).
            mount_symlink: place the input as a symbolic link to the worker's cache copy
                instead of a hard link (TaskVine's ``VINE_MOUNT_SYMLINK``).
        """
        if not isinstance(file, File):
            raise TypeError(f"add_input expects a File, got {type(file).__name__}")
        remote = check_remote_name(remote_name)
        self.inputs.append((file, remote))
        flags = (VINE_FIXED_LOCATION if strict_input else 0) \
            | (VINE_MOUNT_SYMLINK if mount_symlink else 0)
        if flags:
            self.mount_flags[remote] = self.mount_flags.get(remote, 0) | flags

    def add_output(self, file: File, remote_name: str, watch: bool = False,
                   failure_only: bool | None = None, success_only: bool | None = None) -> None:
        """Collect ``remote_name`` from the sandbox into ``file`` when the task ends.

        Args:
            file: a local file, a buffer (``f.contents()`` then holds what the task
                wrote) or a temp.
            remote_name: its path inside the sandbox.
            watch: a local file only: what the task appends to it reaches the manager's
                file while the task runs (every half second; the whole file when the
                task ends).
            failure_only: bring it back only if the task failed (result not "success",
                or a non-zero exit code); never counted as missing.
            success_only: bring it back only if the task succeeded (result "success" and
                exit code 0); never counted as missing.
        """
        if not isinstance(file, File):
            raise TypeError(f"add_output expects a File, got {type(file).__name__}")
        if watch and file.kind is not FileKind.LOCAL:
            raise ValueError("only a local file (declare_file) can be a watched output")
        if failure_only and success_only:
            raise ValueError("an output cannot be both failure_only and success_only")
        if file.kind is FileKind.URL:
            raise ValueError(f"a URL ({file.source()}) cannot be a task output; declare a "
                             "file, a buffer or a temp to hold what the task writes")
        remote = check_remote_name(remote_name)
        self.outputs.append((file, remote))
        flags = (VINE_FAILURE_ONLY if failure_only else 0) \
            | (VINE_SUCCESS_ONLY if success_only else 0) | (VINE_WATCH if watch else 0)
        if flags:
            self.mount_flags[remote] = self.mount_flags.get(remote, 0) | flags

    # ----- resources and options (TaskVine names)
    def set_cores(self, cores: int) -> None:
        """Cores the task needs (-1: unset)."""
        self.cores = _amount("cores", cores)

    def set_memory(self, memory: int) -> None:
        """Memory the task needs, in MB (-1: unset)."""
        self.memory = _amount("memory", memory)

    def set_disk(self, disk: int) -> None:
        """Sandbox disk the task needs, in MB (-1: unset)."""
        self.disk = _amount("disk", disk)

    def set_gpus(self, gpus: int) -> None:
        """GPUs the task needs (-1: unset)."""
        self.gpus = _amount("gpus", gpus)

    def set_env_var(self, name: str, value: str | None = None) -> None:
        """Set an environment variable for the task; ``None`` removes it from the task's
        environment (TaskVine's meaning)."""
        self.env[str(name)] = None if value is None else str(value)

    def set_tag(self, tag: str) -> None:
        """A free-form label (see ``Manager.cancel_by_task_tag``, ``wait_for_tag``)."""
        self.tag = str(tag)

    def set_category(self, category: str) -> None:
        """A category name: statistics, and resources set per category."""
        self.category = str(category)

    def set_priority(self, priority: float) -> None:
        """Higher runs first; ties run in submission order."""
        self.priority = float(priority)

    def set_retries(self, retries: int) -> None:
        """Run again after losing the worker, exhausting resources or a transient fault,
        at most ``retries`` times (< 1: no limit, the default). A non-zero exit code is
        the task's own answer and is never retried (TaskVine's rule)."""
        self.retries_max = int(retries)

    def set_max_retries(self, retries: int) -> None:
        """vinework's earlier name of ``set_retries`` (same meaning)."""
        self.set_retries(retries)

    def set_max_forsaken(self, forsaken: int) -> None:
        """Return the task as "forsaken" after it could not be run, for its workers' sake,
        this many times (-1: retry without limit, the default)."""
        self.max_forsaken = int(forsaken)

    def set_time_max(self, seconds: float) -> None:
        """Kill the task after this many seconds of running (0 = no limit); it comes back
        as "max wall time" with exit code 9."""
        if seconds < 0:
            raise ValueError("time_max must be >= 0")
        self.time_max = float(seconds)

    def set_time_min(self, seconds: float) -> None:
        """The least time the task needs to run (TaskVine uses it for workers with a wall
        time; vinework records it)."""
        self.time_min = max(0.0, float(seconds))

    def set_time_start(self, useconds: float) -> None:
        """Do not start the task before this time (microseconds since the epoch)."""
        self.time_start = max(0.0, float(useconds)) / 1e6

    def set_time_end(self, useconds: float) -> None:
        """Do not start after, and kill at, this time (microseconds since the epoch); the
        task comes back as "max end time"."""
        self.time_end = max(0.0, float(useconds)) / 1e6

    def set_command(self, command: str) -> None:
        """Replace the command line."""
        if not isinstance(command, str):
            raise TypeError("Task command must be a string")
        self.command = command

    def add_feature(self, name: str) -> None:
        """Run only on workers started with ``--feature name``."""
        if str(name) not in self.features:
            self.features.append(str(name))

    def set_scheduler(self, scheduler: str | int) -> None:
        """The worker-selection policy for this task (see ``Manager.set_scheduler``)."""
        self.scheduler = scheduler_name(scheduler)

    def set_monitor_output(self, directory: str) -> None:
        """Write a JSON summary of the resources the task used into ``directory``
        (``vine-task-<id>.summary``) when it comes back."""
        self.monitor_output = str(directory)

    def set_snapshot_file(self, f: Any) -> None:
        not_yet("task snapshot files (resource monitor snapshots)")

    def add_environment(self, f: File) -> None:
        """Run the task inside a software environment: ``f`` from ``m.declare_poncho``
        (or ``m.declare_untar`` of a tree with a ``bin/``). The unpacked environment is
        placed in the sandbox, and the command runs with it active: ``CONDA_PREFIX`` set
        to it, its ``bin/`` first on ``PATH``, and its ``etc/conda/activate.d/*.sh``
        scripts sourced, as ``conda activate`` does. Several environments stack (the
        last one added comes first on ``PATH``)."""
        if not isinstance(f, File) or f.kind is not FileKind.MINI \
                or f.mini_kind not in ("poncho", "untar"):
            raise TypeError("add_environment takes a File from declare_poncho or "
                            f"declare_untar, got {f!r}")
        if isinstance(self, PythonTask):
            raise NotImplementedError(
                "add_environment on a PythonTask: vinework runs Python functions in the "
                "worker's own warm interpreters, which cannot switch to a packaged "
                "environment; install the packages where the workers run, or run the "
                "environment's python in a command Task")
        remote = f".vinework-env-{len(self.environments) + 1}"
        self.add_input(f, remote)
        self.environments.append(remote)

    def add_poncho_package(self, f: File) -> None:
        """TaskVine's older name of ``add_environment``."""
        self.add_environment(f)

    def add_execution_context(self, f: File) -> None:
        """TaskVine's ``add_execution_context``: ``add_environment``."""
        self.add_environment(f)

    def add_starch_package(self, f: Any) -> None:
        """Refused: vinework does not run starch packages (see ``declare_starch``)."""
        raise NotImplementedError("starch packages are not supported by vinework; use "
                                  "declare_poncho or declare_untar")

    def set_library_required(self, name: str) -> None:
        not_yet("serverless libraries (FunctionCall)")

    def set_library_provided(self, name: str) -> None:
        not_yet("serverless libraries (LibraryTask)")

    def set_function_slots(self, n: int) -> None:
        not_yet("serverless libraries (LibraryTask)")

    def get_library_required(self) -> None:
        return None

    def needs_library(self) -> bool:
        return False

    def provides_library(self) -> bool:
        return False

    def clone(self) -> Task:
        """A copy of this task that can be submitted too (inputs and outputs are the same
        File objects; results are not copied)."""
        import copy
        other = copy.copy(self)
        other.inputs = list(self.inputs)
        other.outputs = list(self.outputs)
        other.env = dict(self.env)
        other.mount_flags = dict(self.mount_flags)
        other.features = list(self.features)
        other.id = 0
        other._manager = None
        other._reset_results()
        if isinstance(other, PythonTask):
            other._output_file = None
        return other

    def addref(self) -> None:
        """TaskVine keeps a reference count for the C object; kept for compatibility."""
        self._refs += 1

    def submit_finalize(self) -> None:
        """Called by ``Manager.submit`` just before the task is queued (subclasses hook it)."""

    @property
    def manager(self) -> Any:
        """The Manager the task was submitted to (None before ``submit``)."""
        return self._manager

    # ----- results
    @property
    def output(self) -> Any:
        """stdout and stderr of the command (a PythonTask overrides this)."""
        return self.std_output

    @property
    def state(self) -> str:
        """TaskVine's state name: "INITIAL", "READY", "RUNNING", "WAITING_RETRIEVAL",
        "RETRIEVED" or "DONE" (asks the manager while it holds the task)."""
        if self._manager is not None and not self._done:
            self._state = self._manager.task_state(self.id)
        if self._done:
            self._state = 5
        return STATE_NAMES[self._state] if 0 <= self._state < len(STATE_NAMES) else "UNKNOWN"

    @property
    def resources_measured(self) -> ResourceSummary:
        """What the task used (TaskVine's rmsummary): ``wall_time``, ``cpu_time`` (s),
        ``memory`` (max rss, MB), ``start``/``end`` (us); -1 where unknown."""
        if self._measured is None:
            raw = self._raw
            if raw is None:
                self._measured = ResourceSummary()
            else:
                m, _, start, end = raw
                if len(m) >= 3:
                    self._measured = ResourceSummary(
                        cores=self.cores if self.cores is not None else -1, memory=m[2],
                        wall_time=m[0], cpu_time=m[1], start=start * 1e6, end=end * 1e6)
                else:
                    self._measured = ResourceSummary(wall_time=max(0.0, end - start),
                                                     start=start * 1e6, end=end * 1e6)
        return self._measured

    @resources_measured.setter
    def resources_measured(self, r: ResourceSummary) -> None:
        self._measured = r

    @property
    def resources_allocated(self) -> ResourceSummary:
        """What the task's latest run was given (-1 before it was placed)."""
        if self._allocated is None:
            a = self._raw[1] if self._raw is not None else ()
            if len(a) == 4:
                self._allocated = ResourceSummary(cores=a[0], memory=a[1], disk=a[2],
                                                  gpus=a[3], wall_time=self.time_max or -1)
            else:
                return _NOTHING_ALLOCATED
        return self._allocated

    @resources_allocated.setter
    def resources_allocated(self, r: ResourceSummary) -> None:
        self._allocated = r

    @property
    def limits_exceeded(self) -> ResourceSummary | None:
        """The resources the task used beyond what it asked for (memory), or None."""
        if not self._limits_known:
            self._limits_known = True
            m = self._raw[0] if self._raw is not None else ()
            if len(m) >= 3 and self.memory is not None and m[2] > self.memory:
                self._limits = ResourceSummary(memory=m[2])
        return self._limits

    @limits_exceeded.setter
    def limits_exceeded(self, r: ResourceSummary | None) -> None:
        self._limits, self._limits_known = r, True

    @property
    def resources_requested(self) -> ResourceSummary:
        """What the task asked for (-1 where it left a resource unset)."""
        def v(x: int | None) -> float:
            return -1 if x is None else x
        return ResourceSummary(cores=v(self.cores), memory=v(self.memory), disk=v(self.disk),
                               gpus=v(self.gpus), wall_time=self.time_max or -1)

    def get_metric(self, name: str) -> float:
        """TaskVine's task metrics: ``time_when_submitted``, ``time_when_done``,
        ``time_when_commit_start``, ``time_when_commit_end``, ``time_when_retrieval``,
        ``time_workers_execute_last``, ``time_workers_execute_all``, ``bytes_received``,
        ``bytes_sent``, ``bytes_transferred`` (times in microseconds since the epoch)."""
        metrics: dict[str, float] = {}
        if self._times is not None:
            sub, start, end, done = self._times
            run = max(0.0, end - start) * 1e6
            metrics = {"time_when_submitted": sub * 1e6, "time_when_commit_start": start * 1e6,
                       "time_when_commit_end": start * 1e6, "time_when_retrieval": end * 1e6,
                       "time_when_done": done * 1e6, "time_workers_execute_last": run,
                       "time_workers_execute_all": run}
        try:
            return metrics[name]
        except KeyError:
            raise ValueError(f"unknown task metric {name!r}; known: "
                             f"{', '.join(sorted(metrics)) or '(none before wait)'}"
                             ) from None

    def successful(self) -> bool:
        """True if the task ran to completion with exit code 0."""
        return self._done and self.result == TaskResult.SUCCESS and self.exit_code == 0

    def completed(self) -> bool:
        """True if the task ran to completion (any exit code)."""
        return self._done and self.result == TaskResult.SUCCESS

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.command!r}>"


class PythonTask(Task):
    """Run ``fn(*args, **kwargs)`` on a worker, TaskVine's ``PythonTask``.

    Like TaskVine, the function and its arguments are serialized at ``submit``
    (so changes to the arguments before then are seen) and the result is read
    when ``output`` is first used.
    """

    def __init__(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError("PythonTask needs a callable")
        name = getattr(fn, "__name__", "function")
        super().__init__(f"python:{name}")
        self.function = fn
        self._args = args
        self._kwargs = kwargs
        self.payload: bytes | None = None
        self.temp_output = False
        self.output_cache = False
        self.serialize_output = True
        self.exec_mode = ""
        self._output_file: File | None = None
        self.remote_traceback = ""

    _no_result: type[PythonTaskNoResult] = PythonTaskNoResult  # (FunctionCall's differs)

    def submit_finalize(self) -> None:
        """Serialize the function and its arguments (done by ``Manager.submit``)."""
        if self.payload is None:
            if self.serialize_output:
                self.payload = dumps_call(self.function, self._args, self._kwargs)
            else:  # the worker stores the returned bytes as they are
                self.payload = dumps_call(raw_result, (self.function, *self._args),
                                          self._kwargs)

    def set_exec_mode(self, mode: str) -> None:
        """How the worker runs the call: "direct" (a warm executor process, reused; the
        default) or "fork" (a fresh forked child, so no process state leaks between tasks)."""
        if mode not in ("direct", "fork"):
            raise ValueError("exec mode must be 'direct' or 'fork'")
        self.exec_mode = mode

    def enable_temp_output(self) -> None:
        """Keep the return value on the worker; pass ``output_file`` to later tasks."""
        self.temp_output = True

    def disable_temp_output(self) -> None:
        """Bring the return value back to the manager (the default)."""
        self.temp_output = False

    def set_output_cache(self, cache: bool = False) -> None:
        """Keep the result file in the workers' caches for the whole workflow."""
        self.output_cache = bool(cache)

    def disable_output_serialization(self) -> None:
        """The function returns bytes, and its result file holds exactly those bytes (so
        command tasks can read it); ``output`` is then those bytes."""
        self.serialize_output = False

    @property
    def output_file(self) -> File:
        """The File holding the result (a temp when temp output is on). Created on first
        use, so ``output_file`` can be handed to a consumer before ``submit``."""
        if self._output_file is None:
            self._output_file = File(FileKind.TEMP)
        return self._output_file

    @property
    def output(self) -> Any:
        """The function's return value; the exception it raised; or a
        ``PythonTaskNoResult`` when the task produced no result."""
        if self.temp_output:
            raise TaskOutputUnavailable(
                f"task {self.id} keeps its result on the worker (enable_temp_output); "
                "pass t.output_file as an input to a later task, or m.fetch_file(t.output_file)"
            )
        return self._output


def _amount(what: str, value: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if value == -1:
        return None  # TaskVine's "unset"
    if value < 0:
        raise ValueError(f"{what} must be >= 0 (or -1: unset), got {value!r}")
    return int(value)


def environment_command(command: str, environments: list[str]) -> str:
    """``command`` run with the environments (remote names in the sandbox) active."""
    if not environments:
        return command
    lines = []
    for remote in environments:
        lines.append(f'CONDA_PREFIX="$PWD/{remote}"; export CONDA_PREFIX; '
                     f'CONDA_DEFAULT_ENV="$CONDA_PREFIX"; export CONDA_DEFAULT_ENV; '
                     'PATH="$CONDA_PREFIX/bin:$PATH"; export PATH; '
                     'for _vine_s in "$CONDA_PREFIX"/etc/conda/activate.d/*.sh; do '
                     '[ -f "$_vine_s" ] && . "$_vine_s"; done; unset _vine_s')
    return "; ".join(lines) + "\n" + command

