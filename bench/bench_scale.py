"""Does the manager's cost stay linear in the work? Driver CPU and memory per task, 10k..100k.

Two workloads, each at every size N (default 10,000, 50,000 and 100,000):

* ``graph``: a Dask graph of N ``inc(i)`` tasks and a tree of sums over them
  (each sum adds 100 values: N/100 sums of incs, N/10,000 sums of those, ...
  up to one result), computed with ``DaskVine.get``; the same raw graph dict
  computed by Dask distributed (``LocalCluster(n_workers=1,
  threads_per_worker=2, processes=True)``, ``client.get``) is the baseline.
* ``python``: N independent ``PythonTask(inc, i)``, all submitted, then all
  collected with ``m.wait``; ``client.map`` + ``client.gather`` is the baseline.

vinework gets one ``vinework worker --cores 2`` process; each task takes one
core. Every (system, workload, size) runs in a fresh subprocess of this script,
so one run's heap does not inflate the next one's figures.

What is measured, in the driver process (the user's thread, the manager's
event-loop thread and, for Dask distributed, the scheduler, which LocalCluster
runs in the client's process; never the worker):

* tasks/s: tasks / wall time of the compute (the worker is connected and warm
  before the clock starts);
* CPU us/task: ``time.process_time()`` (all threads) over the compute / tasks;
* kept B/task: RSS growth from before the graph was built to after the
  compute returned, the user dropped the graph, the result and every task, and
  ``gc.collect()`` ran, / tasks -- what the manager keeps (stories, recovery
  records, logs, caches) plus what the allocator does not give back;
* peak B/task: the RSS high-water mark (``VmHWM``) over the same baseline.

Goal (at 100k): tasks/s >= 2x Dask distributed's, CPU <= 200 us/task, kept
<= 2 KB/task, and both per-task figures at 100k <= 1.3x those at 10k.

Run: ``python bench/bench_scale.py [--sizes 10000,50000,100000] [--only graph|python]
[--skip-dask-distributed]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FAN_IN = 100
PAGE = os.sysconf("SC_PAGE_SIZE")
GOAL_CPU_US = 200.0
GOAL_KEPT_B = 2048.0
GOAL_SPEEDUP = 2.0
GOAL_GROWTH = 1.3


def inc(i: int) -> int:
    return i + 1


def add_all(values: list[int]) -> int:
    return sum(values)


# ---------------------------------------------------------------------------- measuring
def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def tree_graph(n: int) -> tuple[dict[Any, Any], Any, int]:
    """The raw Dask graph: n incs, sums of FAN_IN up to one root; (graph, root key, tasks)."""
    dsk: dict[Any, Any] = {("inc", i): (inc, i) for i in range(n)}
    level = [("inc", i) for i in range(n)]
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), FAN_IN):
            k = ("sum", depth, j // FAN_IN)
            dsk[k] = (add_all, level[j:j + FAN_IN])
            nxt.append(k)
        level = nxt
    return dsk, level[0], len(dsk)


def measured(n_tasks: int, run: Callable[[], tuple[float, float]],
             settle: Callable[[], None]) -> dict[str, float]:
    """Measure the driver around ``run``, which builds the work, computes it, drops
    everything and returns the (wall, CPU) seconds of the compute itself."""
    gc.collect()
    settle()
    base = rss()
    reset_peak()
    wall, cpu = run()
    settle()
    gc.collect()
    settle()
    kept = rss() - base
    return {
        "tasks": n_tasks, "wall": wall, "tasks_per_s": n_tasks / wall,
        "cpu_us": 1e6 * cpu / n_tasks, "kept_b": kept / n_tasks,
        "peak_b": (peak_rss() - base) / n_tasks, "base_mb": base / 2**20,
    }


# ---------------------------------------------------------------------------- children
def child_vine(workload: str, n: int) -> dict[str, float]:
    from common import local_workers

    from vinework import PythonTask
    from vinework.dask import DaskVine

    base = tempfile.mkdtemp(prefix="vinework-bench-scale-")
    with DaskVine(port=0, run_info_path=os.path.join(base, "run-info")) as m, \
            local_workers(m, n=1, cores=2, workdir=os.path.join(base, "workers")):
        def settle() -> None:
            m.stats  # noqa: B018 -- a round trip: the loop has handled what was posted
            time.sleep(1.2)  # idle a moment (two of the manager's ticks; it trims the heap)

        # warm up: the worker's warm interpreter imports dask, and this module's code paths run
        dsk, root, _ = tree_graph(200)
        assert m.get(dsk, root, progress_disable=True) == 200 * 201 // 2
        del dsk

        if workload == "graph":
            ntasks = tree_graph(n)[2]

            def run() -> tuple[float, float]:
                dsk, root, _ = tree_graph(n)
                c0, t0 = time.process_time(), time.perf_counter()
                r = m.get(dsk, root, progress_disable=True)
                out = time.perf_counter() - t0, time.process_time() - c0
                assert r == n * (n + 1) // 2, r
                return out
        else:
            ntasks = n

            def run() -> tuple[float, float]:
                c0, t0 = time.process_time(), time.perf_counter()
                for i in range(n):
                    m.submit(PythonTask(inc, i))
                total = got = 0
                while got < n:
                    t = m.wait(30)
                    if t is None:
                        raise RuntimeError(f"only {got} of {n} tasks returned")
                    if not t.successful():
                        raise RuntimeError(f"task {t.id} failed: {t.result} {t.output!r}")
                    total += t.output
                    got += 1
                del t
                out = time.perf_counter() - t0, time.process_time() - c0
                assert total == n * (n + 1) // 2, total
                return out
        return measured(ntasks, run, settle)


def child_dist(workload: str, n: int) -> dict[str, float]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        dsk, root, _ = tree_graph(200)
        assert client.get(dsk, root) == 200 * 201 // 2
        del dsk

        def settle() -> None:
            time.sleep(0.5)  # let the scheduler forget released keys

        if workload == "graph":
            ntasks = tree_graph(n)[2]

            def run() -> tuple[float, float]:
                dsk, root, _ = tree_graph(n)
                c0, t0 = time.process_time(), time.perf_counter()
                r = client.get(dsk, root)
                out = time.perf_counter() - t0, time.process_time() - c0
                assert r == n * (n + 1) // 2, r
                return out
        else:
            ntasks = n

            def run() -> tuple[float, float]:
                c0, t0 = time.process_time(), time.perf_counter()
                futs = client.map(inc, range(n), pure=False)
                total = sum(client.gather(futs))
                del futs
                out = time.perf_counter() - t0, time.process_time() - c0
                assert total == n * (n + 1) // 2, total
                return out
        return measured(ntasks, run, settle)


# ---------------------------------------------------------------------------- orchestration
def run_child(system: str, workload: str, n: int, timeout: float) -> dict[str, float] | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{system}:{workload}:{n}"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{system} {workload} {n}: timed out after {timeout:.0f} s", file=sys.stderr)
        return None
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])  # type: ignore[no-any-return]
    print(f"{system} {workload} {n}: failed (exit {p.returncode})\n{p.stderr[-3000:]}",
          file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", default="10000,50000,100000")
    ap.add_argument("--only", choices=["graph", "python"], default=None)
    ap.add_argument("--skip-dask-distributed", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per child run")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        system, workload, n = args.child.split(":")
        fn = child_vine if system == "vinework" else child_dist
        res = fn(workload, int(n))
        print("RESULT " + json.dumps(res), flush=True)
        sys.stdout.flush()
        os._exit(0)  # skip slow interpreter teardown of a large heap

    sizes = [int(s) for s in args.sizes.split(",") if s]
    workloads = [args.only] if args.only else ["graph", "python"]
    systems = ["vinework"] + ([] if args.skip_dask_distributed else ["distributed"])
    results: dict[tuple[str, str, int], dict[str, float] | None] = {}
    for workload in workloads:
        for n in sizes:
            for system in systems:
                t0 = time.perf_counter()
                r = results[(system, workload, n)] = run_child(system, workload, n, args.timeout)
                took = time.perf_counter() - t0
                brief = "failed" if r is None else (
                    f"{r['tasks_per_s']:.0f} tasks/s, {r['cpu_us']:.0f} us/task, "
                    f"kept {r['kept_b']:.0f} B/task")
                print(f"  {system:<12}{workload:<8}{n:>8}: {brief} ({took:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"system": s, "workload": w, "size": n, **(r or {})}
                       for (s, w, n), r in results.items()], f, indent=1)
    print_table(results, workloads, sizes, systems)


def print_table(results: dict[tuple[str, str, int], dict[str, float] | None],
                workloads: list[str], sizes: list[int], systems: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="driver cost per task (one 2-core worker)")
    for col in ("workload", "size", "system", "tasks", "wall s", "tasks/s", "CPU us/task",
                "kept B/task", "peak B/task", "tasks/s vs dist", "CPU vs dist"):
        table.add_column(col, justify="right")
    for workload in workloads:
        for n in sizes:
            dist = results.get(("distributed", workload, n))
            for system in systems:
                r = results.get((system, workload, n))
                if r is None:
                    table.add_row(workload, str(n), system, "failed")
                    continue
                ratio = cpu_ratio = ""
                if system == "vinework" and dist:
                    ratio = f"{r['tasks_per_s'] / dist['tasks_per_s']:.2f}x"
                    cpu_ratio = f"{r['cpu_us'] / dist['cpu_us']:.2f}x"
                table.add_row(workload, str(n), system, f"{r['tasks']:.0f}", f"{r['wall']:.1f}",
                              f"{r['tasks_per_s']:.0f}", f"{r['cpu_us']:.0f}",
                              f"{r['kept_b']:.0f}", f"{r['peak_b']:.0f}", ratio, cpu_ratio)
    console = Console(width=160)
    console.print(table)
    # linearity: the largest size against the smallest, per system and workload
    lo, hi = min(sizes), max(sizes)
    if lo != hi:
        for workload in workloads:
            for system in systems:
                a, b = results.get((system, workload, lo)), results.get((system, workload, hi))
                if a and b:
                    console.print(
                        f"{system} {workload}: {hi} vs {lo}: CPU/task x{b['cpu_us'] / a['cpu_us']:.2f}"
                        f", kept/task x{b['kept_b'] / max(a['kept_b'], 1.0):.2f} "
                        f"(goal <= {GOAL_GROWTH}x)")
    console.print(f"goals at the largest size: tasks/s >= {GOAL_SPEEDUP}x distributed, CPU <= "
                  f"{GOAL_CPU_US:.0f} us/task, kept <= {GOAL_KEPT_B:.0f} B/task")


if __name__ == "__main__":
    main()
