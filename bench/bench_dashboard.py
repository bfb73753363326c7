"""What the dashboard and the metrics endpoint cost the manager when nobody is looking.

Dispatch throughput of N trivial command tasks (``true``, one core each, one 2-core
worker) on a manager with ``dashboard=0, prometheus_port=0`` ("on": both servers up, no
page open, no scrape) against a plain manager ("off"), in alternating rounds of the same
invocation (off, on, off, on, ...), each round on a fresh manager and worker after a
warm-up batch. Prints each round's rate, the medians and the ratio on / off. The goal
from the issue: the cost is at most 2 % (ratio >= 0.98).

Run: ``python bench/bench_dashboard.py [N] [--rounds R]`` (defaults: 5,000 tasks, 3
rounds of each).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from common import drain, local_workers

import vinework as vine

WARMUP = 200


def one_round(n: int, on: bool) -> float:
    """Tasks per second for n trivial tasks on a fresh manager (with the servers if on)."""
    extra: dict[str, int] = {"dashboard": 0, "prometheus_port": 0} if on else {}
    with tempfile.TemporaryDirectory() as tmp, \
            vine.Manager(port=0, run_info_path=tmp, **extra) as m:  # type: ignore[arg-type]
        if on:
            assert m.dashboard_port and m.prometheus_port
        with local_workers(m, 1, cores=2):
            for _ in range(WARMUP):
                t = vine.Task("true")
                t.set_cores(1)
                m.submit(t)
            drain(m, WARMUP)
            start = time.perf_counter()
            for _ in range(n):
                t = vine.Task("true")
                t.set_cores(1)
                m.submit(t)
            drain(m, n)
            rate = n / (time.perf_counter() - start)
        if on:  # nobody looked: the dashboard never asked the manager for a snapshot
            assert m._dashboard is not None and m._dashboard.samples_taken == 0
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", nargs="?", type=int, default=5000, help="tasks per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each (off and on)")
    args = ap.parse_args()
    if args.n < 1 or args.rounds < 1:
        ap.error("n and --rounds must be at least 1")
    rates: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for on in (False, True):
            rate = one_round(args.n, on)
            rates[on].append(rate)
            print(f"round {r + 1} {'on ' if on else 'off'}: {rate:8.0f} tasks/s", flush=True)
    off, on_ = statistics.median(rates[False]), statistics.median(rates[True])
    ratio = on_ / off
    print(f"dashboard+metrics off: {off:8.0f} tasks/s (median of {args.rounds})")
    print(f"dashboard+metrics on:  {on_:8.0f} tasks/s (median of {args.rounds}, nobody looking)")
    print(f"ratio on/off {ratio:.3f}  cost {100 * (1 - ratio):+.1f} %  (goal: cost <= 2 %)")


if __name__ == "__main__":
    main()
