"""Pure durability decisions: replicate, checkpoint, prune, and time recoveries.

``ManagerState`` calls these hooks as things happen; the decisions here only
read the state and return work through the state's own command list. No I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .state import ManagerState, TaskRecord, WorkerRecord


class Durability:
    """Per-file durability policy of one manager."""

    def __init__(self, state: ManagerState) -> None:
        self.s = state
        self.recovering: dict[int, float] = {}  # task id -> when its recovery run began
        self.run_seconds: dict[int, float] = {}

    # hooks called by the state -------------------------------------------------
    def after_event(self) -> None:
        """Called after every event, before scheduling."""

    def worker_lost(self, worker_id: str, names: set[str]) -> None:
        """A worker left, with the files it held."""

    def recovery_started(self, task_id: int, name: str) -> None:
        self.recovering.setdefault(task_id, self.s.now)

    def recovery_finished(self, task_id: int, now: float) -> None:
        began = self.recovering.pop(task_id, None)
        if began is not None:
            self.s.stats.recovery_seconds += max(0.0, now - began)

    def task_finished(self, task_id: int) -> None:
        """A user task was returned."""

    def task_ran(self, task_id: int, seconds: float) -> None:
        self.run_seconds[task_id] = max(0.0, seconds)

    def transfer_measured(self, size: int, seconds: float) -> None:
        """One transfer of ``size`` bytes took ``seconds``."""

    def checkpointed(self, name: str) -> None:
        """A checkpoint of ``name`` reached the manager."""

    def can_host(self, worker: WorkerRecord, task: TaskRecord) -> bool:
        """False if the worker's disk cannot hold the task's missing inputs."""
        return True
