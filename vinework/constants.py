"""TaskVine-compatible constants: task results, cache levels, file kinds.

The numbers equal TaskVine's ``VINE_*`` values so that code written for
``ndcctools.taskvine`` compares results the same way on vinework.
"""

from __future__ import annotations

from enum import IntEnum


class TaskResult(IntEnum):
    """Why a task ended; ``str()`` gives TaskVine's readable name."""

    SUCCESS = 0
    INPUT_MISSING = 1
    OUTPUT_MISSING = 2
    STDOUT_MISSING = 4
    SIGNAL = 1 << 3
    RESOURCE_EXHAUSTION = 2 << 3
    MAX_END_TIME = 3 << 3
    UNKNOWN = 4 << 3
    FORSAKEN = 5 << 3
    MAX_RETRIES = 6 << 3
    MAX_WALL_TIME = 7 << 3
    RMONITOR_ERROR = 8 << 3
    OUTPUT_TRANSFER_ERROR = 9 << 3
    FIXED_LOCATION_MISSING = 10 << 3
    CANCELLED = 11 << 3
    LIBRARY_EXIT = 12 << 3
    SANDBOX_EXHAUSTION = 13 << 3
    MISSING_LIBRARY = 14 << 3
    WORKER_DISCONNECT = 15 << 3
    DISK_EXHAUSTION = 16 << 3  # vinework: the task filled the worker's disk

    def __str__(self) -> str:
        return _NAMES[self]


_NAMES = {
    TaskResult.SUCCESS: "success",
    TaskResult.INPUT_MISSING: "input missing",
    TaskResult.OUTPUT_MISSING: "output missing",
    TaskResult.STDOUT_MISSING: "stdout missing",
    TaskResult.SIGNAL: "signal",
    TaskResult.RESOURCE_EXHAUSTION: "resource exhaustion",
    TaskResult.MAX_END_TIME: "max end time",
    TaskResult.UNKNOWN: "unknown",
    TaskResult.FORSAKEN: "forsaken",
    TaskResult.MAX_RETRIES: "max retries",
    TaskResult.MAX_WALL_TIME: "max wall time",
    TaskResult.RMONITOR_ERROR: "monitor error",
    TaskResult.OUTPUT_TRANSFER_ERROR: "output transfer error",
    TaskResult.FIXED_LOCATION_MISSING: "fixed location missing",
    TaskResult.CANCELLED: "cancelled",
    TaskResult.LIBRARY_EXIT: "library exit",
    TaskResult.SANDBOX_EXHAUSTION: "sandbox exhaustion",
    TaskResult.MISSING_LIBRARY: "missing library",
    TaskResult.WORKER_DISCONNECT: "worker disconnect",
    TaskResult.DISK_EXHAUSTION: "disk exhausted",
}



class ResultString(str):
    """What ``t.result`` holds: TaskVine's result string (``"success"``, ``"input missing"``,
    ``"max end time"``, ...), which also equals its ``VINE_RESULT_*`` number, so both
    ``t.result == "success"`` and ``t.result == VINE_RESULT_SUCCESS`` hold; ``int()`` of it
    is the number and ``.code`` the ``TaskResult``."""

    code: TaskResult

    def __new__(cls, code: int) -> ResultString:
        c = TaskResult(code)
        s = super().__new__(cls, _NAMES[c])
        s.code = c
        return s

    def __eq__(self, other: object) -> bool:
        if isinstance(other, int) and not isinstance(other, bool):
            return int(self.code) == int(other)
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__

    def __int__(self) -> int:
        return int(self.code)

    def __index__(self) -> int:
        return int(self.code)

    def __reduce__(self) -> tuple[object, tuple[int]]:
        return (result_string, (int(self.code),))


_RESULT_STRINGS: dict[int, ResultString] = {}


def result_string(code: int) -> ResultString:
    """The (shared) ``ResultString`` of a result number."""
    r = _RESULT_STRINGS.get(code)
    if r is None:
        r = _RESULT_STRINGS[code] = ResultString(code)
    return r


VINE_RESULT_SUCCESS = TaskResult.SUCCESS
VINE_RESULT_INPUT_MISSING = TaskResult.INPUT_MISSING
VINE_RESULT_OUTPUT_MISSING = TaskResult.OUTPUT_MISSING
VINE_RESULT_STDOUT_MISSING = TaskResult.STDOUT_MISSING
VINE_RESULT_SIGNAL = TaskResult.SIGNAL
VINE_RESULT_RESOURCE_EXHAUSTION = TaskResult.RESOURCE_EXHAUSTION
VINE_RESULT_MAX_END_TIME = TaskResult.MAX_END_TIME
VINE_RESULT_UNKNOWN = TaskResult.UNKNOWN
VINE_RESULT_FORSAKEN = TaskResult.FORSAKEN
VINE_RESULT_MAX_RETRIES = TaskResult.MAX_RETRIES
VINE_RESULT_MAX_WALL_TIME = TaskResult.MAX_WALL_TIME
VINE_RESULT_RMONITOR_ERROR = TaskResult.RMONITOR_ERROR
VINE_RESULT_OUTPUT_TRANSFER_ERROR = TaskResult.OUTPUT_TRANSFER_ERROR
VINE_RESULT_FIXED_LOCATION_MISSING = TaskResult.FIXED_LOCATION_MISSING
VINE_RESULT_CANCELLED = TaskResult.CANCELLED
VINE_RESULT_LIBRARY_EXIT = TaskResult.LIBRARY_EXIT
VINE_RESULT_SANDBOX_EXHAUSTION = TaskResult.SANDBOX_EXHAUSTION
VINE_RESULT_MISSING_LIBRARY = TaskResult.MISSING_LIBRARY
VINE_RESULT_WORKER_DISCONNECT = TaskResult.WORKER_DISCONNECT
VINE_RESULT_DISK_EXHAUSTION = TaskResult.DISK_EXHAUSTION


