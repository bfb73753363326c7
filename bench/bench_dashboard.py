"""What the dashboard costs the manager when nobody is looking: dispatch throughput of N
trivial command tasks on one local 2-core worker, with ``Manager(dashboard=0)`` (the web
server running, no page open) against a manager without one, in the same invocation.

Rounds alternate off/on (R of each, a fresh manager and worker per round, warmed up
first); the best and the median rate of each side are printed with the ratio on/off.
Goal: the dashboard costs <= 2 % (ratio >= 0.98). A last round also measures the cost
while a client polls ``/api/snapshot`` every second, as an open page does (reported,
not a goal).

Run: ``python bench/bench_dashboard.py [N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.request

from common import drain, local_workers

import vinework as vine


def one_round(n: int, dashboard: bool, poll: bool = False) -> tuple[float, int]:
    """Tasks per second for ``n`` trivial command tasks (after 50 warm-up tasks), and how
    many snapshots the dashboard asked the manager's loop for meanwhile."""
    with tempfile.TemporaryDirectory() as tmp, \
            vine.Manager(port=0, run_info_path=tmp,
                         dashboard=0 if dashboard else None) as m:
        with local_workers(m, 1, cores=2):
            for _ in range(50):
                t = vine.Task("true")
                t.set_cores(1)
                m.submit(t)
            drain(m, 50)
            stop = threading.Event()
            poller = None
            if poll:
                url = f"{m.dashboard_url}api/snapshot"

                def poll_loop() -> None:
                    while not stop.is_set():
                        with urllib.request.urlopen(url, timeout=10) as r:
                            r.read()
                        stop.wait(1.0)

                poller = threading.Thread(target=poll_loop, daemon=True)
                poller.start()
            start = time.perf_counter()
            for _ in range(n):
                t = vine.Task("true")
                t.set_cores(1)
                m.submit(t)
            drain(m, n)
            rate = n / (time.perf_counter() - start)
            asked = m._dashboard.samples_taken if m._dashboard is not None else 0
            stop.set()
            if poller is not None:
                poller.join(15)
    return rate, asked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=2000, help="tasks per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each (>= 1)")
    a = ap.parse_args()
    if a.n < 1 or a.rounds < 1:
        ap.error("N and --rounds must be >= 1")
    off: list[float] = []
    on: list[float] = []
    for r in range(a.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for dash in order:
            rate, asked = one_round(a.n, dash)
            (on if dash else off).append(rate)
            print(f"round {r + 1}: dashboard {'on ' if dash else 'off'} {rate:8.0f} tasks/s"
                  f"  (snapshots taken: {asked})", flush=True)
    looked, asked = one_round(a.n, True, poll=True)
    best_off, best_on = max(off), max(on)
    med_off, med_on = statistics.median(off), statistics.median(on)
    print(f"dashboard off (baseline): best {best_off:8.0f}  median {med_off:8.0f} tasks/s")
    print(f"dashboard on, nobody looking: best {best_on:8.0f}  median {med_on:8.0f} tasks/s")
    print(f"ratio on/off: best {best_on / best_off:.3f}  median {med_on / med_off:.3f} "
          f"(goal >= 0.98, i.e. <= 2 % cost)")
    print(f"dashboard on, polled every second: {looked:8.0f} tasks/s "
          f"(ratio {looked / med_off:.3f} to the median off; {asked} snapshots taken)")


if __name__ == "__main__":
    main()
