"""A worker hashes a task's outputs in a thread, not on its event loop: while a big
output is hashed its loop keeps answering (heartbeats reach the manager, which drops a
worker silent for longer than the keepalive timeout), and the result still goes out
with its checksum, ahead of what followed it.

The producing worker is a real worker process whose checksum function is wrapped to
wait for a file the test creates, so "a hash that takes long" is an event the test
controls, not a file size or a sleep. Every process is ended by its pid.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import vinework as vine
from tests.conftest import poll_until, stop_process, wait_all, wait_workers

pytestmark = pytest.mark.timeout(90)

# a worker whose checksums wait until the file argv[1] exists (argv[2] marks the start)
HELD_WORKER = textwrap.dedent("""
    import os, sys, time
    import vinework.worker.main as wm
    real = wm.checksum
    hold, started = sys.argv[1], sys.argv[2]
    def held(path):
        open(started, "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.01)
        return real(path)
    wm.checksum = held
    from vinework.cli import main
    sys.exit(main(["worker", *sys.argv[3:]]))
""")


def test_a_long_hash_keeps_the_worker_connected_and_the_result_checked(
        manager: vine.Manager, workers: Any, tmp_path: Path) -> None:
    m = manager
    m.tune("keepalive-interval", 0.2)
    m.tune("keepalive-timeout", 1.0)
    hold, started = tmp_path / "hold", tmp_path / "started"
    log = open(tmp_path / "held-worker.log", "wb")  # noqa: SIM115
    p = subprocess.Popen(
        [sys.executable, "-c", HELD_WORKER, str(hold), str(started), "localhost",
         str(m.port), "--cores", "1", "--memory", "500", "--disk", "1000",
         "--workdir", str(tmp_path / "held"), "--timeout", "30", "--feature", "a"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        wait_workers(m, 1)
        temp = m.declare_temp()
        make = vine.Task("seq 1 1000 > out")
        make.add_feature("a")
        make.add_output(temp, "out")
        m.submit(make)
        poll_until(started.exists, 20, "the output's hash to start")
        # three keepalive timeouts pass while the hash is held: heartbeats still go out
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            assert m.stats.workers_connected == 1 and m.stats.workers_removed == 0, m.stats
            time.sleep(0.05)
        assert m.wait(0) is None  # the result waits for its checksum
        hold.touch()
        (done,) = wait_all(m, 1, 30)
        assert done.successful(), (done.result, done.output)
        assert m.stats.workers_removed == 0
        # the checksum came with the result: a copy gone bad on the producer's disk is
        # caught when another worker fetches it, and the temp is remade
        cached = next((tmp_path / "held").rglob(temp.cache_name))
        cached.chmod(0o644)
        cached.write_bytes(b"garbage\n" * 100)
        workers(m, extra=("--feature", "b"))
        wait_workers(m, 2)
        use = vine.Task("wc -l < in")
        use.add_feature("b")
        use.add_input(temp, "in")
        m.submit(use)
        (got,) = wait_all(m, 1, 30)
        assert got.successful() and got.output.strip() == "1000", got.output
        assert "served wrong bytes" in "\n".join(m.file_story(temp))
    finally:
        hold.touch()  # (a held thread lets the worker exit)
        stop_process(p)  # type: ignore[arg-type]
        log.close()
