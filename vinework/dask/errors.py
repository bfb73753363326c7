"""The errors DaskVine raises itself (a task's own exception is raised as it is)."""

from __future__ import annotations

__all__ = ["DaskVineTaskError"]


class DaskVineTaskError(RuntimeError):
    """A Dask task failed for a reason other than an exception raised by its code (its
    worker kept failing, its output could not be brought back, ...) on every attempt."""
