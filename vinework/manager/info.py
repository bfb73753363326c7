"""What the Manager tells about itself: stats, status, worker summaries, directories, logs.

``stats`` is TaskVine's ``vine_stats`` (same field names and meanings) with
vinework's own counters beside them; ``status(what)`` answers "manager",
"tasks", "workers" and "categories" with TaskVine's keys (and vinework's);
``summarize_workers`` groups workers by their resources. The directory
properties follow TaskVine's run-info layout (``rundir.py``). Every answer is
computed on the loop thread, where the core lives.
"""

from __future__ import annotations

import getpass
import os
import time
from importlib import metadata
from typing import Any

from ..core import ManagerStats
from ..core.transitions import VINE_TASK_STATE
from ..task import STATE_NAMES, Task
from .base import ManagerBase


def _version() -> str:
    try:
        return metadata.version("vinework")
    except metadata.PackageNotFoundError:
        return "unknown"


class InfoMethods(ManagerBase):
    """Queries about the manager, its tasks and its workers (see the module docstring)."""

    _started: float
    _local_counts: list[int]  # [failed without the core, the same]

    # ------------------------------------------------------------------ stats
    @property
    def stats(self) -> ManagerStats:
        """A snapshot of the manager's counters (TaskVine's ``vine_stats`` names)."""
        return self._ask(self._stats_now)  # type: ignore[no-any-return]

    def _stats_now(self) -> ManagerStats:
        """``stats`` computed here (loop thread only: status queries and metrics use it)."""
        st = self._state.stats_snapshot()
        local = self._local_counts  # tasks failed without the core (missing inputs)
        st.tasks_submitted += local[0]
        st.tasks_done += local[0]
        st.tasks_failed += local[1]
        st.bytes_control_in = self._server.bytes_in
        st.bytes_control_out = self._server.bytes_out
        st.time_when_started = int(self._started * 1e6)
        return st

    def stats_category(self, category: str) -> dict[str, int]:
        """Counts of the tasks of one category the manager holds, by state."""
        rows = [r for r in self.status("categories") if r["category"] == category]
        return rows[0] if rows else {"category": category, "tasks_waiting": 0,  # type: ignore[dict-item]
                                     "tasks_running": 0, "tasks_done": 0}

    def worker_stats(self) -> list[dict[str, Any]]:
        """One row per connected worker: resources, running tasks, bytes in and out."""
        def rows() -> list[dict[str, Any]]:
            out = []
            for w in self._state.workers.values():
                used = [getattr(w.total, r) - getattr(w.free, r)
                        for r in ("cores", "memory", "disk", "gpus")]
                out.append({
                    "worker_id": w.worker_id, "host": w.host, "hostname": w.hostname,
                    "cores": w.total.cores, "memory": w.total.memory, "disk": w.total.disk,
                    "gpus": w.total.gpus, "running": len(w.running), "tasks_done": w.tasks_done,
                    "bytes_in": w.bytes_in, "bytes_out": w.bytes_out, "disk_used": w.disk_used,
                    "files": len(self._state.replicas.files_on(w.worker_id)),
                    "draining": w.draining,
                    # TaskVine's keys
                    "workerid": w.worker_id, "address_port": f"{w.host}:{w.transfer_port}",
                    "cores_total": w.total.cores, "cores_inuse": used[0],
                    "memory_total": w.total.memory, "memory_inuse": used[1],
                    "disk_total": w.total.disk, "disk_inuse": used[2],
                    "gpus_total": w.total.gpus, "gpus_inuse": used[3],
                    "tasks_running": len(w.running), "features": sorted(w.features),
                })
            return out
        return self._ask(rows)  # type: ignore[no-any-return]

    @property
    def workers_connected(self) -> int:
        return int(self._ask(lambda: len(self._state.workers)))

    def summarize_workers(self) -> list[dict[str, int]]:
        """TaskVine's worker summary: one row per distinct (cores, memory, disk, gpus),
        with how many workers have it."""
        groups: dict[tuple[int, int, int, int], int] = {}
        for w in self.worker_stats():
            key = (w["cores"], w["memory"], w["disk"], w["gpus"])
            groups[key] = groups.get(key, 0) + 1
        return [{"workers": n, "cores": c, "memory": m, "disk": d, "gpus": g}
                for (c, m, d, g), n in sorted(groups.items())]

    # ------------------------------------------------------------------ status
    def status(self, request: str = "workers") -> list[dict[str, Any]]:
        """TaskVine's ``status``: "manager" (one row: the project, its address and the
        stats), "tasks" (every task the manager holds), "workers" (every connected worker)
        or "categories" (task counts and limits per category)."""
        if request == "workers":
            return self.worker_stats()
        if request == "manager":
            return [self._manager_row()]
        if request == "tasks":
            return self._ask(self._task_rows)  # type: ignore[no-any-return]
        if request == "categories":
            return self._ask(self._category_rows)  # type: ignore[no-any-return]
        raise ValueError(f"unknown status {request!r}; use 'manager', 'tasks', 'workers' or "
                         "'categories'")

    def _manager_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "type": "vine_manager", "project": self.name or "", "port": self.port,
            "starttime": int(self._started * 1e6), "working_dir": os.getcwd(),
            "owner": getpass.getuser(), "version": _version(),
            "runtime_directory": self._run.runtime,
        }
        row.update(self.stats.as_dict())
        row.update(self._properties)
        return row

    def _task_rows(self) -> list[dict[str, Any]]:
        out = []
        for tid, t in self._state.tasks.items():
            s = t.spec
            a = t.run.alloc
            out.append({
                "task_id": tid, "state": t.state.value, "worker": t.worker or "",
                "attempt": t.attempt, "category": s.category, "recovery": t.run.recovery,
                "message": t.message, "command": s.command, "tag": s.tag or "",
                "taskvine_state": STATE_NAMES[VINE_TASK_STATE[t.state]],
                "cores": a.cores if a else s.cores, "memory": a.memory if a else s.memory,
                "disk": a.disk if a else s.disk, "gpus": a.gpus if a else s.gpus,
            })
        return out

    def _category_rows(self) -> list[dict[str, Any]]:
        from ..core.fast import T
        cats: dict[str, dict[str, Any]] = {}
        for t in self._state.tasks.values():
            c = cats.setdefault(t.spec.category, {"category": t.spec.category,
                                                  "tasks_waiting": 0, "tasks_running": 0,
                                                  "tasks_done": 0})
            if t.state in (T.WAITING, T.READY, T.STAGING):
                c["tasks_waiting"] += 1
            elif t.state is T.RUNNING:
                c["tasks_running"] += 1
            elif t.state in (T.RETRIEVED, T.DONE):
                c["tasks_done"] += 1
        for name, lim in self._state.limits.items():
            if not name:
                continue
            c = cats.setdefault(name, {"category": name, "tasks_waiting": 0,
                                       "tasks_running": 0, "tasks_done": 0})
            for which, vals in lim.items():
                for r, v in zip(("cores", "memory", "disk", "gpus"), vals):
                    if v is not None:
                        c[f"{which}_{r}"] = v
        return sorted(cats.values(), key=lambda r: r["category"])

    def application_info(self) -> dict[str, Any] | None:
        """What an application wants shown beside the manager's status (override it)."""
        return None

    # ------------------------------------------------------------------ directories, logs
    @property
    def runtime_directory(self) -> str:
        """This run's directory (``<run_info_path>/<stamp>``)."""
        return self._run.runtime

    @property
    def logging_directory(self) -> str:
        """``<runtime_directory>/vine-logs`` (transactions, debug)."""
        return self._run.logs

    @property
    def staging_directory(self) -> str:
        """Where buffers, fetched and checkpointed files are kept (removed at close)."""
        return self._run.staging

    @property
    def library_logging_directory(self) -> str:
        return self._run.library_logs

    @property
    def cache_directory(self) -> str:
        """``<run_info_path>/vine-cache``, shared by every run."""
        return self._run.cache

    @property
    def using_ssl(self) -> bool:
        """True when the manager speaks TLS (``Manager(ssl=...)``)."""
        return self._server.tls is not None

    def log_txn_app(self, entry: str) -> None:
        """Write ``APPLICATION <entry>`` to the transaction log."""
        self._txn.write("APPLICATION", (str(entry),))

    def log_debug_app(self, entry: str) -> None:
        """Write a line to the debug log (``vine-logs/debug``)."""
        with open(self._run.debug, "a") as f:
            f.write(f"{time.strftime('%Y/%m/%d %H:%M:%S')} APPLICATION {entry}\n")

    def task_story(self, t: Task | int) -> list[str]:
        """A task's history: every state change with its time and cause (stimulus id),
        including recovery runs made after it was returned."""
        task_id = t if isinstance(t, int) else t.id
        rows = self._ask(lambda: self._state.task_story(task_id))
        if not rows and not isinstance(t, int):
            rows = list(t._story)
        return [f"{when:.3f} {old or '-'} -> {new} [{why}]" for when, old, new, why in rows]