class CacheLevel(IntEnum):
    """How long a worker keeps a file (TaskVine's ``VINE_CACHE_LEVEL_*``)."""

    TASK = 0  # deleted once the task that needed it finishes
    WORKFLOW = 1  # kept until the manager goes away
    WORKER = 2  # kept for the life of the worker, across managers
    FOREVER = 3  # kept even across worker restarts


VINE_CACHE_LEVEL_TASK = CacheLevel.TASK
VINE_CACHE_LEVEL_WORKFLOW = CacheLevel.WORKFLOW
VINE_CACHE_LEVEL_WORKER = CacheLevel.WORKER
VINE_CACHE_LEVEL_FOREVER = CacheLevel.FOREVER

VINE_DEFAULT_PORT = 9123
VINE_WAIT_FOREVER = -1  # ``m.wait(VINE_WAIT_FOREVER)`` waits until a task comes back

# What ``Manager.task_state(task_id)`` returns (TaskVine's ``VINE_TASK_*`` numbers).
VINE_TASK_INITIAL = 0
VINE_TASK_READY = 1
VINE_TASK_RUNNING = 2
VINE_TASK_WAITING_RETRIEVAL = 3
VINE_TASK_RETRIEVED = 4
VINE_TASK_DONE = 5


VINE_RANDOM_PORT = 0

# Worker selection policies (``Manager.set_scheduler``, ``Task.set_scheduler``).
VINE_SCHEDULE_UNSET = 0
VINE_SCHEDULE_FCFS = 1
VINE_SCHEDULE_FILES = 2
VINE_SCHEDULE_TIME = 3
VINE_SCHEDULE_RAND = 4
VINE_SCHEDULE_WORST = 5
VINE_SCHEDULE_DISK = 6

SCHEDULER_NAMES = ("", "fcfs", "files", "time", "rand", "worst", "disk")  # by number


def scheduler_name(s: str | int) -> str:
    """A worker-selection policy by name or ``VINE_SCHEDULE_*`` number ("" for UNSET)."""
    if isinstance(s, int) and not isinstance(s, bool):
        if not 0 <= s < len(SCHEDULER_NAMES):
            raise ValueError(f"unknown scheduler number {s}")
        return SCHEDULER_NAMES[s]
    name = str(s).lower()
    if name not in SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {s!r}; use one of "
                         f"{', '.join(SCHEDULER_NAMES[1:])}")
    return name


# Category allocation modes (``Manager.set_category_mode``).
VINE_ALLOCATION_MODE_FIXED = 0
VINE_ALLOCATION_MODE_MAX = 1
VINE_ALLOCATION_MODE_MIN_WASTE = 2
VINE_ALLOCATION_MODE_MAX_THROUGHPUT = 3
VINE_ALLOCATION_MODE_GREEDY_BUCKETING = 4
VINE_ALLOCATION_MODE_EXHAUSTIVE_BUCKETING = 5
VINE_ALLOCATION_MODE_DET_GREEDY_BUCKETING = 6
VINE_ALLOCATION_MODE_DET_EXHAUSTIVE_BUCKETING = 7
VINE_ALLOCATION_MODE_QUANTIZED_BUCKETING = 8

# File types (``File.type()``).
VINE_FILE = 1
VINE_URL = 2
VINE_TEMP = 3
VINE_BUFFER = 4
VINE_MINI_TASK = 5

# Mount flags (``Task.add_input``/``add_output`` options) and file flags.
VINE_TRANSFER_ALWAYS = 0
VINE_FIXED_LOCATION = 1
VINE_WATCH = 2
VINE_FAILURE_ONLY = 4
VINE_SUCCESS_ONLY = 8
VINE_MOUNT_SYMLINK = 32
VINE_MOUNT_MKDIR = 64
VINE_PEER_NOSHARE = 1
VINE_UNLINK_WHEN_DONE = 2


def cache_level(cache: bool | str | int | CacheLevel) -> CacheLevel:
    """Map TaskVine's ``cache=`` argument (False/True/"workflow"/"worker"/"always"/level)."""
    if isinstance(cache, CacheLevel):
        return cache
    if cache is False:
        return CacheLevel.TASK
    if cache is True:
        return CacheLevel.WORKFLOW
    if isinstance(cache, int):
        return CacheLevel(cache)
    names = {"task": CacheLevel.TASK, "workflow": CacheLevel.WORKFLOW,
             "worker": CacheLevel.WORKER, "always": CacheLevel.WORKER,
             "forever": CacheLevel.FOREVER}
    try:
        return names[cache]
    except KeyError:
        raise ValueError(f"unknown cache level {cache!r}; use one of {sorted(names)}") from None
