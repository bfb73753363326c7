"""The performance log, in TaskVine's format: ``# timestamp <vine_stats names>`` and then one
row of numbers per change, at most every ``perf-log-interval`` seconds (0.5 unless tuned;
TaskVine's tunable of the same name).

The columns are TaskVine's, in its order (``COLUMNS``); the first is microseconds
since the epoch. Columns vinework does not measure are written as 0: the manager's
time split (``time_send`` ... ``time_scheduling``), ``time_execute_exhaustion``, the
capacity estimates and ``manager_load``. ``inuse_cache`` (MB in the workers' caches)
ends the row, as in TaskVine's recent logs. A row is written when any number other
than the timestamp changed since the last one, and always at the start and the end.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable

from ..core.stats import ManagerStats

COLUMNS: tuple[str, ...] = (
    "timestamp",
    "workers_connected", "workers_init", "workers_idle", "workers_busy", "workers_able",
    "workers_joined", "workers_removed", "workers_released", "workers_idled_out",
    "workers_blocked", "workers_slow", "workers_lost",
    "tasks_waiting", "tasks_on_workers", "tasks_running", "tasks_with_results",
    "tasks_submitted", "tasks_dispatched", "tasks_done", "tasks_failed", "tasks_cancelled",
    "tasks_exhausted_attempts",
    "time_send", "time_receive", "time_send_good", "time_receive_good", "time_status_msgs",
    "time_internal", "time_polling", "time_application", "time_scheduling",
    "time_execute", "time_execute_good", "time_execute_exhaustion",
    "bytes_sent", "bytes_received", "bandwidth",
    "capacity_tasks", "capacity_cores", "capacity_memory", "capacity_disk",
    "capacity_instantaneous", "capacity_weighted", "manager_load",
    "total_cores", "total_memory", "total_disk",
    "committed_cores", "committed_memory", "committed_disk",
    "max_cores", "max_memory", "max_disk",
    "min_cores", "min_memory", "min_disk",
    "inuse_cache",
)

# columns that only grow during a run (what a reader may check)
CUMULATIVE: frozenset[str] = frozenset({
    "timestamp", "workers_joined", "workers_removed", "workers_released", "workers_idled_out",
    "workers_blocked", "workers_slow", "workers_lost", "tasks_submitted", "tasks_dispatched",
    "tasks_done", "tasks_failed", "tasks_cancelled", "tasks_exhausted_attempts",
    "time_execute", "time_execute_good", "bytes_sent", "bytes_received",
})

_FROM_STATS = {"time_execute": "time_workers_execute",
               "time_execute_good": "time_workers_execute_good"}
_FLOATS = frozenset({"bandwidth", "manager_load"})


def row_values(st: ManagerStats) -> list[str]:
    """The numbers of one row after the timestamp, as text."""
    out = []
    for name in COLUMNS[1:]:
        if name == "inuse_cache":
            out.append(str(st.inuse_cache // (1 << 20)))
            continue
        v = getattr(st, _FROM_STATS.get(name, name), 0)
        out.append(f"{float(v):f}" if name in _FLOATS else str(int(v)))
    return out


class PerfLog:
    """The performance log file: a header, then rows as the numbers change."""

    def __init__(self, path: str, interval: float = 0.5) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self.interval = interval
        self._f: io.TextIOWrapper | None = open(path, "a", buffering=1 << 14)  # noqa: SIM115
        self._f.write("# " + " ".join(COLUMNS) + "\n")
        self._last = ""
        self._last_at = 0.0
        self._cost_gap = 0.0  # 50 times what the last snapshot cost

    def write(self, snapshot: Callable[[], ManagerStats], force: bool = False) -> None:
        """Write a row of ``snapshot()`` if its numbers changed and the interval passed
        (or ``force``: the first and the last row). The interval grows to 50 times what
        a snapshot costs, so that the log never takes more than 2% of the manager."""
        if self._f is None:
            return
        now = time.monotonic()
        if not force and now - self._last_at < max(self.interval, self._cost_gap):
            return  # (interval: the manager's tunable, read at every call)
        st = snapshot()
        self._cost_gap = 50 * (time.monotonic() - now)
        values = " ".join(row_values(st))
        self._last_at = now
        if values == self._last and not force:
            return
        self._last = values
        self._f.write(f"{int(time.time() * 1e6)} {values}\n")

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
