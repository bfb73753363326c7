"""The manager's status as one JSON-able dict, built on the loop thread.

``status_snapshot(state, stats, manager)`` reads the core (``ManagerState``)
and returns plain dicts, lists, strings and numbers: the manager's identity
and ``stats`` (TaskVine's ``vine_stats`` names and vinework's counters), one
row per worker, tasks by state and by category, files by where they live,
recoveries, and the transfers in flight. It must run on the thread that owns
the core (the manager's loop thread); it changes nothing and does no I/O. The
work is one pass over the tasks and one over the files, so it stays cheap
enough to answer status queries, the dashboard and metrics scrapes on the
loop without stalling it (the lists it returns are capped at ``MAX_ROWS``).

``manager_snapshot(m)`` is the same for a ``Manager``: it fills in the
manager's own counters (control bytes, tasks failed without the core) as
``m.stats`` does. Consumers: status queries on the manager's port
(``manager/server.py``), ``vinework status`` (``status_cli.py``), the metrics
endpoint (``metrics.py``) and the dashboard.
"""

from __future__ import annotations

import json
import time
import weakref
from typing import TYPE_CHECKING, Any

from ..constants import TaskResult
from ..core import ManagerState, ManagerStats
from ..core.records import TaskState
from ..core.replicas import MANAGER, ReplicaState

if TYPE_CHECKING:
    from ..manager.info import InfoMethods as Manager

SCHEMA = 1  # version of the dict's layout (bumped when a key changes meaning)
MAX_ROWS = 1000  # at most this many workers / transfers are listed (counts stay exact)
CATEGORY_SCAN_FREE = 5000  # tasks held up to which categories are counted at every call
CATEGORY_EVERY = 1.0  # seconds between category counts above that
_category_cache: weakref.WeakKeyDictionary[ManagerState, tuple[float, list[dict[str, Any]]]] \
    = weakref.WeakKeyDictionary()  # state -> (when, category rows)

# TaskVine's coarse task states, from vinework's finer ones
WAITING_STATES = (TaskState.INITIAL, TaskState.WAITING, TaskState.READY)
RUNNING_STATES = (TaskState.STAGING, TaskState.RUNNING, TaskState.WAITING_RETRIEVAL)
FINISHED_STATES = (TaskState.RETRIEVED, TaskState.DONE)


def _worker_rows(state: ManagerState) -> list[dict[str, Any]]:
    rows = []
    for w in list(state.workers.values())[:MAX_ROWS]:
        rows.append({
            "worker_id": w.worker_id, "hostname": w.hostname,
            "address": f"{w.host}:{w.transfer_port}",
            "cores_total": w.total.cores, "cores_inuse": w.total.cores - w.free.cores,
            "memory_total": w.total.memory, "memory_inuse": w.total.memory - w.free.memory,
            "disk_total": w.total.disk, "disk_inuse": w.total.disk - w.free.disk,
            "gpus_total": w.total.gpus, "gpus_inuse": w.total.gpus - w.free.gpus,
            "cache_bytes": w.disk_used, "files": len(state.replicas.files_on(w.worker_id)),
            "tasks_running": len(w.running), "tasks_done": w.tasks_done,
            "bytes_in": w.bytes_in, "bytes_out": w.bytes_out,
            "draining": w.draining,
        })
    return rows


