"""Task priorities for DaskVine's ``task_priority_mode`` (TaskVine's names and meanings).

DaskVine gives every Dask task a priority when the task becomes ready (all its
inputs exist); a higher priority runs first, both in DaskVine's own queue of
tasks not yet submitted (``max_pending``, ``submit_per_cycle``) and in the
manager's ready queue. The modes, as TaskVine defines them:

* ``largest-input-first`` (the default): the total size in bytes of the task's
  inputs; running big consumers first frees storage soonest (with pruning).
* ``FIFO`` / ``LIFO``: the order in which tasks became ready, oldest / newest first.
* ``depth-first`` / ``breadth-first``: the task's depth in the graph
  (:meth:`vinework.dask.graph.DaskGraph.depth_of`), deepest / shallowest first.
* ``longest-category-first`` / ``shortest-category-first``: the mean wall time
  of the tasks of its category (the function it calls) that finished so far,
  longest / shortest first; a category with no finished task yet runs before
  any known one, to learn its time.
* ``random``: a random order.

Ties run in the order the tasks became ready. Pure: no I/O, no threads, no
clock (wall times are reported by the caller); not thread-safe.
"""

from __future__ import annotations

import random

__all__ = ["PRIORITY_MODES", "UNKNOWN_CATEGORY_PRIORITY", "TaskPriorities"]

PRIORITY_MODES: tuple[str, ...] = (
    "largest-input-first", "random", "depth-first", "breadth-first",
    "longest-category-first", "shortest-category-first", "FIFO", "LIFO",
)

# A category with no finished task yet: above any mean time (TaskVine uses +inf).
UNKNOWN_CATEGORY_PRIORITY = 1e18

_CATEGORY_MODES = frozenset({"longest-category-first", "shortest-category-first"})
_DEPTH_MODES = frozenset({"depth-first", "breadth-first"})


def check_priority_mode(mode: object) -> str:
    """Return ``mode`` if it is one of :data:`PRIORITY_MODES`.

    Raises:
        ValueError: Naming the valid modes.
    """
    if not isinstance(mode, str) or mode not in PRIORITY_MODES:
        raise ValueError(
            f"unknown task_priority_mode {mode!r}; use one of: {', '.join(PRIORITY_MODES)}"
        )
    return mode


class TaskPriorities:
    """Computes each ready task's priority under one ``task_priority_mode``."""

    def __init__(self, mode: str, *, rng: random.Random | None = None) -> None:
        """Args:
            mode: One of :data:`PRIORITY_MODES`.
            rng: Source of the ``random`` mode's numbers (a fresh one if None).

        Raises:
            ValueError: If ``mode`` is unknown.
        """
        self.mode = check_priority_mode(mode)
        self._rng = rng if rng is not None else random.Random()
        self._ready_count = 0
        self._time: dict[str, float] = {}  # category -> total wall time of finished tasks
        self._count: dict[str, int] = {}  # category -> finished tasks

    @property
    def needs_depth(self) -> bool:
        """Whether :meth:`priority` reads ``depth``."""
        return self.mode in _DEPTH_MODES

    @property
    def needs_input_bytes(self) -> bool:
        """Whether :meth:`priority` reads ``input_bytes``."""
        return self.mode == "largest-input-first"

    @property
    def needs_times(self) -> bool:
        """Whether :meth:`task_finished` matters (the category modes)."""
        return self.mode in _CATEGORY_MODES

    def priority(self, *, depth: int = 0, input_bytes: int = 0, category: str = "") -> float:
        """The priority of a task that just became ready (call once per ready task).

        Args:
            depth: Its depth in the graph (read by the depth modes).
            input_bytes: Total size of its inputs (read by ``largest-input-first``).
            category: Its category (read by the category modes).
        """
        self._ready_count += 1
        mode = self.mode
        if mode == "largest-input-first":
            return float(input_bytes)
        if mode == "FIFO":
            return float(-self._ready_count)
        if mode == "LIFO":
            return float(self._ready_count)
        if mode == "depth-first":
            return float(depth)
        if mode == "breadth-first":
            return float(-depth)
        if mode == "random":
            return self._rng.random()
        mean = self.mean_time(category)
        if mean is None:
            return UNKNOWN_CATEGORY_PRIORITY
        return mean if mode == "longest-category-first" else -mean

    def task_finished(self, category: str, wall_time: float) -> None:
        """Record that a task of ``category`` ran successfully for ``wall_time`` seconds."""
        self._time[category] = self._time.get(category, 0.0) + max(0.0, float(wall_time))
        self._count[category] = self._count.get(category, 0) + 1

    def mean_time(self, category: str) -> float | None:
        """Mean wall time of the finished tasks of ``category``; None before the first."""
        n = self._count.get(category, 0)
        return self._time[category] / n if n else None
