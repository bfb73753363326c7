"""Peer-transfer throughput: a 1 GiB temp moved between two workers on loopback.

What is timed: only the worker-to-worker copy, as the manager's transaction log
records it (``TRANSFER <file> DONE <src> <dest> <bytes> <seconds>``; the seconds are
the consumer worker's own measure, from connecting to the source to the last byte
written to its cache).

The raw baseline, measured in the same run: a plain ``os.sendfile`` of a 1 GiB file over
loopback TCP into a separate receiver process that writes it to a file on the same disk
(the same work a real transfer does; see /work/shared/notes/python-speed.md).
Baseline and peer transfer alternate for ``ROUNDS`` rounds (default 5), with ``os.sync()`` before
each so neither inherits the other's dirty pages; medians (and bests) are reported.
The machine may be shared: other processes' load shows up as round-to-round noise.

Placement: two 2-core workers. The producer (2 cores) runs on one of them. A 2-core
"blocker" that also lists the temp as an input is submitted before the consumer, so it
is placed on the producer's worker (the worker holding the input wins); the 2-core
consumer must then run on the other worker and fetch the temp from its peer. The
blocker is cancelled once the consumer is done.

Disk: at most 2 GiB at a time (source + copy); everything is deleted at the end.
Run: ``python bench/bench_transfer.py [ROUNDS]``.
"""

from __future__ import annotations

import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from common import drain, local_workers

import vinework as vine
from vinework.txnlog import read_log

SIZE = 1 << 30
GOAL = 0.7

# Receives one file: prints its port, then for the connection: an 8-byte size, the bytes
# (written to argv[1] in 1 MiB chunks), then answers b"k" and prints the seconds it took
# from accept to the last byte written.
RECEIVER = r"""
import os, socket, sys, time
path = sys.argv[1]
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
print(ls.getsockname()[1], flush=True)
c, _ = ls.accept()
start = time.monotonic()
hdr = b""
while len(hdr) < 8:
    hdr += c.recv(8 - len(hdr))
size = int.from_bytes(hdr, "big")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
buf = bytearray(1 << 20)
view = memoryview(buf)
got = 0
while got < size:
    n = c.recv_into(view, min(len(buf), size - got))
    if n == 0:
        sys.exit("sender closed early")
    mv = view[:n]
    while mv:
        mv = mv[os.write(fd, mv):]
    got += n
os.close(fd)
secs = time.monotonic() - start
c.sendall(b"k")
print(secs, flush=True)
"""


def baseline_once(tmp: str) -> float:
    """Seconds for one raw sendfile of a fresh 1 GiB file into a receiver process."""
    src = os.path.join(tmp, "baseline-src")
    dst = os.path.join(tmp, "baseline-dst")
    subprocess.run(f"head -c {SIZE} /dev/zero > {src}", shell=True, check=True)
    os.sync()
    rx = subprocess.Popen([sys.executable, "-c", RECEIVER, dst], stdout=subprocess.PIPE,
                          text=True)
    try:
        assert rx.stdout is not None
        ready, _, _ = select.select([rx.stdout], [], [], 10)
        assert ready, "receiver did not start"
        port = int(rx.stdout.readline())
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as s, open(src, "rb") as f:
            s.sendall(SIZE.to_bytes(8, "big"))
            offset = 0
            while offset < SIZE:
                n = os.sendfile(s.fileno(), f.fileno(), offset, SIZE - offset)
                if n == 0:
                    raise RuntimeError("sendfile returned 0")
                offset += n
            assert s.recv(1) == b"k"
        sender_secs = time.monotonic() - start
        rx_secs = float(rx.stdout.readline())
        rx.wait(10)
        assert os.path.getsize(dst) == SIZE
        # the sender's view (connect .. receiver's ack) includes all the receiver's work
        return max(sender_secs, rx_secs)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
        for p in (src, dst):
            if os.path.exists(p):
                os.unlink(p)


