"""Reading a TaskVine-format transaction log (``vinework/txnlog.py`` writes one) into
records, checked against the documented grammar, and into a run: tasks' runs on
workers, workers' lifetimes, bytes moved by path, recoveries.

``parse_line`` and ``parse_file`` raise ``TxnFormatError`` (with the line number) for
a line that does not follow the format; ``Run.from_records`` builds what the plots
draw. vinework's own VINEWORK lines are parsed too (their fields are kept as words).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

RESULTS = frozenset({
    "SUCCESS", "INPUT_MISSING", "OUTPUT_MISSING", "STDOUT_MISSING", "SIGNAL",
    "RESOURCE_EXHAUSTION", "MAX_END_TIME", "UNKNOWN", "FORSAKEN", "MAX_RETRIES",
    "MAX_WALL_TIME", "RMONITOR_ERROR", "MONITOR_ERROR", "OUTPUT_TRANSFER_ERROR",
    "FIXED_LOCATION_MISSING", "CANCELLED", "LIBRARY_EXIT", "SANDBOX_EXHAUSTION",
    "MISSING_LIBRARY", "WORKER_DISCONNECT", "DISK_EXHAUSTION",
})
DISCONNECT_CODES = frozenset({"UNKNOWN", "IDLE_OUT", "FAST_ABORT", "FAILURE",
                              "STATUS_WORKER", "EXPLICIT"})
ALLOCATIONS = frozenset({"FIRST_RESOURCES", "MAX_RESOURCES"})


class TxnFormatError(ValueError):
    """A transaction-log line that does not follow TaskVine's format."""


@dataclass(slots=True)
class Record:
    """One line: its time (µs), the manager's pid, the subject (MANAGER, WORKER, TASK,
    CATEGORY, LIBRARY, APPLICATION, VINEWORK), its target (a worker or task id, ...),
    the event word and what follows, parsed (JSON values decoded)."""

    time_us: int
    pid: int
    subject: str
    target: str
    event: str
    args: list[Any] = field(default_factory=list)


def _json(word: str, where: str) -> dict[str, Any]:
    try:
        v = json.loads(word)
    except ValueError as e:
        raise TxnFormatError(f"{where}: not JSON: {word[:80]!r}") from e
    if not isinstance(v, dict):
        raise TxnFormatError(f"{where}: not a JSON object: {word[:80]!r}")
    return v


def _int(word: str, where: str) -> int:
    try:
        return int(word)
    except ValueError as e:
        raise TxnFormatError(f"{where}: not an integer: {word!r}") from e


def _need(words: list[str], n: int, where: str, form: str) -> None:
    if len(words) != n:
        raise TxnFormatError(f"{where}: expected {form}, got {' '.join(words)[:200]!r}")


def parse_line(line: str, lineno: int = 0) -> Record | None:
    """One line as a Record (None for comments and blank lines)."""
    line = line.rstrip("\n")
    if not line.strip() or line.startswith("#"):
        return None
    where = f"line {lineno}"
    words = line.split()
    if len(words) < 3:
        raise TxnFormatError(f"{where}: too short: {line[:200]!r}")
    t, pid, subject = _int(words[0], where), _int(words[1], where), words[2]
    rest = words[3:]
    if subject == "APPLICATION":
        return Record(t, pid, subject, "", "", [line.split(" ", 3)[3] if rest else ""])
    if subject == "VINEWORK":
        if len(rest) < 2:
            raise TxnFormatError(f"{where}: VINEWORK needs a kind and fields")
        return Record(t, pid, subject, rest[0], rest[1] if len(rest) > 1 else "", rest[2:])
    if len(rest) < 2:
        raise TxnFormatError(f"{where}: {subject} needs a target and an event")
    target, event, a = rest[0], rest[1], rest[2:]
    if subject == "MANAGER":
        _int(target, where)
        if event not in ("START", "END"):
            raise TxnFormatError(f"{where}: MANAGER event {event!r}")
        _need(a, 1, where, "MANAGER pid START|END time_from_origin")
        return Record(t, pid, subject, target, event, [_int(a[0], where)])
    if subject == "WORKER":
        return Record(t, pid, subject, target, event, _worker_args(event, a, where))
    if subject == "TASK":
        _int(target, where)
        return Record(t, pid, subject, target, event, _task_args(event, a, where))
    if subject == "CATEGORY":
        return Record(t, pid, subject, target, event, a)
    if subject == "LIBRARY":
        _need(a, 1, where, "LIBRARY id (WAITING|SENT|STARTED|FAILURE) worker")
        return Record(t, pid, subject, target, event, a)
    raise TxnFormatError(f"{where}: unknown subject {subject!r}")