def _task_counts(state: ManagerState) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Tasks by state (the core's own counts: exact and free) and by category (one pass
    over the tasks; with more than ``CATEGORY_SCAN_FREE`` tasks the pass is redone at
    most every ``CATEGORY_EVERY`` seconds, so the categories may lag that much)."""
    counts = state._counts
    by_state = {s.value: counts[s] for s in TaskState}
    tasks = state.tasks
    now = time.monotonic()
    cached = _category_cache.get(state)
    if len(tasks) > CATEGORY_SCAN_FREE and cached is not None and \
            now - cached[0] < CATEGORY_EVERY:
        return by_state, cached[1]
    # per category: [waiting, running, finished, failed]
    cats: dict[str, list[int]] = {}
    slot = {s: 0 for s in WAITING_STATES}
    slot.update({s: 1 for s in RUNNING_STATES})
    slot.update({s: 2 for s in FINISHED_STATES})
    success = TaskResult.SUCCESS
    for t in tasks.values():
        c = cats.get(t.spec.category)
        if c is None:
            c = cats[t.spec.category] = [0, 0, 0, 0]
        i = slot[t.state]
        c[i] += 1
        if i == 2 and t.result is not success:
            c[3] += 1
    rows = [{"category": k, "waiting": v[0], "running": v[1], "finished": v[2],
             "failed": v[3]} for k, v in sorted(cats.items(), key=lambda kv: str(kv[0]))]
    if len(tasks) > CATEGORY_SCAN_FREE:
        _category_cache[state] = (now, rows)
    return by_state, rows


def _file_counts(state: ManagerState) -> dict[str, dict[str, int]]:
    """Files by where they live: "manager" (declared there: local files, buffers, URLs'
    copies), "checkpointed" (made by a task, now also at the manager), "workers_only"
    (made by a task, copies on workers only), "nowhere" (not made yet, or lost)."""
    out = {k: {"files": 0, "bytes": 0}
           for k in ("manager", "checkpointed", "workers_only", "nowhere")}
    where = state.replicas.where
    for name, f in state.files.items():
        if f.at_manager:
            key = "checkpointed" if f.producer is not None else "manager"
        elif any(s is ReplicaState.READY for s in where.get(name, {}).values()):
            key = "workers_only"
        else:
            key = "nowhere"
        out[key]["files"] += 1
        out[key]["bytes"] += max(f.size, 0)
    return out


def _transfers(state: ManagerState, now: float) -> dict[str, Any]:
    trs = list(state.replicas.transfers.values())
    rows = [{"name": t.name, "source": t.source, "dest": t.dest,
             "seconds": round(max(now - t.started, 0.0), 3), "replication": t.replication}
            for t in trs[:MAX_ROWS]]
    retrievals = list(getattr(state, "_retrievals", {}).values())
    return {
        "in_flight": len(trs),
        "peer": sum(1 for t in trs if t.source != MANAGER and "://" not in t.source),
        "from_manager": sum(1 for t in trs if t.source == MANAGER),
        "from_url": sum(1 for t in trs if "://" in t.source),
        "to_manager": len(retrievals),
        "rows": rows,
    }


def status_snapshot(state: ManagerState, stats: ManagerStats | None = None,
                    manager: dict[str, Any] | None = None,
                    now: float | None = None) -> dict[str, Any]:
    """The whole status as a JSON-able dict (loop thread only; see the module docstring).

    Args:
        state: the manager's core.
        stats: the counters to report (default: ``state.stats_snapshot()``).
        manager: identity fields to report under "manager" (name, port, ...).
        now: the core's clock (``time.monotonic()``), for the transfers' ages.
    """
    st = stats if stats is not None else state.stats_snapshot()
    by_state, categories = _task_counts(state)
    d = st.as_dict()
    return {
        "schema": SCHEMA,
        "time": time.time(),
        "manager": dict(manager or {}),
        "stats": d,
        "workers": _worker_rows(state),
        "tasks": {"by_state": by_state, "categories": categories,
                  "waiting": sum(by_state[s.value] for s in WAITING_STATES),
                  "running": sum(by_state[s.value] for s in RUNNING_STATES),
                  "done": st.tasks_done, "failed": st.tasks_failed},
        "files": _file_counts(state),
        "recoveries": {"tasks_recovery": st.tasks_recovery, "files_lost": st.files_lost,
                       "recovery_seconds": st.recovery_seconds,
                       "recovering_now": len(state.durability.recovering)},
        "transfers": _transfers(state, time.monotonic() if now is None else now),
    }


def manager_snapshot(m: Manager) -> dict[str, Any]:
    """``status_snapshot`` for a Manager, with its own counters in ``stats`` (as
    ``m.stats``). Loop thread only (``m._ask(lambda: manager_snapshot(m))`` elsewhere)."""
    st = m._stats_now()
    ident = {"name": m.name or "", "port": m.port, "started": m._started,
             "password": m._server.password is not None,
             "ssl": m._server.tls is not None}
    return status_snapshot(m._state, st, ident)


SECTIONS = ("manager", "stats", "workers", "tasks", "files", "recoveries", "transfers")


def status_json(m: Manager, what: str) -> str:
    """A status query's answer (loop thread): "all" (the whole snapshot) or one of
    ``SECTIONS`` (that part, beside "schema" and "time"), as JSON.

    Raises:
        ValueError: ``what`` is none of these.
    """
    if what != "all" and what not in SECTIONS:
        raise ValueError(f"unknown status {what[:40]!r}; ask for 'all' or one of "
                         f"{', '.join(SECTIONS)}")
    snap = manager_snapshot(m)
    if what != "all":
        snap = {"schema": snap["schema"], "time": snap["time"], what: snap[what]}
    return json.dumps(snap, separators=(",", ":"))
