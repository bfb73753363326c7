"""The tables of allowed state changes: tasks and file replicas.

Everything that changes a task's state goes through ``ManagerState._transition``
and everything that changes a replica's state through ``ReplicaTable``; both
look the (from, to) pair up here and raise ``InvalidTransition`` when it is not
listed. An invalid transition is a bug in the core, never a user error: the
shell turns it into a ``ManagerError`` at the user's next call.

Task lifecycle (TaskVine's names plus WAITING and STAGING)::

    INITIAL -> WAITING | READY | RETRIEVED
    WAITING -> READY | RETRIEVED                      (inputs came / failed, cancelled)
    READY   -> STAGING | RUNNING | WAITING | RETRIEVED  (placed: inputs to fetch / all
                                                        there / an input lost / ...)
    STAGING -> RUNNING | READY | WAITING | RETRIEVED  (inputs arrived / worker lost / ...)
    RUNNING -> WAITING_RETRIEVAL | RETRIEVED | READY | WAITING | DONE
    WAITING_RETRIEVAL -> RETRIEVED | READY | WAITING
    RETRIEVED -> DONE | READY | WAITING               (wait() returned it / a recovery run)
    DONE    -> READY | WAITING                        (a recovery run)

A recovery run (a finished task re-run to remake a lost temp) leaves RETRIEVED
or DONE and comes back to where it left from (RUNNING -> RETRIEVED or DONE):
it is a new ``RunRecord`` of the same task, never a rewind of what the user saw.
"""

from __future__ import annotations

from ..constants import (
    VINE_TASK_DONE,
    VINE_TASK_INITIAL,
    VINE_TASK_READY,
    VINE_TASK_RETRIEVED,
    VINE_TASK_RUNNING,
    VINE_TASK_WAITING_RETRIEVAL,
)
from .records import TaskState

T = TaskState


class InvalidTransition(AssertionError):
    """The core tried a state change its tables do not allow (a bug)."""


TASK: frozenset[tuple[TaskState, TaskState]] = frozenset({
    (T.INITIAL, T.WAITING), (T.INITIAL, T.READY), (T.INITIAL, T.RETRIEVED),
    (T.WAITING, T.READY), (T.WAITING, T.RETRIEVED),
    (T.READY, T.STAGING), (T.READY, T.RUNNING), (T.READY, T.WAITING), (T.READY, T.RETRIEVED),
    (T.STAGING, T.RUNNING), (T.STAGING, T.READY), (T.STAGING, T.WAITING),
    (T.STAGING, T.RETRIEVED),
    (T.RUNNING, T.WAITING_RETRIEVAL), (T.RUNNING, T.RETRIEVED), (T.RUNNING, T.READY),
    (T.RUNNING, T.WAITING), (T.RUNNING, T.DONE),
    (T.WAITING_RETRIEVAL, T.RETRIEVED), (T.WAITING_RETRIEVAL, T.READY),
    (T.WAITING_RETRIEVAL, T.WAITING),
    (T.RETRIEVED, T.DONE), (T.RETRIEVED, T.READY), (T.RETRIEVED, T.WAITING),
    (T.DONE, T.READY), (T.DONE, T.WAITING),
})

# Replica states: None (no copy), "pending" (on its way or being produced), "ready".
REPLICA: frozenset[tuple[str | None, str | None]] = frozenset({
    (None, "pending"), (None, "ready"), ("pending", "ready"), ("pending", None),
    ("ready", None), ("ready", "ready"),  # a re-announcement (a produced file made again)
})

# What ``Manager.task_state`` reports: TaskVine's VINE_TASK_* numbers
# (INITIAL 0, READY 1, RUNNING 2, WAITING_RETRIEVAL 3, RETRIEVED 4, DONE 5).
VINE_TASK_STATE: dict[TaskState, int] = {
    T.INITIAL: VINE_TASK_INITIAL, T.WAITING: VINE_TASK_READY, T.READY: VINE_TASK_READY,
    T.STAGING: VINE_TASK_RUNNING, T.RUNNING: VINE_TASK_RUNNING,
    T.WAITING_RETRIEVAL: VINE_TASK_WAITING_RETRIEVAL, T.RETRIEVED: VINE_TASK_RETRIEVED,
    T.DONE: VINE_TASK_DONE,
}


def check_task(old: TaskState, new: TaskState) -> None:
    """Raise ``InvalidTransition`` unless a task may go from ``old`` to ``new``."""
    if (old, new) not in TASK:
        raise InvalidTransition(f"task transition {old.value} -> {new.value} is not allowed")


def check_replica(old: str | None, new: str | None) -> None:
    """Raise ``InvalidTransition`` unless a replica may go from ``old`` to ``new``."""
    if (old, new) not in REPLICA:
        raise InvalidTransition(f"replica transition {old} -> {new} is not allowed")
