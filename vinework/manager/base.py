"""What every part of the user-facing Manager shares: its loop plumbing and records.

The Manager (``api.py``) is one class made of parts, one noun each:
``declare.FileMethods`` (files), ``control.ControlMethods`` (tuning, resources,
hosts, workers), ``info.InfoMethods`` (stats, status, directories, logs). They
all build on ``ManagerBase``: ``_post`` hands an event to the loop thread,
``_ask`` answers a query there (the core is never touched from the user's
thread), and the attributes declared here are set by ``Manager.__init__``.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..core import Event, FetchDone, ManagerState
from .errors import ManagerError

if TYPE_CHECKING:
    from ..task import Task
    from ..txnlog import TxnLog
    from .rundir import RunInfo
    from .server import ManagerServer

log = logging.getLogger("vinework.manager")


class ManagerBase:
    """The loop plumbing and shared records of a Manager (see the module docstring)."""

    _state: ManagerState
    _server: ManagerServer
    _txn: TxnLog
    _run: RunInfo
    _tasks: dict[int, Task]
    _done: collections.deque[Task]
    _cond: threading.Condition
    _fetches: dict[int, FetchDone]
    _next_fetch: int
    _next_id: int
    _declared: set[str]
    _closed: bool
    _error: ManagerError | None
    notices: list[str]
    name: str | None
    _properties: dict[str, str]
    _once: set[str]
    _tuned: dict[str, Any]  # the last value ``tune`` set for each name (the core has it)

    def _post(self, event: Event) -> None:
        """Hand an event to the loop thread (raises the core's error, if it failed)."""
        if self._error is not None:
            raise self._error
        self._server.post(event)

    def _post_quiet(self, event: Event) -> None:
        """An event that can wait for the loop's next wake-up (``ManagerServer.post_quiet``)."""
        if self._error is not None:
            raise self._error
        self._server.post_quiet(event)

    def _ask(self, fn: Any) -> Any:
        """Answer a query on the loop thread, where the core lives."""
        if self._error is not None:
            raise self._error
        return self._server.call(fn)

    def _on_error(self, err: ManagerError) -> None:
        with self._cond:
            self._error = err
            self._cond.notify_all()

    def _on_notice(self, text: str) -> None:
        self.notices.append(text)
        log.warning("%s", text)

    def _say_once(self, key: str, text: str) -> None:
        """Log ``text`` once per manager (accepted options that do nothing here)."""
        if key not in self._once:
            self._once.add(key)
            log.warning("%s", text)

    @property
    def port(self) -> int:
        """The port workers connect to."""
        return self._server.port
