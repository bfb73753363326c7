"""A worker whose disk really fills up (a tiny tmpfs as its workdir): the task that filled it
ends there with "disk exhausted", runs elsewhere, and nothing else is lost."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import vinework as vine
from tests.conftest import poll_until, stop_process, wait_all, wait_workers

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def tiny_disk(tmp_path: Any) -> Iterator[str]:
    """An 8 MB tmpfs mounted for the test (needs root; CI runs as root)."""
    if os.geteuid() != 0:
        if "CI" in os.environ:
            pytest.fail("CI must run as root to mount a small tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "tiny"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)], check=True,
                   timeout=10)
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=10)


def _worker(m: vine.Manager, workdir: str, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vinework", "worker", "localhost", str(m.port), "--cores", "1",
         "--memory", "500", "--disk", "1000", "--workdir", workdir, "--timeout", "20"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_task_that_fills_the_disk_runs_elsewhere(manager: vine.Manager, tiny_disk: str,
                                                   tmp_path: Any) -> None:
    m = manager
    procs = []
    with open(tmp_path / "workers.log", "wb") as log:
        try:
            procs.append(_worker(m, tiny_disk, log))  # w1: 8 MB of disk in all
            wait_workers(m, 1)
            t = vine.Task("head -c 20000000 /dev/zero > big.dat && wc -c < big.dat")
            t.set_cores(1)
            m.submit(t)

            def failed_on_w1() -> bool:
                with open(m.txn_path) as f:
                    return any(" RETRY " in ln and "disk exhausted" in ln for ln in f)

            poll_until(failed_on_w1, timeout=30, what="the task to fill w1's disk")
            assert m.stats.tasks_done == 0  # not returned: it waits for another worker
            procs.append(_worker(m, str(tmp_path / "big"), log))  # w2 has room
            [done] = wait_all(m, 1, timeout=30)
            assert done.successful(), (done.result, done.output)
            assert done.worker == "w2"
            assert done.output.strip() == "20000000"
            # w1 is still usable for tasks that fit, and its disk was cleaned up
            small = vine.Task("echo fits")
            small.set_cores(1)
            small.set_priority(1)
            m.submit(small)
            [ok] = wait_all(m, 1, timeout=30)
            assert ok.successful() and ok.output.strip() == "fits"
            with contextlib.suppress(FileNotFoundError):
                leftovers = [e for e in os.scandir(os.path.join(tiny_disk, "sandbox"))
                             if any(os.scandir(e.path)) and
                             any(x.name == "big.dat" for x in os.scandir(e.path))]
                assert leftovers == []
        finally:
            m.close()
            for p in procs:
                stop_process(p)
