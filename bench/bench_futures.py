"""Futures throughput: N trivial futures (default 10,000) through vinework's FuturesExecutor
(one local 2-core worker), against ``concurrent.futures.ProcessPoolExecutor`` (2 processes)
and Dask distributed's ``client.submit`` (a LocalCluster of 2 single-threaded worker
processes), in the same run.

Each system: submit N calls of ``trivial(i)``, then read every result in submission
order; the figure is N / (time from the first submit to the last result). Dask is also
timed with one ``client.gather`` of all N futures, its fast path. vinework
also runs a chain (each future the argument of the next) to show that intermediate
values stay on the workers: the manager receives only the last value; and the same N
calls as plain PythonTasks (results inline, then temp output) through ``m.wait``, to
show what a future costs beyond its task.

Run: ``python bench/bench_futures.py [N]``.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import sys
import tempfile
import time

from common import drain, local_workers

import vinework as vine


def trivial(x: int) -> int:
    return x + 1


def run_vinework(n: int) -> tuple[float, float, int]:
    """(futures/s, chain futures/s, bytes the manager received during the chain)."""
    with tempfile.TemporaryDirectory() as tmp, vine.Manager(port=0, run_info_path=tmp) as m:
        with local_workers(m, 1, cores=2), vine.FuturesExecutor(manager=m, factory=False) as ex:
            warm = [ex.submit(trivial, i) for i in range(50)]
            assert [f.result() for f in warm] == list(range(1, 51))
            start = time.perf_counter()
            futures = [ex.submit(trivial, i) for i in range(n)]
            values = [f.result() for f in futures]
            rate = n / (time.perf_counter() - start)
            assert values == list(range(1, n + 1))
            k = max(10, n // 20)
            before = m.stats.bytes_received
            start = time.perf_counter()
            f = ex.submit(trivial, 0)
            for _ in range(k - 1):
                f = ex.submit(trivial, f)
            assert f.result() == k
            chain_rate = k / (time.perf_counter() - start)
            received = m.stats.bytes_received - before
            # drop the futures (and so their temps) before the worker is stopped: a
            # draining worker's live temps would be rescued to the manager
            del futures, values, warm, f
            gc.collect()  # (a future and its task refer to each other)
    return rate, chain_rate, received


def run_plain_tasks(n: int) -> tuple[float, float]:
    """What a future is made of, without the futures layer: (PythonTasks whose results
    come back inline, PythonTasks with temp output) per second, through ``m.wait``."""
    rates = []
    with tempfile.TemporaryDirectory() as tmp, vine.Manager(port=0, run_info_path=tmp) as m:
        with local_workers(m, 1, cores=2):
            for temp in (False, True):
                tasks = []
                start = time.perf_counter()
                for i in range(n):
                    t = vine.PythonTask(trivial, i)
                    t.set_cores(1)
                    if temp:
                        t.enable_temp_output()
                    m.submit(t)
                    tasks.append(t)
                drain(m, n)
                rates.append(n / (time.perf_counter() - start))
                del tasks
                gc.collect()
    return rates[0], rates[1]


def run_process_pool(n: int) -> float:
    with cf.ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(trivial, range(50)))
        start = time.perf_counter()
        futures = [pool.submit(trivial, i) for i in range(n)]
        values = [f.result() for f in futures]
        rate = n / (time.perf_counter() - start)
    assert values == list(range(1, n + 1))
    return rate


def run_dask(n: int) -> tuple[float, float]:
    """(futures/s reading each result, futures/s with one client.gather)."""
    import logging

    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # (teardown chatter)

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.gather([client.submit(trivial, i, pure=False) for i in range(50)])
        start = time.perf_counter()
        futures = [client.submit(trivial, i, pure=False) for i in range(n)]
        values = [f.result() for f in futures]
        rate = n / (time.perf_counter() - start)
        assert values == list(range(1, n + 1))
        start = time.perf_counter()
        futures = [client.submit(trivial, i, pure=False) for i in range(n)]
        values = client.gather(futures)
        gather_rate = n / (time.perf_counter() - start)
        assert values == list(range(1, n + 1))
    return rate, gather_rate


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    vw, chain, received = run_vinework(n)
    inline, temp = run_plain_tasks(n)
    pool = run_process_pool(n)
    dask, dask_gather = run_dask(n)
    print(f"{n} trivial futures, each result read in submission order")
    print(f"vinework FuturesExecutor:      {vw:8.0f} futures/s")
    print(f"ProcessPoolExecutor (2 procs): {pool:8.0f} futures/s   vinework/pool {vw / pool:.2f}x")
    print(f"Dask client.submit (2 procs):  {dask:8.0f} futures/s   vinework/dask {vw / dask:.2f}x")
    print(f"  the same, one client.gather: {dask_gather:8.0f} futures/s   vinework/dask "
          f"{vw / dask_gather:.2f}x")
    print(f"what a future is made of: plain PythonTasks through m.wait, results inline "
          f"{inline:.0f}/s, with temp output (the result file stays on the worker) {temp:.0f}/s")
    print(f"vinework chain of {max(10, n // 20)} futures (each the argument of the next): "
          f"{chain:.0f} futures/s, the manager received {received} bytes (the last value)")


if __name__ == "__main__":
    main()
