"""A worker's link is cut for 10 s, then restored, on a simulated two-worker cluster.

The manager (``tests/netns_fault_manager.py``, in the manager's namespace; keepalive
interval 1 s, timeout 3 s) has a producer write a temp on worker 1 (``w1``), then
worker 2 joins and the test cuts worker 1's cable. A consumer of the temp is
submitted: the manager must declare ``w1`` lost within its keepalive timeout (long
before the link comes back), re-run the producer on worker 2 and finish the consumer
there. After 10 s the link is restored, and worker 1 must rejoin under a new id and
run a task.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest
from netns_fault_manager import KEEPALIVE_TIMEOUT, LINES

from vinework.testing.netns import NetnsCluster, netns_available

AVAILABLE, REASON = netns_available()
if not AVAILABLE and "CI" not in os.environ:
    pytest.skip(f"network namespaces unavailable: {REASON}", allow_module_level=True)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

CUT_SECONDS = 10.0
REJOIN_TIMEOUT = 30.0
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netns_fault_manager.py")


@pytest.fixture(autouse=True)
def _require_netns() -> None:
    if not AVAILABLE:  # only reached with CI set: a CI machine must be able to run these
        pytest.fail(f"network namespaces unavailable on CI: {REASON}")


def _run_scenario(cluster: NetnsCluster, base: str) -> dict[str, Any]:
    err_path = os.path.join(base, "manager.err")
    with open(err_path, "w") as err:
        mgr = cluster.popen(0, [sys.executable, SCRIPT, "--run-info", os.path.join(base, "run"),
                                "--rejoin-timeout", str(REJOIN_TIMEOUT)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
    assert mgr.stdin is not None and mgr.stdout is not None

    def fail(why: str) -> AssertionError:
        if mgr.poll() is None:
            mgr.kill()
        mgr.wait()
        with open(err_path) as f:
            tail = f.read()[-3000:]
        return AssertionError(f"{why}; manager exit {mgr.returncode}; stderr:\n{tail}")

    def next_line(timeout: float) -> str:
        assert mgr.stdout is not None
        ready, _, _ = select.select([mgr.stdout], [], [], timeout)
        if not ready:
            raise fail("the manager did not answer in time")
        text: str = mgr.stdout.readline()
        if not text:
            raise fail("the manager exited early")
        return text.strip()

    def expect(prefix: str, timeout: float) -> str:
        text = next_line(timeout)
        if not text.startswith(prefix):
            raise fail(f"expected {prefix!r} from the manager, got {text!r}")
        return text[len(prefix):].strip()

    def tell(word: str) -> None:
        assert mgr.stdin is not None
        mgr.stdin.write(word + "\n")
        mgr.stdin.flush()

    port = int(expect("PORT", 30))

    def start_worker(i: int) -> subprocess.Popen[Any]:
        return cluster.popen(i, [sys.executable, "-m", "vinework", "worker",
                                 cluster.manager_address, str(port), "--cores", "1",
                                 "--memory", "1000", "--disk", "1000",
                                 "--workdir", os.path.join(base, f"w{i}"), "--timeout", "60"])

    workers = [start_worker(1)]
    expect("PRODUCED", 40)
    workers.append(start_worker(2))
    expect("READY_TO_CUT", 40)

    cluster.cut(1)
    cut_at = time.monotonic()
    tell("CUT")
    try:
        # DETECTED comes within the keepalive timeout; a late one is checked by the caller
        detected = float(expect("DETECTED", CUT_SECONDS + 20))
    finally:
        time.sleep(max(0.0, cut_at + CUT_SECONDS - time.monotonic()))
        cluster.restore(1)
    tell("RESTORED")
    result: dict[str, Any] = json.loads(expect("RESULT", REJOIN_TIMEOUT + 60))
    result["detected_by_test"] = detected
    mgr.wait(timeout=20)
    for w in workers:  # told to shut down by the manager's close
        try:
            w.wait(timeout=10)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
    return result


def test_cut_link_detected_recovered_and_rejoined() -> None:
    base = tempfile.mkdtemp(prefix="vinework-netns-fault-")
    try:
        with NetnsCluster(2, rate="1gbit") as cluster:
            res = _run_scenario(cluster, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("fault result:", json.dumps(res))

    # the producer ran on worker 1 before the cut
    assert res["producer"]["ok"] and res["producer"]["worker"] == "w1", res["producer"]
    # the manager noticed the cut within its keepalive timeout, well before the restore
    detected = res["detected"]
    assert detected is not None, res
    assert detected < CUT_SECONDS and detected <= KEEPALIVE_TIMEOUT + 4, res
    # the consumer succeeded on worker 2 after the lost temp was remade there
    consumer = res["consumer"]
    assert consumer is not None and consumer["ok"], res
    assert consumer["output"] == str(LINES), consumer
    assert consumer["worker"] != "w1", consumer
    after_cut = res["after_cut"]
    assert after_cut["workers_lost"] == 1 and after_cut["tasks_recovery"] == 1, after_cut
    # worker 1 came back under a new id and ran a task
    assert res["rejoin"] is not None, res
    stats = res["stats"]
    assert stats["workers_joined"] == 3 and stats["workers_lost"] == 1, stats
    assert res["final"] is not None and res["final"]["ok"], res
    assert res["final"]["output"] == "after-rejoin", res["final"]
    # the transaction log: w1 disconnected, and a new worker connected afterwards
    events = [(e[1], e[2]) for e in res["workers"]]  # [time, worker_id, kind, ...]
    assert ("w1", "DISCONNECTION") in events, events
    lost_at = events.index(("w1", "DISCONNECTION"))
    later = [wid for wid, kind in events[lost_at + 1:] if kind == "CONNECTION"]
    assert later and all(wid not in ("w1", "w2") for wid in later), events