def _worker_args(event: str, a: list[str], where: str) -> list[Any]:
    if event == "CONNECTION":
        _need(a, 1, where, "WORKER id CONNECTION host:port")
        host, sep, port = a[0].rpartition(":")
        if not sep or not host:
            raise TxnFormatError(f"{where}: not host:port: {a[0]!r}")
        _int(port, where)
        return a
    if event == "DISCONNECTION":
        _need(a, 1, where, "WORKER id DISCONNECTION code")
        if a[0] not in DISCONNECT_CODES:
            raise TxnFormatError(f"{where}: disconnection code {a[0]!r}")
        return a
    if event == "RESOURCES":
        _need(a, 1, where, "WORKER id RESOURCES {json}")
        return [_json(a[0], where)]
    if event == "CACHE_UPDATE":
        _need(a, 4, where, "WORKER id CACHE_UPDATE file size wall_us start_us")
        return [a[0], float(a[1]), _int(a[2], where), _int(a[3], where)]
    if event == "TRANSFER":
        _need(a, 5, where, "WORKER id TRANSFER INPUT|OUTPUT file size wall_us start_us")
        if a[0] not in ("INPUT", "OUTPUT"):
            raise TxnFormatError(f"{where}: transfer direction {a[0]!r}")
        return [a[0], a[1], float(a[2]), _int(a[3], where), _int(a[4], where)]
    raise TxnFormatError(f"{where}: WORKER event {event!r}")


def _task_args(event: str, a: list[str], where: str) -> list[Any]:
    if event == "WAITING":
        _need(a, 4, where, "TASK id WAITING category allocation attempt {json}")
        if a[1] not in ALLOCATIONS:
            raise TxnFormatError(f"{where}: allocation {a[1]!r}")
        return [a[0], a[1], _int(a[2], where), _json(a[3], where)]
    if event == "RUNNING":
        _need(a, 3, where, "TASK id RUNNING worker allocation {json}")
        if a[1] not in ALLOCATIONS:
            raise TxnFormatError(f"{where}: allocation {a[1]!r}")
        return [a[0], a[1], _json(a[2], where)]
    if event == "WAITING_RETRIEVAL":
        _need(a, 1, where, "TASK id WAITING_RETRIEVAL worker")
        return a
    if event == "RETRIEVED":
        _need(a, 4, where, "TASK id RETRIEVED result exit_code {limits} {measured}")
        if a[0] not in RESULTS:
            raise TxnFormatError(f"{where}: result {a[0]!r}")
        return [a[0], _int(a[1], where), _json(a[2], where), _json(a[3], where)]
    if event == "DONE":
        _need(a, 2, where, "TASK id DONE result exit_code")
        if a[0] not in RESULTS:
            raise TxnFormatError(f"{where}: result {a[0]!r}")
        return [a[0], _int(a[1], where)]
    if event in ("CANCELED", "UNKNOWN"):
        return a
    raise TxnFormatError(f"{where}: TASK event {event!r}")


