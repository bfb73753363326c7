"""Shared helpers for the benchmarks: start local worker processes, time a batch of tasks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import vinework as vine


@contextmanager
def local_workers(m: vine.Manager, n: int = 1, cores: int = 2, memory: int = 2000,
                  disk: int = 20000, workdir: str | None = None) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``n`` worker processes for ``m``, wait until they are connected, kill them after."""
    base = workdir or tempfile.mkdtemp(prefix="vinework-bench-")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "vinework", "worker", "localhost", str(m.port), "--cores", str(cores),
         "--memory", str(memory), "--disk", str(disk), "--workdir", os.path.join(base, f"w{i}")],
        start_new_session=True) for i in range(n)]
    try:
        deadline = time.monotonic() + 30
        while m.workers_connected < n:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not connect")
            time.sleep(0.05)
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def drain(m: vine.Manager, expected: int, timeout: float = 600) -> list[vine.Task]:
    """Wait for ``expected`` tasks; raise if any failed or the deadline passes."""
    out: list[vine.Task] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected:
        t = m.wait(max(0.1, deadline - time.monotonic()))
        if t is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(out)} of {expected} tasks finished")
            continue
        if not t.successful():
            raise RuntimeError(f"task {t.id} failed: {t.result} {t.exit_code} {t.output!r}")
        out.append(t)
    return out
