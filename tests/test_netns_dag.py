"""A temp DAG across four simulated hosts: temps stay on workers and move worker to worker.

On a ``NetnsCluster(4, rate="1gbit")`` the manager runs in the manager's namespace (a
subprocess: ``tests/netns_manager_script.py``) and one 1-core worker in each worker
namespace. Four producers each write a 200 MB temp on their own host; consumer i reads
temps i and i+1 (mod 4) and prints ``cat a b | md5sum``. The temps' bytes must go
worker to worker only: none may pass through the manager.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from netns_manager_script import SIZE, expected_md5, run_dag

from vinework.testing.netns import NetnsCluster, netns_available

AVAILABLE, REASON = netns_available()
if not AVAILABLE and "CI" not in os.environ:
    pytest.skip(f"network namespaces unavailable: {REASON}", allow_module_level=True)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

N = 4
MB = 10**6


@pytest.fixture(autouse=True)
def _require_netns() -> None:
    if not AVAILABLE:  # only reached with CI set: a CI machine must be able to run these
        pytest.fail(f"network namespaces unavailable on CI: {REASON}")


def test_temps_move_peer_to_peer() -> None:
    base = tempfile.mkdtemp(prefix="vinework-netns-dag-")
    try:
        with NetnsCluster(N, rate="1gbit") as cluster:
            res = run_dag(cluster, base, peer=True, size=SIZE, timeout=120)
            addresses = {cluster.address(i) for i in range(1, N + 1)}
    finally:
        shutil.rmtree(base, ignore_errors=True)

    assert res["complete"], res
    tasks = res["tasks"]
    bad = [t for t in tasks if not t["ok"]]
    assert not bad, bad
    # each producer ran on its own host (1-core workers, 1-core tasks)
    producers = {t["i"]: t for t in tasks if t["role"] == "producer"}
    assert sorted(producers) == list(range(N))
    assert len({t["worker"] for t in producers.values()}) == N
    assert {t["host"] for t in producers.values()} == addresses
    # every consumer saw exactly the bytes its two producers made
    consumers = {t["i"]: t for t in tasks if t["role"] == "consumer"}
    assert sorted(consumers) == list(range(N))
    for i, t in consumers.items():
        got = t["output"].split()[0] if t["output"].split() else ""
        assert got == expected_md5([i, (i + 1) % N], SIZE), (i, t)
    # the temps moved worker to worker, never through the manager
    stats = res["stats"]
    assert stats["bytes_peer"] >= N * SIZE, stats
    assert stats["bytes_sent"] < MB and stats["bytes_received"] < MB, stats
    assert res["transfers"], "no transfer recorded in the transaction log"
    for _, _, src, dst, size, _ in res["transfers"]:
        assert "manager" not in (src, dst) and int(size) == SIZE, res["transfers"]
