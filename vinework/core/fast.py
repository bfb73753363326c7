"""Plain-class aliases of the enum members the core reads on every event.

Reading a member off an ``Enum`` class (``TaskState.READY``) costs about half a
microsecond in Python 3.11 (a descriptor call); reading it off a plain class costs
a few tens of nanoseconds. The core touches these members a few dozen times per
task, so its hot paths use these aliases; the members themselves are unchanged.
"""

from __future__ import annotations

from typing import Final

from ..constants import TaskResult
from .records import RetrievalKind, RunOutcome, TaskState
from .replicas import ReplicaState


class T:
    """Fast aliases of the ``TaskState`` members (see ``fast``)."""

    INITIAL: Final = TaskState.INITIAL
    WAITING: Final = TaskState.WAITING
    READY: Final = TaskState.READY
    STAGING: Final = TaskState.STAGING
    RUNNING: Final = TaskState.RUNNING
    WAITING_RETRIEVAL: Final = TaskState.WAITING_RETRIEVAL
    RETRIEVED: Final = TaskState.RETRIEVED
    DONE: Final = TaskState.DONE


class RO:
    """Fast aliases of the ``RunOutcome`` members (see ``fast``)."""

    SUCCEEDED: Final = RunOutcome.SUCCEEDED
    FAILED: Final = RunOutcome.FAILED
    WORKER_FAULT: Final = RunOutcome.WORKER_FAULT
    WORKER_LOST: Final = RunOutcome.WORKER_LOST
    FORSAKEN: Final = RunOutcome.FORSAKEN
    OUTPUT_LOST: Final = RunOutcome.OUTPUT_LOST
    CANCELLED: Final = RunOutcome.CANCELLED
    INPUT_FAILED: Final = RunOutcome.INPUT_FAILED


class RK:
    """Fast aliases of the ``RetrievalKind`` members (see ``fast``)."""

    TASK_OUTPUT: Final = RetrievalKind.TASK_OUTPUT
    PYTHON_RESULT: Final = RetrievalKind.PYTHON_RESULT
    STDOUT: Final = RetrievalKind.STDOUT
    FETCH: Final = RetrievalKind.FETCH
    CHECKPOINT: Final = RetrievalKind.CHECKPOINT


class RS:
    """Fast aliases of the ``ReplicaState`` members (see ``fast``)."""

    PENDING: Final = ReplicaState.PENDING
    READY: Final = ReplicaState.READY


class TR:
    """Fast aliases of the ``TaskResult`` members (see ``fast``)."""

    SUCCESS: Final = TaskResult.SUCCESS
    INPUT_MISSING: Final = TaskResult.INPUT_MISSING
    OUTPUT_MISSING: Final = TaskResult.OUTPUT_MISSING
    STDOUT_MISSING: Final = TaskResult.STDOUT_MISSING
    SIGNAL: Final = TaskResult.SIGNAL
    RESOURCE_EXHAUSTION: Final = TaskResult.RESOURCE_EXHAUSTION
    MAX_END_TIME: Final = TaskResult.MAX_END_TIME
    UNKNOWN: Final = TaskResult.UNKNOWN
    FORSAKEN: Final = TaskResult.FORSAKEN
    MAX_RETRIES: Final = TaskResult.MAX_RETRIES
    MAX_WALL_TIME: Final = TaskResult.MAX_WALL_TIME
    RMONITOR_ERROR: Final = TaskResult.RMONITOR_ERROR
    OUTPUT_TRANSFER_ERROR: Final = TaskResult.OUTPUT_TRANSFER_ERROR
    FIXED_LOCATION_MISSING: Final = TaskResult.FIXED_LOCATION_MISSING
    CANCELLED: Final = TaskResult.CANCELLED
    LIBRARY_EXIT: Final = TaskResult.LIBRARY_EXIT
    SANDBOX_EXHAUSTION: Final = TaskResult.SANDBOX_EXHAUSTION
    MISSING_LIBRARY: Final = TaskResult.MISSING_LIBRARY
    WORKER_DISCONNECT: Final = TaskResult.WORKER_DISCONNECT
    DISK_EXHAUSTION: Final = TaskResult.DISK_EXHAUSTION
