"""Small Dask graphs: a compute() of tens of trivial tasks, DaskVine vs dask's sync scheduler
and dask.distributed, all in one invocation.

The graph is ``(da.ones(100, chunks=10) + i).sum()`` with a new ``i`` each time (so each
compute is a new graph, as in interactive work). Timed: the ``compute()`` call alone (the
graph is built outside the timer), median over ``--n`` computes after ``--warm`` warm-up
ones. Systems, each on a warm worker with 2 cores:

* dask's sync scheduler (the baseline: this process, no worker);
* DaskVine, default (a small graph runs as one task, see ``vinework/dask/small.py``);
* DaskVine with ``small_graph=False`` (one task per node, what ``get`` did before);
* dask.distributed, ``LocalCluster(n_workers=1, threads_per_worker=2, processes=True)``.

The sync scheduler's time drifts on a shared machine (4.5 to 7.5 ms within minutes
here), so it is measured three ways: before DaskVine starts, after it, and in alternating
blocks with DaskVine (``--rounds`` blocks of each, 12 by default, one untimed compute
after each switch), whose ratio is the fairest of the three. That ratio is also taken
round by round, from the medians of a round's two blocks (a fraction of a second apart),
and printed with its spread.

Then where DaskVine's milliseconds go: the time in ``Manager.submit``, the time waiting
for the finished task (``wait_for_tag``), the task's wall time on the worker (from the
run message's arrival to its result's departure) and, within it, the Python executor's
own measure of its call, and the
rest (dask's own graph optimization, which the sync scheduler pays too, and DaskVine's
graph handling). And the CPU time per compute of each thread and process on the path
(Linux ``/proc/.../schedstat``): the user's thread (dask and DaskVine), the manager's
loop thread, the worker and its Python executors. Their sum comes out close to the
wall time (within a few percent here): the pipeline is serial, each process waiting
for the one before it, so nearly every millisecond of CPU on any of them is on the
critical path, whichever core runs it.

Run: ``python bench/bench_dask_small.py [--n 60 --warm 10]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from common import local_workers  # noqa: E402

from vinework.dask import DaskVine  # noqa: E402


def graph(i: int) -> Any:
    return (da.ones(100, chunks=10) + i).sum()


def median_ms(compute: Callable[[Any], Any], n: int, warm: int, offset: int) -> float:
    for i in range(warm):
        compute(graph(offset + i))
    times = []
    for i in range(n):
        x = graph(offset + warm + i)
        t0 = time.perf_counter()
        r = compute(x)
        times.append(time.perf_counter() - t0)
        assert r == 100 * (1 + offset + warm + i), r
    return statistics.median(times) * 1e3


def blocks_ms(first: Callable[[Any], Any], second: Callable[[Any], Any], n: int,
              offset: int, rounds: int) -> tuple[float, float, list[float]]:
    """Medians of ``first`` and ``second`` timed in alternating blocks (``rounds`` of each,
    ``n`` computes of each in all, one untimed compute after each switch): the machine's
    drift over the run is shared by both, and neither runs just after the other's process
    hops. Also the ratio second/first of each round's two block medians (a round's two
    blocks are a fraction of a second apart, so each ratio sees one state of the machine)."""
    a: list[float] = []
    b: list[float] = []
    ratios: list[float] = []
    per = max(1, n // rounds)
    i = offset
    for _ in range(rounds):
        block: list[float] = []
        for compute, times in ((first, a), (second, b)):
            compute(graph(i))
            i += 1
            mine = []
            for _ in range(per):
                x = graph(i)
                t0 = time.perf_counter()
                r = compute(x)
                mine.append(time.perf_counter() - t0)
                assert r == 100 * (1 + i), r
                i += 1
            times.extend(mine)
            block.append(statistics.median(mine))
        ratios.append(block[1] / block[0])
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3, ratios


class Segments:
    """Times DaskVine's submit and wait calls, and the tasks' wall times, per compute."""

    def __init__(self, m: DaskVine) -> None:
        self.m = m
        self.submit: list[float] = []
        self.wait: list[float] = []
        self.worker: list[float] = []
        self.call: list[float] = []
        self._submit, self._wait = m.submit, m.wait_for_tag

    def __enter__(self) -> Segments:
        def submit(t: Any) -> int:
            t0 = time.perf_counter()
            r = self._submit(t)
            self.submit.append(time.perf_counter() - t0)
            return r

        def wait(tag: str, timeout: Any = 5) -> Any:
            t0 = time.perf_counter()
            t = self._wait(tag, timeout)
            self.wait.append(time.perf_counter() - t0)
            if t is not None:
                self.worker.append(float(t.wall_time))
                self.call.append(float(t.resources_measured.wall_time))
            return t

        self.m.submit = submit  # type: ignore[method-assign]
        self.m.wait_for_tag = wait  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.m.submit, self.m.wait_for_tag


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=12,
                    help="rounds of alternating blocks (sync, then DaskVine)")
    ap.add_argument("--no-distributed", action="store_true")
    a = ap.parse_args()
    (opt,) = dask.optimize(graph(0))
    print(f"graph: {len(dict(graph(0).__dask_graph__()))} tasks as built, "
          f"{len(dict(opt.__dask_graph__()))} after dask's optimization")

    sync = median_ms(lambda x: x.compute(scheduler="sync"), a.n, a.warm, 0)
    m = DaskVine(port=0)
    warnings.filterwarnings("ignore", message="no password is set")
    with local_workers(m, 1, cores=2) as procs:
        vine = median_ms(lambda x: x.compute(scheduler=m.get), a.n, a.warm, 1000)
        pair = blocks_ms(lambda x: x.compute(scheduler="sync"),
                         lambda x: x.compute(scheduler=m.get), 2 * a.n, 6000, a.rounds)
        per_task = median_ms(lambda x: x.compute(scheduler=m.get, small_graph=False),
                             max(10, a.n // 4), a.warm, 2000)
        k = a.n
        parts: dict[str, list[float]] = {"total": [], "submit": [], "wait": [], "worker": [],
                                         "call": [], "dask": []}
        with Segments(m) as seg:
            for i in range(k):
                x = graph(3000 + i)
                t0 = time.perf_counter()
                x.compute(scheduler=m.get)
                parts["total"].append(time.perf_counter() - t0)
                parts["submit"].append(sum(seg.submit))
                parts["wait"].append(sum(seg.wait))
                parts["worker"].append(sum(seg.worker))
                parts["call"].append(sum(seg.call))
                for done in (seg.submit, seg.wait, seg.worker, seg.call):
                    done.clear()
                x = graph(3000 + i)
                t0 = time.perf_counter()
                dask.compute(x, scheduler=_materialize_only)
                parts["dask"].append(time.perf_counter() - t0)
        cpu = cpu_per_compute(m, procs[0].pid, max(200, 4 * a.n), 7000)
        sync_again = median_ms(lambda x: x.compute(scheduler="sync"), a.n, a.warm, 4000)
    m.close()
    dist = None
    if not a.no_distributed:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            dist = median_ms(lambda x: x.compute(scheduler=client.get), max(20, a.n // 2),
                             a.warm, 5000)

    base = (sync + sync_again) / 2
    print(f"dask sync scheduler (baseline)     {sync:7.2f} ms  (again at the end: "
          f"{sync_again:.2f} ms)")
    print(f"DaskVine, small graph as one task  {vine:7.2f} ms  = {vine / base:.2f}x sync")
    ratios = sorted(pair[2])
    print(f"in alternating blocks: sync {pair[0]:.2f} ms, DaskVine {pair[1]:.2f} ms: "
          f"DaskVine/sync {pair[1] / pair[0]:.2f}x ({2 * a.n} computes each, {a.rounds} "
          f"blocks each); round by round: median {statistics.median(ratios):.2f}x, "
          f"{ratios[0]:.2f}-{ratios[-1]:.2f}x, {sum(r <= 1.5 for r in ratios)}/{len(ratios)} "
          f"rounds at most 1.5x")
    print(f"DaskVine, small_graph=False        {per_task:7.2f} ms  = {per_task / base:.2f}x sync")
    if dist is not None:
        print(f"dask.distributed, 1 process worker {dist:7.2f} ms  = {dist / base:.2f}x sync; "
              f"DaskVine is {dist / vine:.1f}x faster")
    med = {name: statistics.median(v) * 1e3 for name, v in parts.items()}
    rest = med["total"] - med["submit"] - med["wait"] - med["dask"]
    print(f"where DaskVine's {med['total']:.2f} ms go (medians of {k}): dask's compute() and "
          f"graph optimization {med['dask']:.2f} (the sync scheduler pays it too); submit "
          f"{med['submit']:.2f}; waiting for the task {med['wait']:.2f}, of which the worker "
          f"had it {med['worker']:.2f} (its Python executor's call {med['call']:.2f}: "
          f"unpickling the plan, evaluating it, pickling the values; the rest is the "
          f"worker's handling and the hops to and from its executor) and the round trip "
          f"to the worker {med['wait'] - med['worker']:.2f}; DaskVine's graph "
          f"handling (cull, fuse, plan, payload) {rest:.2f}")
    if cpu is not None:
        wall = cpu.pop("wall")
        print(f"CPU per compute ({max(200, 4 * a.n)} back to back, graphs built beforehand: "
              f"{wall:.2f} ms each): " + "; ".join(f"{k} {v:.2f}" for k, v in cpu.items())
              + f"; sum {sum(cpu.values()):.2f} ms")


def _cpu_seconds(task_dir: str) -> float:
    """Seconds on a CPU of one thread (``/proc/PID/task/TID``): its schedstat (ns)."""
    with open(os.path.join(task_dir, "schedstat")) as f:
        return int(f.read().split()[0]) / 1e9


def _process_cpu_seconds(pid: int) -> float:
    """Seconds on a CPU of every thread of a process (those alive now)."""
    root = f"/proc/{pid}/task"
    return sum(_cpu_seconds(os.path.join(root, t)) for t in os.listdir(root))


def _children(pid: int) -> list[int]:
    pids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            pids += [int(c) for c in f.read().split()]
    return pids


def cpu_per_compute(m: DaskVine, worker_pid: int, n: int, offset: int
                    ) -> dict[str, float] | None:
    """CPU milliseconds per compute of: the user's thread, the manager's loop thread, the
    worker process, its Python executors (those alive when it starts: a warm pool);
    None where /proc cannot say (not Linux, no schedstat)."""
    me = os.getpid()
    threads = {"user's thread (dask + DaskVine)": threading.get_native_id(),
               "manager's loop thread": m._server.thread.native_id}

    def sample(procs: dict[str, list[int]]) -> dict[str, float]:
        out = {k: _cpu_seconds(f"/proc/{me}/task/{t}") for k, t in threads.items()}
        for k, pids in procs.items():
            out[k] = sum(_process_cpu_seconds(p) for p in pids)
        return out

    xs = [graph(offset + i) for i in range(n)]
    try:
        procs = {"worker": [worker_pid], "its Python executors": _children(worker_pid)}
        before = sample(procs)
    except (OSError, ValueError, IndexError):
        return None
    t0 = time.perf_counter()
    for x in xs:
        x.compute(scheduler=m.get)
    wall = time.perf_counter() - t0
    try:
        after = sample(procs)
    except (OSError, ValueError, IndexError):  # (an executor replaced during the run)
        return None
    out = {k: (after[k] - before[k]) / n * 1e3 for k in before}
    out["wall"] = wall / n * 1e3
    return out


def _materialize_only(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """A scheduler that only materializes the graph: what dask costs before scheduling."""
    dict(dsk.__dask_graph__())
    return [None] * len(keys)


if __name__ == "__main__":
    main()
