"""A worker hashes a task's outputs in a thread, not on its event loop: while a big
output is hashed its loop keeps answering (heartbeats reach the manager, which drops a
worker silent for longer than the keepalive timeout), and the result still goes out
with its checksum, ahead of what followed it.

(Outputs of at most 4 MiB in all are hashed on the loop: about a millisecond.) The
producing worker is a real worker process whose checksum function is wrapped to
wait for a file the test creates, so "a hash that takes long" is an event the test
controls, not a file size or a sleep. Every process is ended by its pid.
"""

from __future__ import annotations

import asyncio
import socket
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
        make = vine.Task("seq 1 1000000 > out")  # 6.9 MB: hashed in a thread
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
        assert got.successful() and got.output.strip() == "1000000", got.output
        assert "served wrong bytes" in "\n".join(m.file_story(temp))
    finally:
        hold.touch()  # (a held thread lets the worker exit)
        stop_process(p)  # type: ignore[arg-type]
        log.close()


def test_held_results_are_listed_running_in_the_heartbeats_that_go_ahead() -> None:
    # the send queue of a worker: a result being hashed, then a plain result and a
    # heartbeat behind it. The heartbeat goes now (liveness), listing both held results
    # as running (their tasks left the worker's state already: the manager would take
    # back a task missing from a heartbeat); the plain result waits for the hashed one.
    from vinework.protocol import FrameDecoder, Heartbeat, TaskDone
    from vinework.worker.main import Worker, _Hashing

    def done(task_id: int, outputs: list[tuple[str, int]]) -> TaskDone:
        return TaskDone(task_id=task_id, attempt=0, result=0, exit_code=0, output="",
                        start=0.0, end=0.0, outputs=outputs)

    async def scenario() -> list[object]:
        a, b = socket.socketpair()
        _, writer = await asyncio.open_connection(sock=a)
        w = Worker.__new__(Worker)  # (only its send queue is exercised)
        w.writer = writer
        w._flush_scheduled = False
        hashed: asyncio.Future[TaskDone] = asyncio.get_running_loop().create_future()
        w._outq = [_Hashing(1, hashed), done(2, []), Heartbeat(seq=7, running=[5])]
        w._flush()
        await writer.drain()
        dec = FrameDecoder()
        dec.receive_data(b.recv(1 << 16))
        first = [m for m in iter(dec.next_message, None)]
        hashed.set_result(done(1, [("temp-x", 3)]))
        w._flush()
        await writer.drain()
        dec.receive_data(b.recv(1 << 16))
        second = [m for m in iter(dec.next_message, None)]
        writer.close()
        b.close()
        return [first, second]

    first, second = asyncio.run(scenario())
    assert [type(m).__name__ for m in first] == ["Heartbeat"]  # type: ignore[attr-defined]
    assert first[0].running == [1, 2, 5]  # type: ignore[index]
    assert [(type(m).__name__, m.task_id) for m in second] == [  # type: ignore[attr-defined]
        ("TaskDone", 1), ("TaskDone", 2)]
