"""FunctionCall throughput: N trivial calls (default 10,000) to a library on one local
2-core worker, against the same work as vinework PythonTasks and as Dask distributed's
``client.map`` (a LocalCluster of 2 single-threaded worker processes), in one run.

Each system computes ``trivial(i) = i + 1`` for i in range(N): submit everything, then
collect every result; the figure is N / (time from the first submit to the last
result). The library is a whole worker (TaskVine's default resources), with its
function slots raised to keep calls in flight while others travel (``--slots``,
default 256; also run with 64, and with the default of one per core as TaskVine).
Exec modes: "direct" (calls run in the library process) and "fork" (a child per
call). The machine's load average is printed: other processes on the two cores
change every figure here.

Bars (issue 11): >= 5,000 calls/s; TaskVine does 185-243/s on this machine kind.
Also printed: where the manager's time goes per call (``--profile`` runs the direct
case under cProfile and prints the top functions of the manager's process).

Run: ``python bench/bench_calls.py [N] [--slots K] [--profile] [--no-dask]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import threading
import time

from common import local_workers

import vinework as vine

TASKVINE_RATE = (185.0, 243.0)
GOAL = 5000.0


def trivial(x: int) -> int:
    return x + 1


def run_calls(n: int, mode: str, slots: int, profile: bool = False) -> float:
    with tempfile.TemporaryDirectory() as tmp, vine.Manager(port=0, run_info_path=tmp) as m:
        lib = m.create_library_from_functions("bench", trivial, exec_mode=mode)
        if slots:
            lib.set_function_slots(slots)
        m.install_library(lib)
        with local_workers(m, 1, cores=2):
            for i in range(50):  # warm up: the library instance starts
                m.submit(vine.FunctionCall("bench", "trivial", i))
            _collect(m, 50)
            prof = cProfile.Profile() if profile else None
            if prof is not None:
                threading.setprofile(lambda *a: None)  # (the loop thread is profiled below)
                prof.enable()
            start = time.perf_counter()
            for i in range(n):
                m.submit(vine.FunctionCall("bench", "trivial", i))
            values = _collect(m, n)
            rate = n / (time.perf_counter() - start)
            if prof is not None:
                prof.disable()
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
                print("---- user thread (submit + wait) profile, direct mode ----")
                print(out.getvalue()[:6000])
    assert sorted(values) == list(range(1, n + 1)), "wrong results"
    return rate


def _collect(m: vine.Manager, n: int) -> list[int]:
    values: list[int] = []
    deadline = time.monotonic() + 600
    while len(values) < n:
        t = m.wait(5)
        if t is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(values)} of {n} calls came back")
            continue
        if not t.successful():
            raise RuntimeError(f"call {t.id} failed: {t.result} {t.output!r}")
        values.append(t.output)
    return values


def run_python_tasks(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, vine.Manager(port=0, run_info_path=tmp) as m:
        with local_workers(m, 1, cores=2):
            for i in range(50):
                t = vine.PythonTask(trivial, i)
                t.set_cores(1)
                m.submit(t)
            _collect(m, 50)
            start = time.perf_counter()
            for i in range(n):
                t = vine.PythonTask(trivial, i)
                t.set_cores(1)
                m.submit(t)
            values = _collect(m, n)
            rate = n / (time.perf_counter() - start)
    assert sorted(values) == list(range(1, n + 1))
    return rate


def run_dask(n: int) -> float:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.gather(client.map(trivial, range(50), pure=False))
        start = time.perf_counter()
        values = client.gather(client.map(trivial, range(n), pure=False))
        rate = n / (time.perf_counter() - start)
    assert values == list(range(1, n + 1))
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=10_000)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-dask", action="store_true")
    a = ap.parse_args()
    n = a.n
    load0 = os.getloadavg()[0]
    direct = run_calls(n, "direct", a.slots, a.profile)
    direct64 = run_calls(n, "direct", 64)
    direct_default = run_calls(n, "direct", 0)
    fork = run_calls(min(n, 2000), "fork", a.slots)
    py = run_python_tasks(n)
    dask = None if a.no_dask else run_dask(n)
    lo, hi = TASKVINE_RATE
    print(f"{n} trivial calls, one 2-core worker (load average {load0:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after)")
    print(f"FunctionCalls direct, {a.slots} slots: {direct:8.0f} calls/s  "
          f"goal {GOAL:.0f}/s  {'met' if direct >= GOAL else 'NOT met'}; "
          f"TaskVine {lo:.0f}-{hi:.0f}/s: {direct / hi:.0f}-{direct / lo:.0f}x")
    print(f"FunctionCalls direct, 64 slots:   {direct64:8.0f} calls/s")
    print(f"FunctionCalls direct, default slots (2): {direct_default:8.0f} calls/s")
    print(f"FunctionCalls fork, {a.slots} slots ({min(n, 2000)} calls): {fork:8.0f} calls/s")
    print(f"PythonTasks (warm executors):      {py:8.0f} tasks/s  calls/tasks "
          f"{direct / py:.2f}x")
    if dask is not None:
        print(f"Dask distributed client.map:       {dask:8.0f} tasks/s  calls/dask "
              f"{direct / dask:.2f}x (goal >= 5x)")


if __name__ == "__main__":
    main()
