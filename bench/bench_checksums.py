"""What verified data costs on a 1 GiB peer transfer: ``fetch_file`` alone (the
baseline) against ``fetch_checked`` (the receiver hashes what arrived) plus the
producer's own checksum of the file, in the same run, alternating.

    python bench/bench_checksums.py [--size-mb 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from vinework.checksums import checksum, fetch_checked
from vinework.protocol.transfer import TransferServer, fetch_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "big")
        with open(src, "wb") as f:
            for _ in range(a.size_mb):
                f.write(os.urandom(1 << 20))
        size = a.size_mb << 20
        srv = TransferServer(lambda n: src if n == "big" else None)
        dest = os.path.join(d, "got")
        plain, checked, made = [], [], []
        try:
            for _ in range(a.rounds):
                t0 = time.perf_counter()
                fetch_file("127.0.0.1", srv.port, "big", dest, size, timeout=600)
                plain.append(time.perf_counter() - t0)
                os.unlink(dest)
                t0 = time.perf_counter()
                want = checksum(src)  # what the producing worker does once
                made.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                fetch_checked(want, "127.0.0.1", srv.port, "big", dest, size, timeout=600)
                checked.append(time.perf_counter() - t0)
                os.unlink(dest)
        finally:
            srv.close()
    p, c, m = statistics.median(plain), statistics.median(checked), statistics.median(made)
    print(f"{a.size_mb} MiB: transfer {p:.2f} s; checked transfer {c:.2f} s "
          f"({c / p:.2f}x); the producer's checksum {m:.2f} s; all told {(c + m) / p:.2f}x")


if __name__ == "__main__":
    main()
