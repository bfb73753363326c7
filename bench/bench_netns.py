"""The 4 x 200 MB temp DAG on a simulated 1 Gbit/s cluster: vinework vs Dask distributed.

A ``NetnsCluster(4, rate="1gbit")``: every host, the manager's included, has its own
1 Gbit/s full-duplex cable to a switch, fairly shared between peers. Producer i writes
200 MB on its own host; consumer i reads the outputs of producers i and (i+1) mod 4.
This is a data-movement benchmark. Producers make 200 MB of zeros the cheapest way
each engine has: Dask's ``bytes(n)`` is calloc'd memory, vinework's ``truncate -s``
a sparse file (both read as zeros without anyone writing them). Consumers only read
and count their inputs: vinework's ``wc -lc a b`` reads every byte of both files
(counting lines, wc cannot answer from the file size), Dask's ``len(a) + len(b)``
counts the bytes its worker received. Neither engine is charged for hashing 400 MB.

Each round runs vinework (the manager in the manager's namespace, one 1-core worker
per worker host, peer transfers) and then Dask distributed (scheduler and client in
the manager's namespace, one 1-thread worker per worker host) on the same cluster, in
the same invocation; ``--rounds`` (default 10) rounds alternate the two so that the
machine's load hits both. Each engine's processes live for its own run only, and
each waits for the CPUs to be 90% idle before its clock starts (the 2 cores are shared
by all 5 "hosts"). Makespan = first submit to the last consumer's result.
Bytes are the hosts' cable counters (``eth0``, headers included) around each run:
"worker links" = bytes the worker hosts received, "manager link" = bytes the manager's
host sent plus received. The workers' caches are under ``--dir`` (default
``/dev/shm``: memory, as Dask keeps its data). ``--via-manager`` adds one vinework run with peer transfers
off (every temp goes worker -> manager -> worker) for comparison.

The ideal: each consumer runs on a host holding one of its two inputs, so it must
receive the other one, 200 MB; the 4 transfers use disjoint cables and run in
parallel: 200 MB / 1 Gbit/s = 1.6 s (the producers and the counting add to it). With
1500-byte frames the headers make it 1.67 s: what 4 raw ``os.sendfile`` streams
between the same hosts took here (1.66-1.68 s each, 4 at once).

Needs root and network namespaces. Run: ``python bench/bench_netns.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from netns_dask import DaskOnCluster  # noqa: E402
from netns_manager_script import SIZE, run_dag  # noqa: E402
from netns_raw import raw_transfers  # noqa: E402

from vinework.testing.netns import (  # noqa: E402
    NetnsCluster,
    netns_available,
    parse_rate,
    wait_for_idle_cpu,
)

N = 4
RATE = "1gbit"
MB = 1e6


def check_vinework(res: dict[str, Any], label: str) -> None:
    if not res["complete"] or not all(t["ok"] for t in res["tasks"]):
        raise RuntimeError(f"{label}: the DAG failed: {res['tasks']}")
    for t in res["tasks"]:
        # wc -lc a b: "lines bytes a", "lines bytes b", "lines bytes total"
        if t["role"] == "consumer" and [ln.split()[1:2] for ln in t["output"].splitlines()] \
                != [[str(SIZE)], [str(SIZE)], [str(2 * SIZE)]]:
            raise RuntimeError(f"{label}: consumer {t['i']} counted {t['output']!r}")


def local_consumers(res: dict[str, Any]) -> int:
    """How many of vinework's consumers ran on a host holding one of their inputs."""
    made = {t["i"]: t["worker"] for t in res["tasks"] if t["role"] == "producer"}
    return sum(1 for t in res["tasks"] if t["role"] == "consumer"
               and t["worker"] in (made[t["i"]], made[(t["i"] + 1) % N]))


