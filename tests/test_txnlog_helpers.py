"""One real run for the log and plot tests (no tests here): a manager and two real
worker processes doing a temp passed worker to worker, a buffer sent by the manager,
an output brought back, a non-zero exit, a missing output, a task cancelled before it
was placed, and the loss of a worker
whose only copy of a temp a later task needs (a recovery).

``real_run`` is a session fixture: test_txnlog_format.py and test_plot.py share it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import vinework as vine

try:
    from conftest import poll_until, stop_process, wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, stop_process, wait_all, wait_workers


@dataclass
class RealRun:
    """What the run did, for the tests to compare the logs with."""

    run_dir: str  # the run's directory (vine-logs/ inside)
    task_ids: list[int]  # every task submitted by the program
    results: dict[int, tuple[str, int]]  # task id -> (result name, exit code)
    recovered: set[int]  # tasks re-run to remake a lost temp
    killed: str  # the worker that was killed
    tmp: str


def _worker(m: vine.Manager, tmp: str, n: int, feature: str,
            procs: list[subprocess.Popen[bytes]]) -> None:
    workdir = os.path.join(tmp, f"w{n}")
    os.makedirs(workdir)
    log = open(os.path.join(tmp, f"w{n}.log"), "wb")  # noqa: SIM115
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "vinework", "worker", "localhost", str(m.port), "--cores", "2",
         "--memory", "500", "--disk", "1000", "--workdir", workdir, "--timeout", "30",
         "--feature", feature],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True))
    log.close()


def _task(cmd: str, feature: str = "") -> vine.Task:
    t = vine.Task(cmd)
    t.set_cores(1)
    if feature:
        t.add_feature(feature)
    return t


def make_run(tmp: str) -> RealRun:
    procs: list[subprocess.Popen[bytes]] = []
    m = vine.Manager(port=0, run_info_path=os.path.join(tmp, "run-info"), shutdown=True)
    try:
        m.tune("durability", "manual")  # one copy of each temp, as TaskVine keeps
        _worker(m, tmp, 1, "a", procs)
        wait_workers(m, 1, timeout=20)
        t1, t2 = m.declare_temp(), m.declare_temp()
        p1 = _task("seq 1 5000 > out", "a")
        p1.add_output(t1, "out")
        p2 = _task("seq 1 300 > out")  # only w1 is connected: its temp is on w1 alone
        p2.add_output(t2, "out")
        for t in (p1, p2):
            m.submit(t)
        first = wait_all(m, 2, timeout=30)
        _worker(m, tmp, 2, "b", procs)
        wait_workers(m, 2, timeout=20)
        c1 = _task("wc -l < in", "b")  # on w2: t1 comes from w1, worker to worker
        c1.add_input(t1, "in")
        buf = m.declare_buffer(b"hello from the manager\n")
        back = os.path.join(tmp, "back.txt")
        c2 = _task("cat buf > copy && cat copy", "b")
        c2.add_input(buf, "buf")
        c2.add_output(m.declare_file(back), "copy")
        bad_exit = _task("exit 3", "b")
        missing = _task("true", "b")
        missing.add_output(m.declare_file(os.path.join(tmp, "never.txt")), "never")
        nowhere = _task("true", "no-such-feature")  # never placed: cancelled waiting
        second = [c1, c2, bad_exit, missing, nowhere]
        for t in second:
            m.submit(t)
        m.cancel_by_task_id(nowhere.id)
        second_done = wait_all(m, len(second), timeout=30)
        os.killpg(procs[0].pid, signal.SIGKILL)  # w1 dies with the only copy of t2
        procs[0].wait(timeout=10)
        wait_workers(m, 1, timeout=20)
        c3 = _task("wc -l < in")
        c3.add_input(t2, "in")
        m.submit(c3)
        [last] = wait_all(m, 1, timeout=30)
        assert last.successful() and last.output.strip() == "300", (last.result, last.output)
        poll_until(lambda: m.stats.tasks_recovery >= 1, 10, "the recovery to be counted")
        tasks = first + second_done + [last]
        names = {str(r): r.name for r in vine.TaskResult}
        results = {t.id: (names[str(t.result)], t.exit_code) for t in tasks}
        run_dir = m.runtime_directory
        recovered = {p2.id}
    finally:
        m.close()
        for p in procs:
            stop_process(p)
    return RealRun(run_dir, sorted(results), results, recovered, "w1", tmp)


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: Any) -> Iterator[RealRun]:
    yield make_run(str(tmp_path_factory.mktemp("txnlog-run")))
