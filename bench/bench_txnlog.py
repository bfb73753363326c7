"""What the TaskVine-format logs cost the manager.

A real run (local workers, N short tasks, a chain of temps passed worker to worker)
records every log call the manager makes. The calls are then replayed, in the same
invocation and alternating rounds, through

- the baseline: vinework's previous writer (``TIME KIND FIELD...`` lines only), and
- ``TxnLog``: TaskVine's lines plus the VINEWORK lines, looking tasks and workers up
  in the run's own records, as the manager does;

and the ratio of the two and the cost per task are printed. Then the performance
log's snapshot (``stats_snapshot`` and one row) is timed with the run's tasks held,
which bounds how often a row is written (at most 2% of the loop, perflog.py).

    python bench/bench_txnlog.py [--tasks 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import local_workers  # noqa: E402

import vinework as vine  # noqa: E402
from vinework.core.events import TaskReturned  # noqa: E402
from vinework.core.stats import ManagerStats  # noqa: E402
from vinework.observe.perflog import PerfLog  # noqa: E402
from vinework.txnlog import TxnLog  # noqa: E402


class OldTxnLog:
    """The writer vinework had before TaskVine's format (the baseline)."""

    def __init__(self, path: str) -> None:
        self._f: Any = open(path, "a", buffering=1 << 16)  # noqa: SIM115

    def write(self, kind: str, fields: tuple[object, ...], when_us: int = 0) -> None:
        line = " ".join(map(str, fields))
        if "\n" in line:
            line = line.replace("\n", " ")
        self._f.write(f"{when_us or int(time.time() * 1e6)} {kind} {line}\n")

    def returned(self, c: TaskReturned) -> None:
        pass

    def close(self) -> None:
        self._f.close()


class Recorder(TxnLog):
    """The manager's log, also keeping every call (and the records it looked at)."""

    calls: list[tuple[str, Any]]

    def write(self, kind: str, fields: tuple[object, ...], when_us: int = 0) -> None:
        self.calls.append(("w", (kind, fields, when_us)))
        super().write(kind, fields, when_us)

    def returned(self, c: TaskReturned) -> None:
        self.calls.append(("r", c))
        super().returned(c)


class Frozen:
    """The tasks and workers of a finished run, for lookups during a replay."""

    def __init__(self, tasks: dict[int, Any], workers: dict[str, Any]) -> None:
        self.tasks, self.workers = tasks, workers


def run_workload(n: int, tmp: str) -> tuple[list[tuple[str, Any]], Frozen, tuple[float, float]]:
    m = vine.Manager(port=0, run_info_path=os.path.join(tmp, "run-info"), shutdown=True)
    rec = Recorder(os.path.join(tmp, "recorded"))
    rec.calls = []
    tasks: dict[int, Any] = {}
    workers: dict[str, Any] = {}
    real_write = rec.write

    def spy(kind: str, fields: tuple[object, ...], when_us: int = 0) -> None:
        st = m._state
        if kind == "TASK" and fields and isinstance(fields[0], int) and fields[0] in st.tasks:
            tasks[fields[0]] = st.tasks[fields[0]]
        if kind == "WORKER" and fields and fields[0] in st.workers:
            workers[str(fields[0])] = st.workers[str(fields[0])]
        real_write(kind, fields, when_us)

    rec.write = spy  # type: ignore[method-assign]
    rec.attach(m._state)
    first, m._server.txn, m._txn = m._txn, rec, rec  # the loop thread's writer from here on
    first.close()
    try:
        with local_workers(m, n=2, cores=2):
            c0 = time.process_time()
            prev = None
            for i in range(n):
                t = vine.Task("echo x > out" if prev is None or i % 50 == 0 else "cat in > out")
                t.set_cores(1)
                if prev is not None and i % 50:
                    t.add_input(prev, "in")
                prev = m.declare_temp()
                t.add_output(prev, "out")
                m.submit(t)
            got = 0
            deadline = time.monotonic() + 600
            while got < n and time.monotonic() < deadline:
                if m.wait(1) is not None:
                    got += 1
            if got < n:
                raise RuntimeError(f"only {got} of {n} tasks came back")
            cpu = time.process_time() - c0  # the manager's process: loop and API threads
            snap_cost = m._ask(lambda: time_snapshot(m._state))  # on the loop thread
    finally:
        m.close()
    return rec.calls, Frozen(tasks, workers), (snap_cost, cpu)


def time_snapshot(state: Any) -> float:
    rounds = 50
    t0 = time.perf_counter()
    for _ in range(rounds):
        state.stats_snapshot()
    return (time.perf_counter() - t0) / rounds


def replay(calls: list[tuple[str, Any]], log: Any) -> float:
    t0 = time.perf_counter()
    for what, c in calls:
        if what == "w":
            log.write(*c)
        else:
            log.returned(c)
    log.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        calls, frozen, (snap, cpu) = run_workload(a.tasks, tmp)
        old, new = [], []
        sizes = [0, 0]
        for r in range(a.rounds):
            p_old, p_new = os.path.join(tmp, f"old{r}"), os.path.join(tmp, f"new{r}")
            old.append(replay(calls, OldTxnLog(p_old)))
            log = TxnLog(p_new)
            log._state = frozen  # type: ignore[assignment]  # lookups, without a perf log
            new.append(replay(calls, log))
            sizes = [os.path.getsize(p_old), os.path.getsize(p_new)]
        row = PerfLog(os.path.join(tmp, "perf"))
        stats = ManagerStats()
        t0 = time.perf_counter()
        for _ in range(200):
            row.write(lambda: stats, force=True)
        row_cost = (time.perf_counter() - t0) / 200
    o, n_ = statistics.median(old), statistics.median(new)
    print(f"{a.tasks} tasks, {len(calls)} log calls replayed ({a.rounds} rounds, median):")
    print(f"  baseline (vinework's old lines): {o * 1e3:.1f} ms, "
          f"{o / a.tasks * 1e6:.1f} us/task, {sizes[0] / 1e6:.2f} MB")
    print(f"  TaskVine lines + VINEWORK lines: {n_ * 1e3:.1f} ms, "
          f"{n_ / a.tasks * 1e6:.1f} us/task, {sizes[1] / 1e6:.2f} MB")
    print(f"  ratio {n_ / o:.2f}x time, {sizes[1] / max(1, sizes[0]):.2f}x bytes; "
          f"added {(n_ - o) / a.tasks * 1e6:.1f} us per task")
    print(f"  the run itself: {cpu / a.tasks * 1e6:.0f} us of manager CPU per task, so the "
          f"new log adds {(n_ - o) / cpu * 100:.1f}% to it")
    print(f"  performance log: stats_snapshot {snap * 1e3:.3f} ms, a row {row_cost * 1e6:.1f} us"
          f" (at most 2 rows/s: {2 * (snap + row_cost) * 100:.3f}% of the loop)")


if __name__ == "__main__":
    main()