def peer_once(m: vine.Manager) -> tuple[str, str]:
    """Produce a 1 GiB temp on one worker and consume it on the other; returns (temp, dest)."""
    temp = m.declare_temp()
    prod = vine.Task(f"head -c {SIZE} /dev/zero > out")
    prod.add_output(temp, "out")
    prod.set_cores(2)
    m.submit(prod)
    (p,) = drain(m, 1, timeout=120)
    os.sync()  # start the transfer without the producer's dirty pages pending
    blocker = vine.Task("sleep 600")
    blocker.add_input(temp, "in")
    blocker.set_cores(2)
    blocker.set_priority(10)
    bid = m.submit(blocker)
    cons = vine.Task("test $(stat -c %s in) -eq " + str(SIZE))
    cons.add_input(temp, "in")
    cons.set_cores(2)
    m.submit(cons)
    (c,) = drain(m, 1, timeout=120)
    m.cancel_by_task_id(bid)
    deadline = time.monotonic() + 30
    while True:
        t = m.wait(1)
        if t is not None and t.id == bid:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("blocker did not come back after cancel")
    if c.worker == p.worker:
        raise RuntimeError(f"consumer ran on the producer's worker {p.worker}: no transfer")
    m.undeclare_file(temp)
    return temp.cache_name, c.worker


def peer_seconds(txn_path: str, names: list[str]) -> list[tuple[float, str, str, int]]:
    """(seconds, source, dest, bytes) of each named temp's worker-to-worker transfer."""
    found: dict[str, tuple[float, str, str, int]] = {}
    for _, kind, f in read_log(txn_path):
        if kind == "TRANSFER" and len(f) >= 6 and f[1] == "DONE" and f[0] in names:
            if f[2] == "manager" or f[3] == "manager":
                raise RuntimeError(f"{f[0]} went through the manager: {f}")
            found[f[0]] = (float(f[5]), f[2], f[3], int(f[4]))
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"no TRANSFER DONE record for {missing}")
    return [found[n] for n in names]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    base: list[float] = []
    names: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vinework-bench-transfer-") as tmp:
        m = vine.Manager(port=0, run_info_path=os.path.join(tmp, "run"))
        try:
            with local_workers(m, 2, cores=2, disk=8000, workdir=os.path.join(tmp, "workers")):
                for _ in range(rounds):
                    base.append(baseline_once(tmp))
                    names.append(peer_once(m)[0])
            stats = m.stats
        finally:
            m.close()
        peers = peer_seconds(m.txn_path, names)
    if stats.bytes_sent or stats.bytes_received:
        raise RuntimeError(f"bytes went through the manager: {stats}")
    gb = SIZE / 1e9
    print(f"1 GiB over loopback, {rounds} rounds (receiver writes to {tempfile.gettempdir()})")
    for i, (b, (s, src, dst, n)) in enumerate(zip(base, peers)):
        assert n == SIZE
        print(f"  round {i + 1}: raw sendfile {b:6.3f} s ({gb / b:5.2f} GB/s)   "
              f"peer {src}->{dst} {s:6.3f} s ({gb / s:5.2f} GB/s)")
    b_med = statistics.median(base)
    p_med = statistics.median(s for s, *_ in peers)
    b_best = min(base)
    p_best = min(s for s, *_ in peers)
    ratio = b_med / p_med
    print(f"raw sendfile baseline:  {gb / b_med:6.2f} GB/s median ({b_med:.3f} s), "
          f"best {gb / b_best:.2f} GB/s")
    print(f"vinework peer transfer: {gb / p_med:6.2f} GB/s median ({p_med:.3f} s), "
          f"best {gb / p_best:.2f} GB/s")
    print(f"ratio peer/raw: {ratio:.2f} of medians, {b_best / p_best:.2f} of bests "
          f"(goal >= {GOAL}) {'OK' if ratio >= GOAL else 'BELOW GOAL'}")
    print(f"bytes_peer {stats.bytes_peer}  bytes_sent {stats.bytes_sent}  "
          f"bytes_received {stats.bytes_received}")


if __name__ == "__main__":
    main()
