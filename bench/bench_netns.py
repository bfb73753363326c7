"""The 4-producer / 4-consumer temp DAG on a simulated 1 Gbit cluster: peers vs the manager.

A ``NetnsCluster(4, rate="1gbit")`` (every host, the manager included, has its own
1 Gbit/s full-duplex cable to a switch, fairly shared between peers). The manager runs
in its namespace, one 1-core worker in each worker namespace. Producer i writes a
200 MB temp on its own host; consumer i reads temps i and i+1 (mod 4) and prints their
md5 (see ``tests/netns_manager_script.py``). Run twice on the same cluster: with peer
transfers, and with ``m.disable_peer_transfers()`` (every remote temp goes worker ->
manager -> worker). Makespan = first submit to last task back; it includes the
producers and the consumers' md5 (CPU: the machine has 2 cores for 4 workers).

The ideal bound counts only link time for the data that must move: each consumer runs
on a host holding one of its two temps, so it must receive the other one, 200 MB. 4
temps x 200 MB cross the network in total.

Needs root and network namespaces. Run: ``python bench/bench_netns.py``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from netns_manager_script import SIZE, expected_md5, run_dag  # noqa: E402

from vinework.testing.netns import NetnsCluster, netns_available, parse_rate  # noqa: E402

N = 4
RATE = "1gbit"


def check(res: dict, label: str) -> None:
    if not res["complete"] or not all(t["ok"] for t in res["tasks"]):
        raise RuntimeError(f"{label}: the DAG failed: {res['tasks']}")
    for t in res["tasks"]:
        if t["role"] == "consumer":
            want = expected_md5([t["i"], (t["i"] + 1) % N], SIZE)
            if t["output"].split()[:1] != [want]:
                raise RuntimeError(f"{label}: consumer {t['i']} got {t['output']!r}")


def main() -> None:
    ok, why = netns_available()
    if not ok:
        sys.exit(f"network namespaces unavailable: {why}")
    link = parse_rate(RATE) / 8  # bytes/s per direction of one cable
    base = tempfile.mkdtemp(prefix="vinework-bench-netns-")
    try:
        with NetnsCluster(N, rate=RATE) as cluster:
            peer = run_dag(cluster, base, peer=True, size=SIZE)
            check(peer, "peer")
            shutil.rmtree(base, ignore_errors=True)
            os.makedirs(base)
            via = run_dag(cluster, base, peer=False, size=SIZE)
            check(via, "no peer")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    moved = N * SIZE
    t1 = SIZE / link  # one 200 MB temp over one 1 Gbit/s cable
    bound_peer = t1
    bound_via_duplex = N * t1 + t1
    bound_via_twice = 2 * N * t1
    print(f"DAG: {N} producers x {SIZE // 10**6} MB temps, {N} consumers each reading 2 "
          f"temps; {N} hosts + manager, {RATE} links")
    for label, r in (("peer transfers", peer), ("through the manager", via)):
        s = r["stats"]
        print(f"  {label:20s} makespan {r['makespan']:6.2f} s (producers done at "
              f"{r['producers_done']:5.2f} s)   peer {s['bytes_peer'] / 1e6:6.0f} MB   "
              f"manager sent {s['bytes_sent'] / 1e6:6.0f} MB, received "
              f"{s['bytes_received'] / 1e6:6.0f} MB")
    for label, r in (("peer", peer), ("via manager", via)):
        secs = sorted(float(f[5]) for f in r["transfers"])
        print(f"  {label:12s} transfers (txn log): {len(secs)}, each "
              f"{secs[0]:.2f}-{secs[-1]:.2f} s" if secs else f"  {label}: no transfers")
    print("  ideal link-time bounds (data movement only, after the producers):")
    print(f"    peer transfers      {bound_peer:5.2f} s : each consumer receives one remote "
          f"{SIZE // 10**6} MB temp on its own cable; the {N} transfers use disjoint links "
          f"(each host sends one and receives one temp) and run in parallel: "
          f"{SIZE // 10**6} MB / {RATE}")
    print(f"    through the manager {bound_via_duplex:5.2f} s : all {moved // 10**6} MB must "
          f"enter the manager over its single cable ({N * t1:.1f} s) and leave it again; with "
          f"full duplex and perfect per-file pipelining only the last file's way out "
          f"({t1:.1f} s) adds")
    print(f"                        {bound_via_twice:5.2f} s : if all temps come in together "
          f"(as here: the 4 retrievals share the link) and only then go out, the bytes cross "
          f"the manager's link twice: 2 x {moved // 10**6} MB / {RATE}")
    print(f"  measured makespan minus producer phase: peer "
          f"{peer['makespan'] - peer['producers_done']:.2f} s, through the manager "
          f"{via['makespan'] - via['producers_done']:.2f} s")


if __name__ == "__main__":
    main()
