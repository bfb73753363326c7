"""Shared fixtures for the real-process tests: a manager, worker processes, bounded waits.

Workers are real ``python -m vinework worker`` processes talking TCP to the manager.
Every worker started here is recorded and, at teardown, its manager is closed (so it
can exit by itself) and then the process is ended by its pid: SIGTERM, up to 5 s,
then SIGKILL (and its process group, which holds its fork server). Nothing is ever
killed by name.

Waiting is always bounded: ``wait_all`` loops ``m.wait(1)`` until a deadline and
``wait_workers``/``poll_until`` poll a condition until a deadline, failing the
test with a message instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import vinework as vine

WORKER_EXIT_GRACE = 5.0

# every Manager made by a test checks all of its core's invariants after every event
os.environ["VINEWORK_VALIDATE"] = "1"


# ---------------------------------------------------------------------- bounded waits
def poll_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "a condition",
               interval: float = 0.02) -> Any:
    """Return ``pred()``'s first truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_workers(m: vine.Manager, k: int, timeout: float = 10.0) -> None:
    """Wait until exactly ``k`` workers are connected to ``m``."""
    poll_until(lambda: m.stats.workers_connected == k, timeout,
               f"{k} connected worker(s) (now {m.stats.workers_connected})")


def wait_all(m: vine.Manager, n: int, timeout: float = 60.0) -> list[vine.Task]:
    """Collect ``n`` tasks from ``m.wait``; fail if they are not all back by the deadline."""
    deadline = time.monotonic() + timeout
    done: list[vine.Task] = []
    while len(done) < n:
        if time.monotonic() >= deadline:
            pytest.fail(f"only {len(done)} of {n} tasks returned within {timeout} s "
                        f"(ids {sorted(t.id for t in done)[:20]}); stats: {m.stats}")
        t = m.wait(1)
        if t is not None:
            done.append(t)
    return done


def task_states(m: vine.Manager) -> dict[int, tuple[str, str]]:
    """task id -> (state, worker id) from the manager's status."""
    return {r["task_id"]: (r["state"], r["worker"]) for r in m.status("tasks")}


def wait_running(m: vine.Manager, task_id: int, timeout: float = 10.0) -> str:
    """Wait until the task is RUNNING on some worker; return that worker's id."""
    def running() -> str:
        state, worker = task_states(m).get(task_id, ("", ""))
        return worker if state == "RUNNING" else ""
    return str(poll_until(running, timeout, f"task {task_id} to be running"))


# ---------------------------------------------------------------------- processes
def stop_process(p: subprocess.Popen[bytes], grace: float = WORKER_EXIT_GRACE) -> None:
    """End one process we started, by pid: SIGTERM, wait ``grace``, then SIGKILL."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=grace)
    # the worker leads its own session (start_new_session): its group holds its
    # fork server; make sure nothing of it outlives the test
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)


# ---------------------------------------------------------------------- fixtures
@pytest.fixture
def manager(tmp_path: Any) -> Iterator[vine.Manager]:
    """A Manager on a free port, with its run info under tmp_path; closed at teardown."""
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run-info"), shutdown=True)
    try:
        yield m
    finally:
        m.close()


StartWorker = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def workers(tmp_path: Any) -> Iterator[StartWorker]:
    """A factory: ``start_worker(manager, cores=2, memory=1000, disk=2000, extra=()) ->
    Popen`` (``extra``: more worker options)."""
    procs: list[subprocess.Popen[bytes]] = []
    managers: list[vine.Manager] = []
    logs: list[Any] = []

    def start_worker(m: vine.Manager, cores: int = 2, memory: int = 1000, disk: int = 2000,
                     timeout: float = 30.0, extra: tuple[str, ...] = ()
                     ) -> subprocess.Popen[bytes]:
        n = len(procs)
        workdir = tmp_path / f"worker-{n}"
        workdir.mkdir()
        log = open(tmp_path / f"worker-{n}.log", "wb")  # noqa: SIM115
        logs.append(log)
        p = subprocess.Popen(
            [sys.executable, "-m", "vinework", "worker", "localhost", str(m.port),
             "--cores", str(cores), "--memory", str(memory), "--disk", str(disk),
             "--workdir", str(workdir), "--timeout", str(timeout), *extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(p)
        if m not in managers:
            managers.append(m)
        return p

    try:
        yield start_worker
    finally:
        for m in managers:  # a closed manager with shutdown=True tells its workers to exit
            with contextlib.suppress(Exception):
                m.close()
        # (workers of a manager without shutdown wait for the next one: no grace for them)
        grace = WORKER_EXIT_GRACE if all(m.shutdown for m in managers) else 0.0
        deadline = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            stop_process(p)
        for log in logs:
            log.close()


@pytest.fixture
def cluster(manager: vine.Manager, workers: StartWorker) -> vine.Manager:
    """A manager with two connected 2-core workers."""
    workers(manager)
    workers(manager)
    wait_workers(manager, 2)
    return manager
