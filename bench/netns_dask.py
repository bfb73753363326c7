"""Dask distributed on the simulated cluster: the same 4 x 200 MB DAG as vinework's.

:class:`DaskOnCluster` starts a Dask scheduler in the manager's namespace and one
1-thread worker (no nanny) in each worker namespace of a ``NetnsCluster``, plus a
client process (this file run as a script, in the manager's namespace too). Each
:meth:`DaskOnCluster.run` makes the client run the DAG once: producer i (pinned to
worker i, as vinework's 1-core producers land one per host) returns ``size`` zero
bytes; consumer i gets producers i and (i+1) mod N and returns the number of bytes
it counted (Dask chooses where it runs). The makespan is measured in the client,
from the first submit to the last consumer's result. Used by ``bench_netns.py``.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vinework.testing.netns import NetnsCluster


def _produce(size: int) -> bytes:
    return bytes(size)


def _count(a: bytes, b: bytes) -> int:
    return len(memoryview(a)) + len(memoryview(b))


def client_main() -> None:
    """The client: connect, then run the DAG once for every ``RUN`` line on stdin."""
    from distributed import Client, wait

    from vinework.testing.netns import wait_for_idle_cpu

    sched, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    client = Client(sched, timeout=60)
    client.wait_for_workers(n, timeout=60)
    workers = sorted(client.scheduler_info()["workers"])  # "tcp://10.77.0.11:port", ...
    print("READY", flush=True)
    for cmd in sys.stdin:
        if cmd.strip() != "RUN":
            break
        idle = wait_for_idle_cpu()  # as vinework's manager does before its clock starts
        start = time.perf_counter()
        prods = [client.submit(_produce, size, key=f"p{i}-{start}", workers=[workers[i]],
                               pure=False) for i in range(n)]
        cons = [client.submit(_count, prods[i], prods[(i + 1) % n], key=f"c{i}-{start}",
                              pure=False) for i in range(n)]
        wait(prods)
        producers_done = time.perf_counter() - start
        counts = client.gather(cons)
        makespan = time.perf_counter() - start
        where = client.who_has(cons)
        placed = {str(i): sorted(where.get(c.key, ())) for i, c in enumerate(cons)}
        del prods, cons
        print("RESULT " + json.dumps({"makespan": makespan, "producers_done": producers_done,
                                      "counts": counts, "placed": placed,
                                      "idle_before": idle}), flush=True)
    client.close()


class DaskOnCluster:
    """A Dask scheduler, N workers and a client on ``cluster`` (stop with :meth:`close`)."""

    def __init__(self, cluster: NetnsCluster, base: str, size: int) -> None:
        self.cluster = cluster
        n = cluster.n_workers
        addr = cluster.manager_address
        port = 8786
        self.procs: list[subprocess.Popen[Any]] = []
        log = open(os.path.join(base, "dask.log"), "w")  # noqa: SIM115 (closed in close())
        self._log = log
        self.procs.append(cluster.popen(0, [
            sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", addr,
            "--port", str(port), "--no-dashboard"], stdout=log, stderr=log))
        sched = f"tcp://{addr}:{port}"
        for i in range(1, n + 1):
            self.procs.append(cluster.popen(i, [
                sys.executable, "-m", "distributed.cli.dask_worker", sched,
                "--host", cluster.address(i), "--nthreads", "1", "--no-nanny",
                "--memory-limit", "0", "--no-dashboard",
                "--local-directory", os.path.join(base, f"dask-w{i}")],
                stdout=log, stderr=log))
        self.client = cluster.popen(0, [sys.executable, os.path.abspath(__file__), sched,
                                        str(n), str(size)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=log, text=True)
        self.procs.append(self.client)
        if self._line(120) != "READY":
            raise RuntimeError("the Dask client did not start; see dask.log")

    def _line(self, timeout: float) -> str:
        assert self.client.stdout is not None
        until = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.client.stdout], [], [],
                                        max(0.0, until - time.monotonic()))
            if not ready:
                raise RuntimeError("the Dask client did not answer in time")
            text = self.client.stdout.readline()
            if not text:
                raise RuntimeError(f"the Dask client exited ({self.client.poll()})")
            if text.startswith(("READY", "RESULT ")):
                return text.strip()

    def run(self, timeout: float = 120.0) -> dict[str, Any]:
        """Run the DAG once; return the client's record (makespan, counts, placement)."""
        assert self.client.stdin is not None
        self.client.stdin.write("RUN\n")
        self.client.stdin.flush()
        text = self._line(timeout)
        res: dict[str, Any] = json.loads(text[len("RESULT "):])
        return res

    def close(self) -> None:
        if self.client.stdin is not None and self.client.poll() is None:
            try:
                self.client.stdin.write("STOP\n")
                self.client.stdin.close()
                self.client.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self._log.close()


if __name__ == "__main__":
    client_main()
