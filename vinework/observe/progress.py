"""An opt-in progress display for plain ``while not m.empty(): m.wait()`` programs.

``Manager(progress=True)`` or ``m.enable_progress()`` turns it on: a rich
progress bar of tasks done out of submitted, with the counts of failed,
running and waiting tasks and the bytes moved (to and from the manager and
worker to worker). It is drawn from the user's thread, inside ``m.wait()``,
at most ``MAX_RATE`` times a second: while a display is on, ``wait`` waits in
steps of ``1 / MAX_RATE`` s and redraws between them (the counts come from one
question to the loop thread, ``m.stats``). It is off (a no-op) when the
console is not a terminal, so logs and pipes never get escape codes; it stops
when the manager has nothing left to return, and at ``m.close()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..core.stats import ManagerStats

if TYPE_CHECKING:
    from rich.console import Console

    from ..task import Task


class Manager(Protocol):
    """What the display reads of a Manager (``vinework.manager.api.Manager``)."""

    @property
    def stats(self) -> ManagerStats: ...

    def empty(self) -> bool: ...

MAX_RATE = 10.0  # redraws per second at most


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ProgressDisplay:
    """The display of one manager (see the module docstring)."""

    def __init__(self, manager: Manager, console: Console | None = None) -> None:
        from rich.console import Console
        self.manager = manager
        self.console = console if console is not None else Console()
        self.active = bool(self.console.is_terminal)  # off when not a terminal
        self._progress: Any = None
        self._bar: Any = None
        self._last = 0.0
        self.counts: dict[str, int] = {}  # what was last drawn

    def _start(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        self._progress = Progress(
            TextColumn("tasks"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), console=self.console,
            auto_refresh=False, transient=False)
        self._bar = self._progress.add_task("tasks", total=None, detail="")
        self._progress.start()

    def tick(self, force: bool = False) -> None:
        """Redraw if the last redraw is at least ``1 / MAX_RATE`` s old (or ``force``)."""
        if not self.active:
            return
        now = time.monotonic()
        if not force and now - self._last < 1.0 / MAX_RATE:
            return
        self._last = now
        st = self.manager.stats
        c = {"done": st.tasks_done - st.tasks_failed, "failed": st.tasks_failed,
             "running": st.tasks_running,
             "waiting": max(st.tasks_submitted - st.tasks_done - st.tasks_running, 0),
             "submitted": st.tasks_submitted,
             "bytes": st.bytes_sent + st.bytes_received + st.bytes_peer}
        self.counts = c
        if self._progress is None:
            self._start()
        detail = (f"done {c['done']}  failed {c['failed']}  running {c['running']}  "
                  f"waiting {c['waiting']}  moved {_size(c['bytes'])}")
        self._progress.update(self._bar, total=max(c["submitted"], 1),
                              completed=c["done"] + c["failed"], detail=detail)
        self._progress.refresh()

    def wait(self, wait_for: Callable[[float | None], Task | None],
             limit: float | None) -> Task | None:
        """``wait_for(seconds)`` in steps of ``1 / MAX_RATE`` s up to ``limit`` (None:
        forever), redrawing between steps; what it returned."""
        if not self.active:
            return wait_for(limit)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            self.tick()
            step = 1.0 / MAX_RATE
            if deadline is not None:
                step = max(min(step, deadline - time.monotonic()), 0.0)
            t = wait_for(step)
            over = deadline is not None and time.monotonic() >= deadline
            if t is not None or over or self.manager.empty():
                if self.manager.empty():
                    self.tick(force=True)
                    self.stop()
                return t

    def stop(self) -> None:
        """Leave the last drawing on the screen and stop (a later tick starts again)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
