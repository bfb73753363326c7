"""The manager side of ``tests/test_netns_fault.py`` (a worker's link cut for 10 s).

Run inside the manager's namespace; it talks to the test by lines. Out (stdout):
``PORT <port>``, ``PRODUCED`` (the temp is on the first worker, start the second),
``READY_TO_CUT`` (both workers connected), ``DETECTED <seconds>`` (the cut worker was
declared lost, seconds after ``CUT``), ``RESULT <json>``. In (stdin): ``CUT`` (the
test has cut the first worker's link), ``RESTORED`` (the link is back).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

KEEPALIVE_INTERVAL = 1.0
KEEPALIVE_TIMEOUT = 3.0
LINES = 200_000


def say(text: str) -> None:
    print(text, flush=True)


def expect(word: str) -> float:
    """Block until the test writes ``word`` on stdin; return the time it arrived."""
    got = sys.stdin.readline().strip()
    if got != word:
        sys.exit(f"expected {word!r} on stdin, got {got!r}")
    return time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-info", required=True)
    ap.add_argument("--rejoin-timeout", type=float, default=30.0)
    args = ap.parse_args()

    import vinework as vine
    from vinework.txnlog import read_log

    m = vine.Manager(port=0, run_info_path=args.run_info)
    m.tune("keepalive-interval", KEEPALIVE_INTERVAL)
    m.tune("keepalive-timeout", KEEPALIVE_TIMEOUT)
    say(f"PORT {m.port}")

    def until(cond: Callable[[], bool], timeout: float, what: str) -> float:
        start = time.monotonic()
        while not cond():
            if time.monotonic() - start > timeout:
                sys.exit(f"timed out after {timeout} s waiting for {what}; "
                         f"stats {m.stats.as_dict()}")
            time.sleep(0.05)
        return time.monotonic()

    def run(t: Any, timeout: float) -> Any:
        tid = m.submit(t)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = m.wait(0.5)
            if done is not None and done.id == tid:
                return done
        sys.exit(f"task {tid} ({t.command}) did not finish in {timeout} s")

    def record(t: Any) -> dict[str, Any]:
        return {"id": t.id, "ok": t.successful(), "result": str(t.result),
                "exit_code": t.exit_code, "output": (t.output or "").strip(), "worker": t.worker}

    until(lambda: m.workers_connected == 1, 30, "the first worker")
    temp = m.declare_temp()
    producer = vine.Task(f"seq 1 {LINES} > out")
    producer.add_output(temp, "out")
    producer.set_cores(1)
    produced = record(run(producer, 30))
    say("PRODUCED")
    until(lambda: m.workers_connected == 2, 30, "the second worker")
    say("READY_TO_CUT")

    cut_at = expect("CUT")
    consumer = vine.Task("wc -l < in")
    consumer.add_input(temp, "in")
    consumer.set_cores(1)
    tid = m.submit(consumer)
    detected: float | None = None
    done = None
    deadline = cut_at + 60
    while (done is None or detected is None) and time.monotonic() < deadline:
        t = m.wait(0.1)
        if t is not None and t.id == tid:
            done = t
        if detected is None and m.stats.workers_lost >= 1:
            detected = time.monotonic() - cut_at
            say(f"DETECTED {detected:.3f}")
    after_cut = m.stats.as_dict()

    restored_at = expect("RESTORED")
    rejoin: float | None = None
    with_deadline = restored_at + args.rejoin_timeout
    while time.monotonic() < with_deadline:
        s = m.stats
        if s.workers_joined >= 3 and s.workers_connected == 2:
            rejoin = time.monotonic() - restored_at
            break
        time.sleep(0.05)
    final = record(run(vine.Task("echo after-rejoin"), 30)) if rejoin is not None else None
    stats = m.stats.as_dict()
    m.undeclare_file(temp)
    m.close()
    workers = [[round(us / 1e6, 3), *f] for us, kind, f in read_log(m.txn_path)
               if kind == "WORKER" and len(f) >= 2]
    say("RESULT " + json.dumps({
        "producer": produced, "consumer": record(done) if done is not None else None,
        "detected": detected, "rejoin": rejoin, "final": final, "after_cut": after_cut,
        "stats": stats, "workers": workers,
    }))


if __name__ == "__main__":
    main()