def measured(cluster: NetnsCluster, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``run`` and add the bytes that crossed the worker cables and the manager's."""
    before = [cluster.link_bytes(i) for i in range(N + 1)]
    res = run()
    after = [cluster.link_bytes(i) for i in range(N + 1)]
    res["worker_rx"] = sum(after[i][1] - before[i][1] for i in range(1, N + 1))
    res["max_tx"] = max(after[i][0] - before[i][0] for i in range(1, N + 1))
    res["manager_link"] = sum(after[0][k] - before[0][k] for k in (0, 1))
    return res


def summary(label: str, runs: list[dict[str, Any]], ideal: float) -> float:
    spans = [r["makespan"] for r in runs]
    med = statistics.median(spans)
    print(f"  {label:9s} makespans: " + " ".join(f"{s:.2f}" for s in spans))
    print(f"  {label:9s} min {min(spans):.2f}  median {med:.2f}  max {max(spans):.2f} s"
          f"  (max / ideal {max(spans) / ideal:.2f})   worker links "
          f"{min(r['worker_rx'] for r in runs) / MB:.0f}-"
          f"{max(r['worker_rx'] for r in runs) / MB:.0f} MB per run, manager link "
          f"{max(r['manager_link'] for r in runs) / MB:.2f} MB at most")
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--via-manager", action="store_true")
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where the workers' caches go (default /dev/shm: memory, as Dask "
                         "keeps its data; the disk is not what this measures)")
    args = ap.parse_args()
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    ok, why = netns_available()
    if not ok:
        sys.exit(f"network namespaces unavailable: {why}")
    ideal = SIZE / (parse_rate(RATE) / 8)
    load = os.getloadavg()
    base = tempfile.mkdtemp(prefix="vinework-bench-netns-", dir=args.dir)
    vw: list[dict[str, Any]] = []
    dk: list[dict[str, Any]] = []
    raw: list[list[float]] = []
    raw_dag: list[float] = []  # per round: the slowest stream + its consumer, raw
    via: dict[str, Any] | None = None
    try:
        with NetnsCluster(N, rate=RATE) as cluster:
            for r in range(args.rounds):
                def one(r: int = r) -> dict[str, Any]:
                    return run_dag(cluster, base, size=SIZE, count=True, tag=f"r{r}")
                res = measured(cluster, one)
                check_vinework(res, f"vinework round {r}")
                vw.append(res)
                for d in os.listdir(base):  # free the temps' memory before the next round
                    if d.startswith(f"r{r}-"):
                        shutil.rmtree(os.path.join(base, d), ignore_errors=True)
                # Dask's cluster lives for its round only, as vinework's workers do: the
                # other engine's idle processes never share the 2 cores with a measured run
                dask = DaskOnCluster(cluster, base, SIZE)
                try:
                    d_res = measured(cluster, dask.run)
                finally:
                    dask.close()
                if d_res["counts"] != [2 * SIZE] * N:
                    raise RuntimeError(f"dask round {r} counted {d_res['counts']}")
                dk.append(d_res)
                wait_for_idle_cpu()
                streams = raw_transfers(cluster, base, SIZE)
                if streams["bytes"] != [SIZE] * N or streams["counted"] != [2 * SIZE] * N:
                    raise RuntimeError(f"raw round {r} moved {streams['bytes']}, counted "
                                       f"{streams['counted']}")
                raw.append(streams["seconds"])
                raw_dag.append(max(a + b for a, b in zip(streams["seconds"],
                                                         streams["consumer"], strict=True)))
                secs = [float(t[5]) for t in res["transfers"]]
                print(f"round {r}: vinework {res['makespan']:.2f} s (producers "
                      f"{res['producers_done']:.2f} s, transfers {min(secs):.2f}-"
                      f"{max(secs):.2f} s, {local_consumers(res)}/{N} "
                      f"consumers by an input, worker links {res['worker_rx'] / MB:.0f} "
                      f"MB, manager link {res['manager_link'] / MB:.2f} MB)   dask "
                      f"{d_res['makespan']:.2f} s (producers "
                      f"{d_res['producers_done']:.2f} s, worker links "
                      f"{d_res['worker_rx'] / MB:.0f} MB, busiest uplink "
                      f"{d_res['max_tx'] / MB:.0f} MB)   raw sendfile "
                      f"{min(raw[-1]):.2f}-{max(raw[-1]):.2f} s, raw with its consumers "
                      f"{raw_dag[-1]:.2f} s (wc {min(streams['consumer']):.2f}-"
                      f"{max(streams['consumer']):.2f} s)", flush=True)
            if args.via_manager:
                via = run_dag(cluster, base, size=SIZE, count=True, peer=False, tag="via")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    end_load = os.getloadavg()
    print(f"DAG: {N} producers x {SIZE // 10**6} MB, {N} consumers each reading and counting "
          f"2 of them; {N} hosts + manager, {RATE} links; {args.rounds} rounds alternating; "
          f"load average {load[0]:.2f} at start, {end_load[0]:.2f} at end (2 cores); "
          f"worker caches under {args.dir or tempfile.gettempdir()}")
    v_med = summary("vinework", vw, ideal)
    d_med = summary("dask", dk, ideal)
    slowest = [max(x) for x in raw]
    over = [r["makespan"] - max(float(t[5]) for t in r["transfers"]) for r in vw]
    print(f"  raw os.sendfile, the same 4 streams at once (the floor for the transfers): "
          f"slowest stream {min(slowest):.2f}-{max(slowest):.2f} s, median "
          f"{statistics.median(slowest):.2f}; vinework's makespan minus its slowest transfer "
          f"(producers, dispatch, the consumers' reading): {min(over):.2f}-{max(over):.2f} s, "
          f"median {statistics.median(over):.2f}")
    print(f"  raw DAG (the same streams, each followed at once by its consumer's wc on its "
          f"host; no producers' hashing, no dispatch, no manager): "
          f"{min(raw_dag):.2f}-{max(raw_dag):.2f} s, median {statistics.median(raw_dag):.2f}; "
          f"rounds where it is <= 1.2 x ideal: {sum(x <= 1.2 * ideal for x in raw_dag)}/"
          f"{len(raw_dag)}; vinework minus the raw DAG, per round: "
          + " ".join(f"{v['makespan'] - x:+.2f}" for v, x in zip(vw, raw_dag, strict=True)))
    print(f"  CPUs idle before the clock started (at least): vinework "
          f"{min(r['idle_before'] for r in vw):.2f}, dask {min(r['idle_before'] for r in dk):.2f}")
    print(f"  ideal (200 MB over one 1 Gbit/s cable) {ideal:.2f} s; vinework / dask median "
          f"{v_med / d_med:.2f}; vinework median / ideal {v_med / ideal:.2f}; vinework runs "
          f"<= 1.2 x ideal: {sum(r['makespan'] <= 1.2 * ideal for r in vw)}/{len(vw)}")
    print(f"  vinework intermediate bytes through the manager (its stats): "
          f"{max(r['stats']['bytes_sent'] + r['stats']['bytes_received'] for r in vw)} B at "
          f"most; consumers by an input: "
          f"{min(local_consumers(r) for r in vw)}-{max(local_consumers(r) for r in vw)}/{N}")
    if via is not None:
        s = via["stats"]
        print(f"  through the manager (peer transfers off): makespan {via['makespan']:.2f} s, "
              f"manager sent {s['bytes_sent'] / MB:.0f} MB, received "
              f"{s['bytes_received'] / MB:.0f} MB")


if __name__ == "__main__":
    main()
