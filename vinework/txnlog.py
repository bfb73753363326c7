"""The transaction log, in TaskVine's format, so TaskVine's log tools can read a vinework run.

Every line is ``TIME MANAGER_PID SUBJECT ...`` (TIME: microseconds since the Unix
epoch), after a header of ``#`` lines that document the records, as TaskVine writes
it (its manual, "Transactions Log Format"):

    MANAGER pid START|END time_from_origin_us
    WORKER worker_id CONNECTION host:port
    WORKER worker_id DISCONNECTION (UNKNOWN|IDLE_OUT|FAST_ABORT|FAILURE|STATUS_WORKER|EXPLICIT)
    WORKER worker_id RESOURCES {resources}
    WORKER worker_id CACHE_UPDATE filename size wall_time_us start_time_us
    WORKER worker_id TRANSFER (INPUT|OUTPUT) filename size wall_time_us start_time_us
    TASK task_id WAITING category (FIRST_RESOURCES|MAX_RESOURCES) attempt {requested}
    TASK task_id RUNNING worker_id (FIRST_RESOURCES|MAX_RESOURCES) {allocated}
    TASK task_id WAITING_RETRIEVAL worker_id
    TASK task_id RETRIEVED RESULT exit_code {limits_exceeded} {measured}
    TASK task_id DONE RESULT exit_code
    APPLICATION message

JSON values are written without spaces and resources as ``[value,"unit"]``, as
TaskVine does. Sizes are bytes (TaskVine's header says MB, its code writes bytes and
its tools divide by 10^6). vinework's states map onto TaskVine's (WAITING and READY
are TaskVine's WAITING, STAGING and RUNNING its RUNNING); a task's RUNNING line is
written when it is placed on a worker, as TaskVine does at dispatch. A transfer
worker->worker or from a URL is a CACHE_UPDATE of the receiving worker, from the
manager a TRANSFER INPUT, back to the manager a TRANSFER OUTPUT. Workers still
connected when the manager closes get a DISCONNECTION EXPLICIT before MANAGER END.
TaskVine's lines name worker ``w1`` ``worker-w1``: TaskVine's worker ids start with
``worker-`` and its plotting tool skips the others.

vinework's own records, all of them and with everything they say, follow as
``TIME PID VINEWORK KIND FIELD...`` lines, a subject TaskVine's tools do not know and
skip:

    VINEWORK MANAGER START|END name | TUNE name value | HINT text | ERROR stimulus event
             | BLOCK host until | UNBLOCK host
    VINEWORK WORKER worker_id CONNECTION host cores memory_mb disk_mb
             | DISCONNECTION reason | DRAINING reason | DRAINED - | REFUSED why
    VINEWORK WORKER - REJECTED host why
    VINEWORK TASK task_id STATE worker attempt [detail]
             STATE: INITIAL, WAITING, READY, STAGING, RUNNING, WAITING_RETRIEVAL,
             RETRIEVED, DONE, or a marker: SUBMITTED, RETRY, FORSAKEN, RECOVERY (a
             finished task runs again to remake a lost temp), UNPLACEABLE, TAKEN_BACK
    VINEWORK TRANSFER file START|DONE|FAILED|QUEUED source dest ...
             (DONE: bytes seconds; source and dest are worker ids, "manager" or a URL)
    VINEWORK FILE file LOST|UNAVAILABLE|UNDECLARED|PRUNED|REPLICATE|CHECKPOINT|... detail
    VINEWORK DURABILITY file decision numbers
    VINEWORK LIBRARY name INSTALLED|REMOVED|WAITING|SENT|STARTED|STOPPED|ENDED|FAILURE ...
             (not TaskVine's LIBRARY lines: its library id is a task id, an instance's
             is not)

``read_log`` gives these back as (time, kind, fields). Writes are buffered and
flushed at least once a second and at close; the performance log
(``observe/perflog.py``) is written beside it from the same calls.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from .constants import TaskResult

if TYPE_CHECKING:
    from .core.events import TaskReturned
    from .core.state import ManagerState
    from .observe.perflog import PerfLog

log = logging.getLogger("vinework.txnlog")

HEADER = (
    "# time manager_pid MANAGER manager_pid START|END time_from_origin\n"
    "# time manager_pid WORKER worker_id CONNECTION host:port\n"
    "# time manager_pid WORKER worker_id DISCONNECTION "
    "(UNKNOWN|IDLE_OUT|FAST_ABORT|FAILURE|STATUS_WORKER|EXPLICIT)\n"
    "# time manager_pid WORKER worker_id RESOURCES {resources}\n"
    "# time manager_pid WORKER worker_id CACHE_UPDATE filename size_in_bytes wall_time_us "
    "start_time_us\n"
    "# time manager_pid WORKER worker_id TRANSFER (INPUT|OUTPUT) filename size_in_bytes "
    "wall_time_us start_time_us\n"
    "# time manager_pid TASK task_id WAITING category_name (FIRST_RESOURCES|MAX_RESOURCES) "
    "attempt_number {resources_requested}\n"
    "# time manager_pid TASK task_id RUNNING worker_id (FIRST_RESOURCES|MAX_RESOURCES) "
    "{resources_allocated}\n"
    "# time manager_pid TASK task_id WAITING_RETRIEVAL worker_id\n"
    "# time manager_pid TASK task_id RETRIEVED (SUCCESS|UNKNOWN|INPUT_MISSING|OUTPUT_MISSING|"
    "STDOUT_MISSING|SIGNAL|RESOURCE_EXHAUSTION|MAX_RETRIES|MAX_END_TIME|MAX_WALL_TIME|"
    "FORSAKEN|...) exit_code {limits_exceeded} {resources_measured}\n"
    "# time manager_pid TASK task_id DONE (SUCCESS|UNKNOWN|...) exit_code\n"
    "# time manager_pid APPLICATION message\n"
    "# time manager_pid VINEWORK kind fields... (vinework's own records: see docs/logs.md)\n"
    "\n"
)

# vinework's task states -> TaskVine's (as in core/transitions.VINE_TASK_STATE)
TV_STATE = {
    "WAITING": "WAITING", "READY": "WAITING", "STAGING": "RUNNING", "RUNNING": "RUNNING",
    "WAITING_RETRIEVAL": "WAITING_RETRIEVAL", "RETRIEVED": "RETRIEVED", "DONE": "DONE",
}
DISCONNECT_CODES = ("UNKNOWN", "IDLE_OUT", "FAST_ABORT", "FAILURE", "STATUS_WORKER", "EXPLICIT")
_UNITS = (("cores", "cores"), ("memory", "MB"), ("disk", "MB"), ("gpus", "gpus"))


@functools.lru_cache(maxsize=4096)
def _res_json(values: tuple[int | None, ...]) -> str:
    """TaskVine's resources JSON (``{"cores":[1,"cores"],...}``, no spaces) of
    (cores, memory, disk, gpus), leaving out those not set."""
    return "{" + ",".join(f'"{n}":[{v},"{u}"]' for (n, u), v in zip(_UNITS, values, strict=True)
                          if v is not None and v >= 0) + "}"


@functools.lru_cache(maxsize=4096)
def _alloc_parts(values: tuple[int | None, ...]) -> tuple[tuple[str, str], ...]:
    """(name, ``"name":[v,"unit"]``) of the allocated (cores, memory, disk, gpus) set."""
    return tuple((n, f'"{n}":[{v},"{u}"]') for (n, u), v in zip(_UNITS, values, strict=True)
                 if v is not None and v >= 0)


_RESULT_NAMES = {int(r): r.name for r in TaskResult}


def _resources(obj: Any) -> str:
    """The resources JSON of a TaskSpec's or a Resources' values (``{}`` for None)."""
    if obj is None:
        return "{}"
    return _res_json((obj.cores, obj.memory, obj.disk, obj.gpus))


def disconnect_code(reason: str, drained: bool = False) -> str:
    """TaskVine's DISCONNECTION code for one of vinework's free-text reasons."""
    r = reason.lower()
    if "idle" in r:
        return "IDLE_OUT"
    if "fast abort" in r or "slow" in r:
        return "FAST_ABORT"
    if drained or any(w in r for w in ("released", "drain", "shutdown", "blocked", "closing")):
        return "EXPLICIT"
    if "status" in r:
        return "STATUS_WORKER"
    return "FAILURE" if r else "UNKNOWN"


class TxnLog:
    """An append-only, buffered transaction log file in TaskVine's format (and the
    performance log beside it once ``attach`` gives it the manager's state)."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self.perf_path = os.path.join(os.path.dirname(path) or ".", "performance")
        self._f: io.TextIOWrapper | None = open(path, "a", buffering=1 << 16)  # noqa: SIM115
        self._f.write(HEADER)
        self._pid = os.getpid()
        self._start_us = self._when = int(time.time() * 1e6)
        self._head_at, self._head = 0, ""
        self._last_flush = time.monotonic()
        self._state: ManagerState | None = None
        self._perf: PerfLog | None = None
        # per task: (TaskVine state last written, result name, exit code, attempts)
        self._tasks: dict[int, tuple[str, str, int, int]] = {}
        self._connected: set[str] = set()
        self._drained: set[str] = set()

    def attach(self, state: ManagerState) -> None:
        """Read tasks and workers from ``state`` for TaskVine's fields, and start the
        performance log (called once, by the manager's server)."""
        from .observe.perflog import PerfLog

        self._state = state
        if self._perf is None and self._f is not None:
            self._perf = PerfLog(self.perf_path)
            self._perf.write(state.stats_snapshot, force=True)

    # ------------------------------------------------------------------ writing
    def write(self, kind: str, fields: tuple[object, ...], when_us: int = 0) -> None:
        """Append one of vinework's records (``when_us``: its time, microseconds since
        the epoch; now if 0): TaskVine's lines for it, then its VINEWORK line."""
        f = self._f
        if f is None:
            return
        when = self._when = when_us or int(time.time() * 1e6)
        if when != self._head_at:  # (the records of one event share a time)
            self._head_at, self._head = when, f"{when} {self._pid} "
        head = self._head
        rest = " ".join(map(str, fields))
        if "\n" in rest:
            rest = rest.replace("\n", " ")
        if kind == "APPLICATION":  # TaskVine's own record (log_txn_app)
            f.write(f"{head}APPLICATION {rest}\n")
            return
        try:
            tv = self._task(fields) if kind == "TASK" else self._taskvine(kind, fields, when)
        except Exception as e:  # never lose the record itself for a translation bug
            tv = [f"VINEWORK LOGERROR {kind} {type(e).__name__}: {str(e)[:200]}"]
        if tv:
            f.write("".join([f"{head}{line}\n" for line in tv]))
        f.write(f"{head}VINEWORK {kind} {rest}\n")

    def _taskvine(self, kind: str, fields: tuple[object, ...], when: int) -> list[str]:
        if kind == "TASK":
            return self._task(fields)
        if kind == "TRANSFER":
            return self._transfer(fields, when)
        if kind == "WORKER":
            return self._worker(fields)
        if kind == "MANAGER" and fields:
            if fields[0] == "START":
                return [f"MANAGER {self._pid} START 0"]
            if fields[0] == "END":
                out = [f"WORKER worker-{w} DISCONNECTION EXPLICIT" for w in sorted(self._connected)]
                self._connected.clear()
                return [*out, f"MANAGER {self._pid} END {max(0, when - self._start_us)}"]
        return []

    def _worker(self, f: tuple[object, ...]) -> list[str]:
        wid, event = str(f[0]), f[1] if len(f) > 1 else ""
        if event == "CONNECTION":
            host = f[2] if len(f) > 2 else "-"
            w = self._state.workers.get(wid) if self._state is not None else None
            port = w.transfer_port if w is not None else 0
            self._connected.add(wid)
            res = _res_json((f[3], f[4], f[5], None)) \
                if len(f) >= 6 else "{}"  # type: ignore[arg-type]
            return [f"WORKER worker-{wid} CONNECTION {host}:{port}",
                    f"WORKER worker-{wid} RESOURCES {res}"]
        if event == "DISCONNECTION" and wid in self._connected:
            self._connected.discard(wid)
            code = disconnect_code(str(f[2]) if len(f) > 2 else "", wid in self._drained)
            self._drained.discard(wid)
            return [f"WORKER worker-{wid} DISCONNECTION {code}"]
        if event == "DRAINED":
            self._drained.add(wid)
        return []

    def _transfer(self, f: tuple[object, ...], when: int) -> list[str]:
        if len(f) < 6 or f[1] != "DONE":
            return []
        name, src, dest, size = f[0], str(f[2]), str(f[3]), f[4]
        wall = int(float(f[5]) * 1e6)  # type: ignore[arg-type]
        tail = f"{name} {size} {wall} {when - wall}"
        if src == "manager":
            return [f"WORKER worker-{dest} TRANSFER INPUT {tail}"]
        if dest == "manager":
            return [f"WORKER worker-{src} TRANSFER OUTPUT {tail}"]
        return [f"WORKER worker-{dest} CACHE_UPDATE {tail}"]  # from a peer or a URL

    def _task(self, f: tuple[object, ...]) -> list[str]:
        tid: int = f[0]  # type: ignore[assignment]
        tv = TV_STATE.get(f[1])  # type: ignore[call-overload]
        if tv is None:
            return []  # a marker: only the VINEWORK line
        last = self._tasks.get(tid)
        if last is not None and last[0] == tv:
            return []
        t = self._state.tasks.get(tid) if self._state is not None else None
        out: list[str] = []
        if last is None and tv != "WAITING":
            out.append(self._waiting(tid, t, 0))  # every task is WAITING first
            last = self._tasks[tid]
        attempts = last[3] if last is not None else 0
        if tv == "WAITING":
            if last is None and t is not None:  # (a recovery after DONE: its runs so far)
                attempts = max(0, len(t.runs) - 1)
            out.append(self._waiting(tid, t, attempts))
            return out
        if tv == "DONE" and last is not None and last[0] != "RETRIEVED":
            out.append(self._retrieved(tid, t, None, attempts))  # (a recovery's return)
        if tv == "RUNNING":
            alloc = t.run.alloc if t is not None and t.runs else None
            out.append(f"TASK {tid} RUNNING worker-{f[2]} FIRST_RESOURCES {_resources(alloc)}")
        elif tv == "WAITING_RETRIEVAL":
            out.append(f"TASK {tid} WAITING_RETRIEVAL worker-{f[2]}")
        elif tv == "RETRIEVED":
            if t is not None and t.runs and t.run.recovery:
                out.append(self._retrieved(tid, t, None, attempts))
            else:  # written by ``returned``, which has what the run measured
                self._tasks[tid] = ("RETRIEVING", "UNKNOWN", -1, attempts)
            return out
        else:  # DONE
            if tid in self._tasks and self._tasks[tid][0] == "RETRIEVING":
                out.append(self._retrieved(tid, t, None, attempts))
            _, result, code, _ = self._tasks.pop(tid, ("", "UNKNOWN", -1, 0))
            if t is not None and t.result.name != "UNKNOWN":
                result, code = t.result.name, t.exit_code
            out.append(f"TASK {tid} DONE {result} {code}")
            return out
        prev = self._tasks.get(tid)
        self._tasks[tid] = (tv, *prev[1:]) if prev is not None else (tv, "UNKNOWN", -1, attempts)
        return out

    def _waiting(self, tid: int, t: Any, attempts: int) -> str:
        self._tasks[tid] = ("WAITING", "UNKNOWN", -1, attempts + 1)
        if t is None:
            return f"TASK {tid} WAITING default FIRST_RESOURCES {attempts + 1} {{}}"
        return (f"TASK {tid} WAITING {t.spec.category.replace(' ', '_') or 'default'} "
                f"FIRST_RESOURCES {attempts + 1} {_resources(t.spec)}")

    def _retrieved(self, tid: int, t: Any, c: TaskReturned | None, attempts: int) -> str:
        """A RETRIEVED line, with what ``c`` (the task handed back) says was measured."""
        measured = "{}"
        if c is not None:
            result = _RESULT_NAMES.get(c.result) or TaskResult(c.result).name
            code = c.exit_code
            m = c.measured
            mem = round(m[2]) if m and len(m) > 2 else None
            out: list[str] = []  # measured over allocated, in TaskVine's order
            if len(c.allocated) == 4:
                for n, part in _alloc_parts(tuple(c.allocated)):
                    if n == "memory" and mem is not None:
                        out.append(f'"memory":[{mem},"MB"]')
                        mem = None
                    else:
                        out.append(part)
            if m:
                out.append(f'"wall_time":[{m[0]:.6f},"s"]')
                if len(m) > 2:
                    out.append(f'"cpu_time":[{m[1]:.6f},"s"]')
                    if mem is not None:
                        out.append(f'"memory":[{mem},"MB"]')
            if c.start > 0:
                out.append(f'"time_worker_start":[{c.start:.6f},"s"],'
                           f'"time_worker_end":[{c.end:.6f},"s"]')
            measured = "{" + ",".join(out) + "}"
        elif t is not None:
            result, code = t.result.name, t.exit_code
            measured = _resources(t.last_alloc)
        else:
            result, code = "UNKNOWN", -1
        self._tasks[tid] = ("RETRIEVED", result, code, attempts)
        return f"TASK {tid} RETRIEVED {result} {code} {{}} {measured}"

    def returned(self, c: TaskReturned) -> None:
        """A task handed back to the API: its TaskVine RETRIEVED line (the core's
        RETRIEVED record came just before, in the same batch)."""
        f = self._f
        last = self._tasks.get(c.task_id)
        if f is None or last is None or last[0] != "RETRIEVING":
            return
        try:
            line = self._retrieved(c.task_id, None, c, last[3])
        except Exception as e:  # (a result number vinework does not know, ...)
            self._tasks.pop(c.task_id, None)
            line = f"VINEWORK LOGERROR RETRIEVED {type(e).__name__}: {str(e)[:200]}"
        f.write(f"{self._when} {self._pid} {line}\n")  # (the batch's time)

    # ------------------------------------------------------------------ flushing
    def maybe_flush(self) -> None:
        """Flush if a second has passed, and write a performance row if one is due
        (called from the manager's loop every tick, twice a second)."""
        now = time.monotonic()
        if self._f is not None and now - self._last_flush > 1.0:
            self._f.flush()
            self._last_flush = now
        if self._perf is not None and self._state is not None:
            try:
                self._perf.interval = self._state.tune.perf_log_interval
                self._perf.write(self._state.stats_snapshot)
            except Exception:  # the loop's tick must go on; say it once and stop the log
                log.exception("performance log stopped")
                self._perf.close()
                self._perf = None

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()
        if self._perf is not None:
            self._perf.flush()

    def close(self) -> None:
        if self._perf is not None:
            if self._state is not None:
                self._perf.write(self._state.stats_snapshot, force=True)
            self._perf.close()
            self._perf = None
        if self._f is not None:
            self._f.close()
            self._f = None


def read_log(path: str) -> list[tuple[int, str, list[str]]]:
    """vinework's records of a transaction log: (time_us, kind, fields) of its
    VINEWORK and APPLICATION lines (TaskVine's lines: ``observe.txnparse``)."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split(" ")
            if len(parts) < 3 or not parts[0].isdigit():
                continue
            if parts[2] == "VINEWORK" and len(parts) >= 4:
                out.append((int(parts[0]), parts[3], parts[4:]))
            elif parts[2] == "APPLICATION":
                out.append((int(parts[0]), "APPLICATION", parts[3:]))
    return out
