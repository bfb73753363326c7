"""The 4-producer / 4-consumer temp DAG on a simulated cluster (``NetnsCluster``).

Run as a script (inside the manager's namespace) it is the manager: it listens on all
addresses, prints ``PORT <port>``, waits for the workers, runs the DAG and prints one
line ``RESULT <json>`` with the tasks, their placement, the timings, the manager's
stats and the transfers from its transaction log. Imported, it offers
:func:`run_dag`, which starts that manager and one worker per worker host and returns
the parsed result (used by ``tests/test_netns_dag.py`` and ``bench/bench_netns.py``).

The DAG, for N workers (1 core each, 1-core tasks, so each producer gets its own host):
producer i writes ``size`` bytes of ``yes vinework-temp-i`` into temp i; consumer i
reads temps i and (i+1) mod N and prints ``cat a b | md5sum``. With ``--count`` (the
data-movement variant of ``bench/bench_netns.py``) producer i makes a sparse file of
``size`` zeros (``truncate -s``) and consumer i prints ``wc -lc a b``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vinework.testing.netns import NetnsCluster

SIZE = 200_000_000


def line(i: int) -> bytes:
    """What ``yes`` repeats for producer ``i``."""
    return f"vinework-temp-{i}\n".encode()


def expected_md5(parts: list[int], size: int) -> str:
    """md5 of the concatenation of the producers' outputs ``parts`` (as consumers see it)."""
    h = hashlib.md5()
    for i in parts:
        ln = line(i)
        block = ln * ((1 << 20) // len(ln))
        full, rest = divmod(size, len(block))
        for _ in range(full):
            h.update(block)
        h.update(block[:rest])
    return h.hexdigest()


# ---------------------------------------------------------------------- the manager
def manager_main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--run-info", required=True)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--count", action="store_true",
                    help="data movement only: producers make sparse zero files, consumers "
                         "read and count their bytes")
    ap.add_argument("--connect-timeout", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=150.0)
    args = ap.parse_args()

    import vinework as vine
    from vinework.testing.netns import wait_for_idle_cpu
    from vinework.txnlog import read_log

    n = args.workers
    # listens on every address; its workers exit with it (shutdown=True)
    m = vine.Manager(port=0, run_info_path=args.run_info, shutdown=True)
    print(f"PORT {m.port}", flush=True)
    deadline = time.monotonic() + args.connect_timeout
    while m.workers_connected < n:
        if time.monotonic() > deadline:
            sys.exit(f"only {m.workers_connected} of {n} workers connected")
        time.sleep(0.05)
    if args.no_peer:
        m.disable_peer_transfers()
    hosts = {w["worker_id"]: w["host"] for w in m.worker_stats()}
    temps = [m.declare_temp() for _ in range(n)]
    idle = wait_for_idle_cpu()  # the workers' start-up is over before the clock starts
    role: dict[int, tuple[str, int]] = {}
    start = time.perf_counter()
    for i in range(n):
        t = vine.Task(f"truncate -s {args.size} out" if args.count
                      else f"yes vinework-temp-{i} | head -c {args.size} > out")
        t.add_output(temps[i], "out")
        t.set_cores(1)
        role[m.submit(t)] = ("producer", i)
    for i in range(n):
        t = vine.Task("wc -lc a b" if args.count else "cat a b | md5sum")
        t.add_input(temps[i], "a")
        t.add_input(temps[(i + 1) % n], "b")
        t.set_cores(1)
        role[m.submit(t)] = ("consumer", i)
    tasks = []
    phase = {"producer": 0.0, "consumer": 0.0}
    deadline = time.monotonic() + args.timeout
    while len(tasks) < 2 * n and time.monotonic() < deadline:
        t = m.wait(1)
        if t is None:
            continue
        kind, i = role[t.id]
        phase[kind] = max(phase[kind], time.perf_counter() - start)
        tasks.append({"role": kind, "i": i, "id": t.id, "ok": t.successful(),
                      "result": str(t.result), "exit_code": t.exit_code,
                      "output": t.output or "", "worker": t.worker,
                      "host": hosts.get(t.worker, "?")})
    makespan = time.perf_counter() - start
    stats = m.stats.as_dict()
    for f in temps:
        m.undeclare_file(f)
    m.close()  # the workers are told to exit
    transfers = [f[:6] for _, kind, f in read_log(m.txn_path)
                 if kind == "TRANSFER" and len(f) >= 6 and f[1] == "DONE"]
    print("RESULT " + json.dumps({
        "complete": len(tasks) == 2 * n, "makespan": makespan,
        "producers_done": phase["producer"], "tasks": tasks, "stats": stats,
        "hosts": hosts, "transfers": transfers, "peer": not args.no_peer, "idle_before": idle,
    }), flush=True)


