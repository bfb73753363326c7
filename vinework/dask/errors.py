"""The errors DaskVine raises itself (a task's own exception is raised as it is)."""

from __future__ import annotations

__all__ = ["DaskVineTaskError", "TaskExited"]


class DaskVineTaskError(RuntimeError):
    """A Dask task failed for a reason other than an exception raised by its code (its
    worker kept failing, its output could not be brought back, ...) on every attempt."""


class TaskExited(Exception):
    """A Dask task called ``sys.exit`` inside a library (``task_mode="function-calls"``):
    carried back as this, so that the library goes on, and raised at the manager as the
    ``SystemExit`` it was, as dask's own schedulers raise it."""

    def __init__(self, code: object = None) -> None:
        super().__init__(code)
        self.code = code

    def as_system_exit(self) -> SystemExit:
        e = SystemExit(self.code)
        for note in getattr(self, "__notes__", ()):
            e.add_note(note)
        e.remote_traceback = getattr(self, "remote_traceback", "")  # type: ignore[attr-defined]
        return e
