"""The floor for ``bench_netns.py``: the DAG's 4 transfers as raw ``os.sendfile`` streams,
then its 4 consumers.

:func:`raw_transfers` makes a sparse 200 MB file on every worker host (as vinework's
producers do), then starts a sender on each host and, on the host where vinework's
consumer reads it (host i's file goes to host i-1, the ring of the DAG), a receiver that
writes the stream to a file in the same directory, as a worker's cache does. The
receivers are started together; each times its stream from connect to end-of-file,
then at once runs the DAG's consumer on its host, ``wc -lc`` of its local file and the
one it received, and times that too. Nothing else runs: no manager, no hashing, no
task, no dispatch. Run as a script, this file is the sender (``serve PATH``) or the
receiver (``recv HOST PORT PATH LOCAL``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vinework.testing.netns import NetnsCluster


def _serve(path: str) -> None:
    srv = socket.socket()
    srv.bind(("0.0.0.0", 0))
    srv.listen(1)
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    fd = os.open(path, os.O_RDONLY)
    size, off = os.fstat(fd).st_size, 0
    while off < size:
        sent = os.sendfile(conn.fileno(), fd, off, size - off)
        if not sent:  # the file shrank: the receiver's byte count tells
            break
        off += sent
    conn.close()


def _recv(host: str, port: int, path: str, local: str) -> None:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    conn = socket.create_connection((host, port), timeout=60)
    with open(path, "wb", buffering=0) as f:
        while n := conn.recv_into(buf):
            f.write(view[:n])
            total += n
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    wc = subprocess.run(["wc", "-lc", local, path], capture_output=True, text=True,
                        check=True)
    counted = int(wc.stdout.split("\n")[-2].split()[1])  # the "total" line: lines, bytes
    print(json.dumps({"bytes": total, "seconds": seconds, "counted": counted,
                      "consumer": time.perf_counter() - t1}), flush=True)


def raw_transfers(cluster: NetnsCluster, base: str, size: int,
                  timeout: float = 60.0) -> dict[str, Any]:
    """Run the 4 raw streams and then their consumers once; return ``{"seconds": [per
    stream], "bytes": [...], "consumer": [seconds of each consumer's wc], "counted":
    [bytes each consumer counted]}``, in the order of the sending hosts."""
    n = cluster.n_workers
    me = os.path.abspath(__file__)
    senders = []
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(1, n + 1):
            path = os.path.join(base, f"raw-src-{i}")
            with open(path, "wb") as f:
                f.truncate(size)
            p = cluster.popen(i, [sys.executable, me, "serve", path],
                              stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None
            senders.append((i, int(p.stdout.readline())))
        receivers = []
        for i, port in senders:
            dest = (i - 2) % n + 1  # host i's file is read by the consumer on host i-1
            receivers.append(cluster.popen(
                dest, [sys.executable, me, "recv", cluster.address(i), str(port),
                       os.path.join(base, f"raw-dst-{dest}"),
                       os.path.join(base, f"raw-src-{dest}")],
                stdout=subprocess.PIPE, text=True))
        procs += receivers
        got = [json.loads(r.communicate(timeout=timeout)[0]) for r in receivers]
        return {key: [g[key] for g in got] for key in ("seconds", "bytes", "consumer",
                                                        "counted")}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for name in os.listdir(base):
            if name.startswith("raw-"):
                os.unlink(os.path.join(base, name))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        _serve(sys.argv[2])
    else:
        _recv(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
