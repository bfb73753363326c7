"""A chain of 50 command tasks, each passing a 100 MB temp to the next.

Task 0 makes the temp (``head -c 100000000 /dev/urandom > out``) and prints its md5;
tasks 1..48 copy it (``cat in > out``); task 49 prints the md5 of what reached it,
which must match. Two local 2-core workers, 1-core tasks, all 50 tasks submitted at
once. Run twice: with peer transfers (the default) and with
``m.disable_peer_transfers()``; for each the makespan (first submit to last task
back) and the bytes that went through the manager.

Disk: the manager does not prune temps by itself yet (the ``prune`` tunable has no
effect), so 50 x 100 MB = 5 GB would pile up per run. The benchmark therefore calls
``m.undeclare_file(temp)`` for each temp as soon as the task reading it is back
(undeclaring deletes every worker's copy), which keeps at most ~3 temps on disk.

Placement note: each task prefers the worker already holding its input, and in a chain
that worker is always free when the next task becomes ready, so the chain normally
stays on one worker and no temp has to move at all, with or without peer transfers.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from common import local_workers

import vinework as vine

N = 50
SIZE = 100_000_000
TASKVINE = "2.8-12.9 s"


def run_chain(m: vine.Manager, n: int) -> tuple[float, int, int, int, set[str]]:
    """Run the chain; return (makespan, bytes to workers, bytes from workers, peer bytes,
    workers used)."""
    before = m.stats
    temps = [m.declare_temp() for _ in range(n - 1)]
    tasks: list[vine.Task] = []
    for i in range(n):
        if i == 0:
            t = vine.Task(f"head -c {SIZE} /dev/urandom > out && md5sum < out")
        elif i == n - 1:
            t = vine.Task("md5sum < in")
        else:
            t = vine.Task("cat in > out")
        if i > 0:
            t.add_input(temps[i - 1], "in")
        if i < n - 1:
            t.add_output(temps[i], "out")
        t.set_cores(1)
        tasks.append(t)
    start = time.perf_counter()
    ids = {m.submit(t): i for i, t in enumerate(tasks)}
    done = 0
    deadline = time.monotonic() + 600
    while done < n:
        t = m.wait(5)
        if t is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {n} chain tasks finished")
            continue
        if not t.successful():
            raise RuntimeError(f"task {t.id} failed: {t.result} {t.exit_code} {t.output!r}")
        i = ids[t.id]
        if i > 0:
            m.undeclare_file(temps[i - 1])  # its only reader is done: free the disk
        done += 1
    makespan = time.perf_counter() - start
    first, last = tasks[0].output.split()[0], tasks[-1].output.split()[0]
    if first != last:
        raise RuntimeError(f"checksum mismatch: made {first}, received {last}")
    if n > 1:
        m.undeclare_file(temps[-1])
    after = m.stats
    return (makespan, after.bytes_sent - before.bytes_sent,
            after.bytes_received - before.bytes_received, after.bytes_peer - before.bytes_peer,
            {t.worker for t in tasks})


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N
    rows = []
    with tempfile.TemporaryDirectory(prefix="vinework-bench-chain-") as tmp:
        for mode in ("peer transfers", "no peer transfers"):
            with vine.Manager(port=0, run_info_path=os.path.join(tmp, "run")) as m, \
                    local_workers(m, 2, cores=2, disk=8000, workdir=os.path.join(tmp, "w")):
                if mode == "no peer transfers":
                    m.disable_peer_transfers()
                rows.append((mode, *run_chain(m, n)))
    print(f"chain of {n} tasks passing a {SIZE // 10**6} MB temp, 2 workers x 2 cores, "
          f"1-core tasks")
    for mode, secs, sent, received, peer, used in rows:
        print(f"  {mode:18s} makespan {secs:6.2f} s   bytes at the manager: "
              f"sent {sent / 1e6:7.1f} MB, received {received / 1e6:7.1f} MB   "
              f"peer {peer / 1e6:7.1f} MB   workers used: {', '.join(sorted(used))}")
    print(f"  TaskVine (reference): {TASKVINE}")


if __name__ == "__main__":
    main()