# ---------------------------------------------------------------------- the driver
def run_dag(cluster: NetnsCluster, base: str, *, peer: bool = True, size: int = SIZE,
            timeout: float = 150.0, count: bool = False, tag: str = "") -> dict[str, Any]:
    """Run the DAG on ``cluster``: the manager on host 0, one 1-core worker per other host.

    ``count``: the data-movement variant (producers ``truncate -s`` a sparse file of
    zeros, consumers print ``wc -lc a b``, which reads both files). ``tag`` names the run's directories under ``base``.

    Worker directories and the manager's run directory go under ``base`` (the caller
    deletes it). Returns the manager's RESULT record; raises RuntimeError on failure.
    """
    n = cluster.n_workers
    tag = tag or ("peer" if peer else "nopeer")
    err_path = os.path.join(base, f"manager-{tag}.err")
    with open(err_path, "w") as err:
        mgr = cluster.popen(0, [sys.executable, os.path.abspath(__file__), "--workers", str(n),
                                "--size", str(size), "--timeout", str(timeout),
                                "--run-info", os.path.join(base, f"manager-{tag}"),
                                *([] if peer else ["--no-peer"]),
                                *(["--count"] if count else [])],
                            stdout=subprocess.PIPE, stderr=err, text=True)

    def fail(why: str) -> RuntimeError:
        if mgr.poll() is None:
            mgr.kill()
        mgr.wait()
        with open(err_path) as f:
            return RuntimeError(f"{why}; manager exit {mgr.returncode}; stderr:\n{f.read()[-3000:]}")

    def next_line(until: float) -> str:
        assert mgr.stdout is not None
        ready, _, _ = select.select([mgr.stdout], [], [], max(0.0, until - time.monotonic()))
        if not ready:
            raise fail("the manager did not answer in time")
        text: str = mgr.stdout.readline()
        if not text:
            raise fail("the manager exited early")
        return text

    first = next_line(time.monotonic() + 30)
    if not first.startswith("PORT "):
        raise fail(f"unexpected first line {first!r}")
    port = int(first.split()[1])
    workers = [cluster.popen(i, [sys.executable, "-m", "vinework", "worker",
                                 cluster.manager_address, str(port), "--cores", "1",
                                 "--memory", "1000", "--disk", str(8 * size // 10**6 + 1000),
                                 "--workdir", os.path.join(base, f"{tag}-w{i}"),
                                 "--timeout", "30"])
               for i in range(1, n + 1)]
    until = time.monotonic() + timeout + 40
    while True:
        text = next_line(until)
        if text.startswith("RESULT "):
            result: dict[str, Any] = json.loads(text[len("RESULT "):])
            break
    mgr.wait(timeout=20)
    for w in workers:  # the run is over: a worker that waits for a next manager is ended
        try:
            w.wait(timeout=2)
        except subprocess.TimeoutExpired:
            w.terminate()
            try:
                w.wait(timeout=5)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
    return result


if __name__ == "__main__":
    manager_main()
