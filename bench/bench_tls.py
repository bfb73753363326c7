"""What TLS costs: a 1 GiB file through a transfer server with and without TLS (the
peer-transfer path), and task dispatch through a Manager with and without ``ssl=True``,
measured in the same run with the plain versions as the baselines.

    python bench/bench_tls.py [--size-mb 1024] [--tasks 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import vinework as vine
from vinework.protocol.auth import check_token, make_token
from vinework.protocol.transfer import TransferServer, fetch_file
from vinework.tlsconf import peer_client_context, server_context, throwaway_pair

sys.path.insert(0, os.path.dirname(__file__))
from common import drain  # noqa: E402


def _transfer(path: str, size: int, tls: bool, d: str) -> float:
    key, cert = throwaway_pair(d, "bench")
    secret = os.urandom(32)
    srv = TransferServer(lambda n: path if n == "big" else None,
                         authorize=lambda n, t: check_token(secret, n, t),
                         ssl_context=server_context(key, cert) if tls else None)
    ctx = peer_client_context(open(cert).read()) if tls else None
    try:
        dest = os.path.join(d, "got")
        t0 = time.perf_counter()
        fetch_file("127.0.0.1", srv.port, "big", dest, size, timeout=600,
                   token=make_token(secret, "big"), ssl_context=ctx)
        secs = time.perf_counter() - t0
        os.unlink(dest)
        return secs
    finally:
        srv.close()


def _dispatch(n: int, tls: bool, d: str) -> float:
    m = vine.Manager(port=0, run_info_path=os.path.join(d, f"run-{tls}"), shutdown=True,
                     ssl=True if tls else None)
    extra = ["--ssl"] if tls else []
    w = subprocess.Popen([sys.executable, "-m", "vinework", "worker", "localhost",
                          str(m.port), "--cores", "2", "--workdir", os.path.join(d, f"w-{tls}"),
                          *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while m.workers_connected < 1:
            time.sleep(0.05)
        t0 = time.perf_counter()
        for _ in range(n):
            t = vine.Task("true")
            t.set_cores(1)
            m.submit(t)
        drain(m, n)
        return time.perf_counter() - t0
    finally:
        m.close()
        w.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--tasks", type=int, default=2000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "big")
        size = a.size_mb << 20
        with open(path, "wb") as f:
            for _ in range(a.size_mb):
                f.write(os.urandom(1 << 20))
        plain = min(_transfer(path, size, False, d) for _ in range(2))
        tls = min(_transfer(path, size, True, d) for _ in range(2))
        print(f"{a.size_mb} MiB transfer: plain {plain:.2f} s ({size / plain / 1e6:.0f} MB/s), "
              f"TLS {tls:.2f} s ({size / tls / 1e6:.0f} MB/s): TLS takes {tls / plain:.2f}x")
        dp = _dispatch(a.tasks, False, d)
        dt = _dispatch(a.tasks, True, d)
        print(f"{a.tasks} tasks: plain {a.tasks / dp:.0f}/s, TLS {a.tasks / dt:.0f}/s: "
              f"TLS takes {dt / dp:.2f}x")


if __name__ == "__main__":
    main()
