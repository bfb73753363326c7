"""What a status query costs the manager's loop thread, against ``m.stats`` in the same run.

A manager holds N waiting tasks (no worker connects, so they stay) and M declared
buffers. Timed on the loop thread, medians of R repetitions:

- baseline: ``m._stats_now()`` (what ``m.stats`` computes there);
- snapshot: ``status_json(m, "all")`` (the dict of ``observe/status.py`` and its JSON,
  what a status query, a metrics scrape or the dashboard makes), as queries see it
  (categories recounted at most once a second above 5,000 tasks) and uncached;
- and from outside: a whole ``vinework status`` query over TCP (``status_cli.query``)
  against an ``m.stats`` round trip from the user's thread.

The ratio snapshot / baseline is printed; what matters is the absolute time per
query at large N (the loop does nothing else meanwhile).

Run: ``python bench/bench_status.py [N ...] [--reps R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import vinework as vine
from vinework.observe.status import _category_cache, status_json
from vinework.observe.status_cli import query


def on_loop(m: vine.Manager, fn: Callable[[], object], reps: int) -> float:
    """Median seconds of ``fn`` run on the loop thread."""
    def timed() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return statistics.median(float(m._ask(timed)) for _ in range(reps))


def outside(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def uncached(m: vine.Manager) -> str:
    _category_cache.clear()  # (the categories' pass is redone at most once a second)
    return status_json(m, "all")


def measure(n: int, reps: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        m = vine.Manager(port=0, run_info_path=os.path.join(d, "ri"))
        try:
            for i in range(n):
                t = vine.Task(f"echo {i}")
                t.set_category(f"c{i % 10}")
                if i % 10 == 0:
                    t.add_input(m.declare_buffer(b"x" * 10), "in")
                m.submit(t)
            while m.stats.tasks_waiting < n:
                time.sleep(0.05)
            base = on_loop(m, m._stats_now, reps)
            snap = on_loop(m, lambda: status_json(m, "all"), reps)
            cold = on_loop(m, lambda: uncached(m), reps)
            user = outside(lambda: m.stats, reps)
            q = outside(lambda: query("127.0.0.1", m.port), reps)
            size = len(m._ask(lambda: status_json(m, "all"))) / 1000
            print(f"{n:>7} {base * 1e3:>9.3f} {snap * 1e3:>12.3f} {snap / base:>6.1f} "
                  f"{cold * 1e3:>12.3f} {user * 1e3:>11.3f} {q * 1e3:>9.3f} {q / user:>6.1f} "
                  f"{size:>9.1f}")
        finally:
            m.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[1000, 10000, 50000])
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} (2 cores shared)")
    print(f"{'tasks':>7} {'stats ms':>9} {'snapshot ms':>12} {'ratio':>6} {'uncached ms':>12} "
          f"{'m.stats ms':>11} {'query ms':>9} {'ratio':>6} {'reply KB':>9}")
    for n in a.sizes:
        measure(n, a.reps)


if __name__ == "__main__":
    main()
