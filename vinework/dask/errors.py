"""The errors DaskVine raises itself (a task's own exception is raised as it is)."""

from __future__ import annotations

__all__ = ["DaskVineTaskError", "TaskRaisedBase"]


class DaskVineTaskError(RuntimeError):
    """A Dask task failed for a reason other than an exception raised by its code (its
    worker kept failing, its output could not be brought back, ...) on every attempt."""


class TaskRaisedBase(Exception):
    """A Dask task raised a ``BaseException`` that is not an ``Exception`` (``sys.exit``'s
    ``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``, a subclass of its own) inside
    a library (``task_mode="function-calls"``): carried back inside this, so that the
    library goes on, and raised at the manager as itself, as dask's own schedulers do."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__(raised)
        self.raised = raised

    def unwrapped(self) -> BaseException:
        """The task's own exception, with this one's notes and remote traceback."""
        e = self.raised
        for note in getattr(self, "__notes__", ()):
            e.add_note(note)
        e.remote_traceback = getattr(self, "remote_traceback", "")  # type: ignore[attr-defined]
        return e
