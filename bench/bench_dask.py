"""DaskVine vs dask.distributed on the same cores: a ~10k-task array graph and a delayed chain.

Both systems get 2 cores: vinework one local worker with ``--cores 2`` (each Dask
task takes 1 core), dask.distributed ``LocalCluster(n_workers=1,
threads_per_worker=2, processes=True)``.

Manager time per task: vinework's manager (the user's thread that runs
``DaskVine.get`` and the manager's event-loop thread) lives in this process and
the workers in others, so this process's CPU time (``time.process_time``) over a
run is the manager-side CPU; divided by the number of tasks it is the manager's
cost per task. Wall time per task is printed too (an upper bound, which includes
waiting for workers).

Run: ``python bench/bench_dask.py [--side 2000 --chunk 20 --chain 200]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
from common import local_workers  # noqa: E402

from vinework.dask import DaskVine  # noqa: E402
from vinework.dask.graph import DaskGraph  # noqa: E402


def _inc(v: int) -> int:
    return v + 1


def array_graph(side: int, chunk: int) -> Any:
    x = da.random.RandomState(0).random_sample((side, side), chunks=(chunk, chunk))
    return (x + 1).sum()


def chain_graph(n: int) -> Any:
    v: Any = 0
    for _ in range(n):
        v = dask.delayed(_inc)(v)
    return v


def count_tasks(obj: Any) -> int:
    """Tasks DaskVine runs for ``obj`` (after dask's optimization, as compute does)."""
    (opt,) = dask.optimize(obj)
    g = DaskGraph(opt.__dask_graph__(), opt.__dask_keys__())
    return sum(1 for k in g.nodes if g.kind(k) == "task")


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=20)
    ap.add_argument("--chain", type=int, default=200)
    args = ap.parse_args()

    cases = {
        f"array {args.side}x{args.side}/{args.chunk}": array_graph(args.side, args.chunk),
        f"delayed chain {args.chain}": chain_graph(args.chain),
    }
    ntasks = {name: count_tasks(obj) for name, obj in cases.items()}
    expected = {name: obj.compute(scheduler="sync") for name, obj in cases.items()}
    results: dict[str, dict[str, float]] = {name: {} for name in cases}

    base = tempfile.mkdtemp(prefix="vinework-bench-dask-")
    m = DaskVine(port=0, run_info_path=os.path.join(base, "run-info"))
    with m, local_workers(m, n=1, cores=2, workdir=os.path.join(base, "workers")):
        # warm up: hoist dask/numpy into the worker's fork server
        array_graph(200, 100).compute(scheduler=m.get, progress_disable=True)
        for name, obj in cases.items():
            # one task per node, as dask.distributed runs them (by default DaskVine fuses
            # the delayed chain into one task), so the per-task numbers stay comparable
            def run(o: Any = obj) -> Any:
                return o.compute(scheduler=m.get, progress_disable=True, fuse=False,
                                 small_graph=False)

            r, wall, cpu = timed(run)
            assert np.isclose(r, expected[name]), (name, r, expected[name])
            results[name]["vine"], results[name]["vine_cpu"] = wall, cpu

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        array_graph(200, 100).compute()  # warm up
        for name, obj in cases.items():
            def run_dist(o: Any = obj) -> Any:
                return client.compute(o).result()

            r, wall, _ = timed(run_dist)
            assert np.isclose(r, expected[name]), (name, r, expected[name])
            results[name]["dist"] = wall

    print(f"{'graph':<26}{'tasks':>7}{'vinework s':>12}{'distributed s':>15}{'ratio':>8}"
          f"{'vine wall/task ms':>19}{'vine mgr CPU/task ms':>22}")
    for name, res in results.items():
        n = ntasks[name]
        print(f"{name:<26}{n:>7}{res['vine']:>12.2f}{res['dist']:>15.2f}"
              f"{res['vine'] / res['dist']:>8.2f}{1000 * res['vine'] / n:>19.3f}"
              f"{1000 * res['vine_cpu'] / n:>22.3f}")
    print("ratio = vinework time / dask.distributed time; 2 cores each. Manager CPU/task = this "
          "process's CPU (user thread + manager loop thread) / tasks.")


if __name__ == "__main__":
    main()
