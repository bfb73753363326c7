"""TaskVine's cache levels across managers and worker restarts, with real workers.

"task" and "workflow" files go with their manager; "worker" files stay for the life of
the worker process and serve the next manager; "forever" files also survive a restart of
the worker on the same ``--workdir`` and are claimed by the next manager that declares the
same content, which then sends no byte of them again.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import vinework as vine

try:
    from conftest import stop_process, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import stop_process, wait_workers

pytestmark = pytest.mark.timeout(120)


def _worker(port: int, workdir: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vinework", "worker", "localhost", str(port), "--timeout", "60",
         "--workdir", str(workdir), "--min-backoff", "0.2", "--max-backoff", "0.5"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _run_cat(m: vine.Manager, files: dict[str, vine.File]) -> vine.Task:
    t = vine.Task("cat " + " ".join(sorted(files)))
    for name, f in files.items():
        t.add_input(f, name)
    m.submit(t)
    back = m.wait(30)
    assert back is t and t.successful(), (t.result, t.output)
    return t


def test_forever_files_survive_a_worker_restart_and_are_not_sent_again(tmp_path: Any) -> None:
    forever = tmp_path / "forever.dat"
    forever.write_bytes(b"F" * 50_000)
    worker_level = tmp_path / "worker.dat"
    worker_level.write_bytes(b"W" * 30_000)
    workdir = tmp_path / "w"
    m1 = vine.Manager(port=0, run_info_path=str(tmp_path / "r1"), shutdown=True)
    p = _worker(m1.port, workdir)
    try:
        wait_workers(m1, 1, timeout=30)
        _run_cat(m1, {"f": m1.declare_file(str(forever), cache="forever"),
                      "w": m1.declare_file(str(worker_level), cache="worker")})
        assert m1.stats.bytes_sent == 80_000
        m1.close()  # shutdown=True: the worker exits
        assert p.wait(timeout=20) == 0
    finally:
        stop_process(p, grace=1)
    # the same workdir, a new worker process and a new manager
    m2 = vine.Manager(port=0, run_info_path=str(tmp_path / "r2"), shutdown=True)
    p2 = _worker(m2.port, workdir)
    try:
        wait_workers(m2, 1, timeout=30)
        # the "forever" file was kept and is claimed: no byte of it moves again; the
        # "worker" file went with the old worker process and is sent again
        _run_cat(m2, {"f": m2.declare_file(str(forever), cache="forever"),
                      "w": m2.declare_file(str(worker_level), cache="worker")})
        assert m2.stats.bytes_sent == 30_000
    finally:
        m2.close()
        stop_process(p2, grace=5)


def test_a_claim_needs_the_same_content(tmp_path: Any) -> None:
    data = tmp_path / "data.dat"
    data.write_bytes(b"old" * 1000)
    workdir = tmp_path / "w"
    m1 = vine.Manager(port=0, run_info_path=str(tmp_path / "r1"))  # workers outlive it
    port = m1.port
    p = _worker(port, workdir)
    try:
        wait_workers(m1, 1, timeout=30)
        _run_cat(m1, {"d": m1.declare_file(str(data), cache="forever")})
        m1.close()
        data.write_bytes(b"new" * 1000)  # same size, new content: a different file
        m2 = vine.Manager(port=port, run_info_path=str(tmp_path / "r2"), shutdown=True)
        try:
            wait_workers(m2, 1, timeout=30)
            t = _run_cat(m2, {"d": m2.declare_file(str(data), cache="forever")})
            assert t.output == "new" * 1000
            assert m2.stats.bytes_sent == 3000  # the kept copy was not taken for it
        finally:
            m2.close()
        p.wait(timeout=20)
    finally:
        stop_process(p, grace=1)