def parse_file(path: str) -> list[Record]:
    """Every record of a transaction log, in order (raises TxnFormatError)."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            r = parse_line(line, n)
            if r is not None:
                out.append(r)
    return out


# ---------------------------------------------------------------------- a run
@dataclass(slots=True)
class TaskRun:
    """One run of a task on a worker (seconds since the manager started)."""

    task_id: int
    attempt: int
    worker: str
    start: float
    end: float = -1.0
    result: str = ""


@dataclass(slots=True)
class Moved:
    """Bytes that arrived somewhere, by path: manager->worker, worker->manager,
    worker->worker or url->worker."""

    end: float
    start: float
    size: float
    path: str


@dataclass
class Run:
    """What a transaction log says happened, with times in seconds from MANAGER START."""

    start_us: int = 0
    end: float = 0.0
    runs: list[TaskRun] = field(default_factory=list)
    workers: dict[str, list[float]] = field(default_factory=dict)  # id -> [connect, leave]
    moved: list[Moved] = field(default_factory=list)
    recoveries: list[tuple[float, int]] = field(default_factory=list)  # (time, task id)
    lost: list[tuple[float, str]] = field(default_factory=list)  # (time, file)
    done: dict[int, str] = field(default_factory=dict)  # task id -> last DONE result

    @classmethod
    def from_records(cls, records: list[Record]) -> Run:
        run = cls()
        start = next((r.time_us for r in records if r.subject == "MANAGER"
                      and r.event == "START"), records[0].time_us if records else 0)
        run.start_us = start

        def s(us: int) -> float:
            return (us - start) / 1e6

        attempt: dict[int, int] = {}
        open_runs: dict[int, TaskRun] = {}
        last_run: dict[int, TaskRun] = {}
        peer_src: dict[tuple[str, str], str] = {}  # (file, dest) -> source (VINEWORK)
        for r in records:
            t = s(r.time_us)
            run.end = max(run.end, t)
            if r.subject == "TASK":
                tid = int(r.target)
                if r.event == "WAITING":
                    attempt[tid] = r.args[2]
                elif r.event == "RUNNING":
                    tr = TaskRun(tid, attempt.get(tid, 1), r.args[0], t)
                    open_runs[tid] = tr
                    run.runs.append(tr)
                    last_run[tid] = tr
                elif r.event in ("WAITING_RETRIEVAL", "RETRIEVED"):
                    if tid in open_runs:
                        open_runs.pop(tid).end = t
                    if r.event == "RETRIEVED" and tid in last_run and not last_run[tid].result:
                        last_run[tid].result = r.args[0]
                elif r.event == "DONE":
                    run.done[tid] = r.args[0]
            elif r.subject == "WORKER":
                if r.event == "CONNECTION":
                    run.workers[r.target] = [t, -1.0]
                elif r.event == "DISCONNECTION" and r.target in run.workers:
                    run.workers[r.target][1] = t
                    for tid, tr in list(open_runs.items()):
                        if tr.worker == r.target:
                            tr.end, tr.result = t, "LOST"
                            del open_runs[tid]
                elif r.event == "TRANSFER":
                    path = "manager->worker" if r.args[0] == "INPUT" else "worker->manager"
                    run.moved.append(Moved(t, s(r.args[4]), r.args[2], path))
                elif r.event == "CACHE_UPDATE":
                    src = peer_src.get((r.args[0], r.target), "")
                    path = "url->worker" if "://" in src else "worker->worker"
                    run.moved.append(Moved(t, s(r.args[3]), r.args[1], path))
            elif r.subject == "VINEWORK":
                if r.target == "TRANSFER" and r.event and len(r.args) >= 3 \
                        and r.args[0] == "START":
                    peer_src[(r.event, "worker-" + r.args[2])] = r.args[1]
                elif r.target == "TASK" and r.args and r.args[0] == "RECOVERY":
                    run.recoveries.append((t, int(r.event)))
                elif r.target == "FILE" and r.args and r.args[0] == "LOST":
                    run.lost.append((t, r.event))
        for tr in open_runs.values():
            tr.end, tr.result = run.end, "RUNNING"
        for w in run.workers.values():
            if w[1] < 0:
                w[1] = run.end
        return run


def read_perf(path: str) -> tuple[list[str], list[list[float]]]:
    """A performance log: its column names and its rows of numbers (raises
    TxnFormatError for a row that is not all numbers or has the wrong length)."""
    names: list[str] = []
    rows: list[list[float]] = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.startswith("#"):
                if not names:
                    names = line.strip("#\n ").split()
                continue
            if not line.strip():
                continue
            words = line.split()
            if len(words) != len(names):
                raise TxnFormatError(f"line {n}: {len(words)} values for {len(names)} columns")
            try:
                rows.append([float(w) for w in words])
            except ValueError as e:
                raise TxnFormatError(f"line {n}: {e}") from e
    return names, rows
