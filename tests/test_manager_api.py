"""The user API over the core, with real workers: errors surface, waits are explained,
every task comes back exactly once, a draining worker loses nothing.

Real ``vinework worker`` processes over TCP (fixtures in conftest); bounded waits
everywhere; the one fault injected by hand (a core handler that raises) stands
for a bug in the core, which cannot be provoked on purpose.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

import vinework as vine
from vinework.core import TaskSubmitted
from vinework.core import state as core_state
from vinework.txnlog import read_log

try:
    from conftest import poll_until, task_states, wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, task_states, wait_all, wait_workers

pytestmark = pytest.mark.timeout(90)


def _txn(m: vine.Manager) -> list[list[str]]:
    """vinework's records of the transaction log, as [kind, field, ...]."""
    m._txn.flush()
    return [[kind, *fields] for _, kind, fields in read_log(m.txn_path)]


# ---------------------------------------------------------------------- errors are raised
def test_a_core_failure_is_raised_at_the_next_call_and_close_still_works(
        manager: vine.Manager, workers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    m = manager
    p = workers(m)
    wait_workers(m, 1)
    real = core_state._HANDLERS[TaskSubmitted]

    def broken(s: Any, ev: Any) -> None:
        real(s, ev)
        if ev.spec.command == "boom":
            raise KeyError("injected fault in the core")

    monkeypatch.setitem(core_state._HANDLERS, TaskSubmitted, broken)
    ok = vine.Task("echo fine")
    m.submit(ok)
    m.submit(vine.Task("boom"))
    with pytest.raises(vine.ManagerError) as info:
        for _ in range(50):
            m.wait(0.2)
    err = info.value
    assert err.event == "TaskSubmitted"
    assert err.stimulus_id.startswith("TaskSubmitted-")
    assert "injected fault in the core" in err.traceback and "broken" in err.traceback
    assert err.stimulus_id in str(err)
    # every later call that needs the core raises the same error; nothing is guessed
    for call in (m.empty, lambda: m.submit(vine.Task("true")), lambda: m.wait(0),
                 lambda: m.stats, m.hungry):
        with pytest.raises(vine.ManagerError) as again:
            call()
        assert again.value is err
    assert ["MANAGER", "ERROR", err.stimulus_id, "TaskSubmitted"] in _txn(m)
    # close() still tells the worker to go, and it does
    m.close()
    p.wait(timeout=10)
    assert p.returncode == 0


# ---------------------------------------------------------------------- no task waits unseen
def test_undeclaring_the_input_of_a_queued_task_returns_it_failed(manager: vine.Manager) -> None:
    m = manager  # no worker: the task stays queued
    f = m.declare_buffer(b"data")
    t = vine.Task("cat in")
    t.add_input(f, "in")
    m.submit(t)
    m.undeclare_file(f)
    back = m.wait(10)
    assert back is t
    assert t.result == vine.TaskResult.INPUT_MISSING
    assert "undeclared" in t.error_message
    assert m.empty()


def test_every_task_comes_back_exactly_once_when_submitted_and_waited_from_two_threads(
        manager: vine.Manager, workers: Any) -> None:
    m = manager
    m.tune("validate", False)  # (checking every invariant after each of ~40,000 events is
    # quadratic at this size; the pure tests validate large runs every N events)
    workers(m, cores=2)
    wait_workers(m, 1)
    n = 10_000
    submitted: list[int] = []
    failures: list[BaseException] = []

    def submitter() -> None:
        try:
            for i in range(n):
                t = vine.PythonTask(abs, -i)
                t.set_cores(1)
                submitted.append(m.submit(t))
        except BaseException as e:  # surfaced below
            failures.append(e)

    th = threading.Thread(target=submitter)
    th.start()
    seen: dict[int, Any] = {}
    deadline = time.monotonic() + 80
    while (th.is_alive() or not m.empty()) and time.monotonic() < deadline:
        t = m.wait(1)
        if t is not None:
            assert t.id not in seen, f"task {t.id} returned twice"
            seen[t.id] = t.output
    th.join(5)
    assert not failures, failures
    assert sorted(seen) == sorted(submitted) and len(seen) == n
    assert all(seen[tid] == tid - submitted[0] for tid in submitted[:100])
    assert m.empty() and m.wait(0) is None


# ---------------------------------------------------------------------- explained waits
def test_a_wait_with_no_worker_gives_a_hint(manager: vine.Manager,
                                            caplog: pytest.LogCaptureFixture) -> None:
    m = manager
    m.tune("no-worker-hint-delay", 0.5)
    m.submit(vine.Task("true"))
    poll_until(lambda: m.notices, 10, "a hint that no worker is connected")
    assert len(m.notices) == 1 and "no worker has been connected" in m.notices[0]
    assert any("no worker has been connected" in r.getMessage() for r in caplog.records)
    assert m.wait(0.5) is None and not m.empty()  # still waiting, not lost
    assert len(m.notices) == 1  # said once


def test_a_task_no_worker_can_run_says_why_once(manager: vine.Manager, workers: Any) -> None:
    m = manager
    m.tune("unplaceable-hint-delay", 0.5)
    workers(m, cores=1)
    wait_workers(m, 1)
    big = vine.Task("true")
    big.set_cores(4)
    m.submit(big)
    small = vine.Task("echo small")
    small.set_cores(1)
    m.submit(small)
    [back] = wait_all(m, 1, timeout=30)
    assert back is small  # the big one does not block the rest

    def why() -> str:
        rows = {r["task_id"]: r for r in m.status("tasks")}
        return str(rows.get(big.id, {}).get("message", ""))
    text = poll_until(lambda: "no connected worker could ever run it" in why() and why(),
                      10, "the reason in the task's status")
    assert "cores=4" in text and "1 cores" in text
    poll_until(lambda: any("UNPLACEABLE" in " ".join(r) for r in _txn(m)), 5, "the log line")
    time.sleep(1.5)  # several more ticks: still said only once
    assert sum(1 for r in _txn(m) if len(r) > 2 and r[0] == "TASK" and r[2] == "UNPLACEABLE") == 1
    assert sum(1 for n in m.notices if f"task {big.id}" in n) == 1
    assert m.task_state(big.id) == vine.VINE_TASK_READY
    m.cancel_by_task_id(big.id)
    [c] = wait_all(m, 1, timeout=10)
    assert c is big and c.result == vine.TaskResult.CANCELLED
    assert m.empty()


# ---------------------------------------------------------------------- task state and story
def test_task_state_and_story_follow_a_task(cluster: vine.Manager) -> None:
    m = cluster
    t = vine.Task("echo hi")
    tid = m.submit(t)
    [back] = wait_all(m, 1)
    assert back is t and t.successful()
    assert m.task_state(tid) == vine.VINE_TASK_DONE == 5  # wait() returned it
    assert m.task_state(9999) == -1
    story = m.task_story(t)
    states = [ln.split(" ")[3] for ln in story]
    assert states[:1] == ["INITIAL"] and "RUNNING" in states and states[-1] == "RETRIEVED"
    assert all("[" in ln and ln.endswith("]") for ln in story)  # each names its stimulus
    assert any("TaskReported-" in ln for ln in story)


def test_a_task_handed_back_is_collected_at_the_next_tick_without_further_calls(
        cluster: vine.Manager) -> None:
    m = cluster
    tid = m.submit(vine.Task("echo hi"))
    [back] = wait_all(m, 1)
    assert back.successful()
    # wait() hands the core a TaskCollected without waking the loop thread; with no other
    # call made (a query would apply it first), the loop's next tick applies it: the core
    # then forgets the task (read here without a query, which would drain the inbox)
    poll_until(lambda: not m._server._inbox and tid not in m._server.state.tasks,
               timeout=5, what="the quiet event applied by the tick")
    assert m.task_state(tid) == vine.VINE_TASK_DONE


# ---------------------------------------------------------------------- drain on SIGTERM
def test_sigterm_drains_a_worker_mid_dag_without_recomputation(manager: vine.Manager,
                                                               workers: Any) -> None:
    m = manager
    pa = workers(m, cores=2)
    wait_workers(m, 1)
    temps = []
    for i in range(4):  # four temps, all on the first worker
        f = m.declare_temp()
        t = vine.Task(f"seq 1 {1000 * (i + 1)} > out")
        t.set_cores(1)
        t.add_output(f, "out")
        m.submit(t)
        temps.append(f)
    wait_all(m, 4)
    workers(m, cores=2)
    wait_workers(m, 2)
    slow = vine.Task("sleep 30")  # running on the draining worker: must be placed elsewhere
    slow.set_cores(1)
    m.submit(slow)
    poll_until(lambda: any(s == "RUNNING" for s, _ in task_states(m).values()), 10,
               "the slow task to run")
    os.kill(pa.pid, signal.SIGTERM)  # the batch system's notice
    pa.wait(timeout=25)  # it leaves once its only copies are safe
    assert m.stats.workers_connected == 1
    consumers = []
    for i, f in enumerate(temps):
        c = vine.Task("wc -l < in")
        c.set_cores(1)
        c.add_input(f, "in")
        m.submit(c)
        consumers.append((c, 1000 * (i + 1)))
    m.cancel_by_task_id(slow.id)
    done = wait_all(m, 5, timeout=40)
    assert {id(t) for t in done} == {id(c) for c, _ in consumers} | {id(slow)}
    for c, n in consumers:
        assert c.successful(), (c.result, c.output)
        assert c.output.strip() == str(n)
    st = m.stats
    assert st.tasks_recovery == 0 and st.files_lost == 0
    assert st.workers_lost == 0  # drained as agreed: not a loss
    log = _txn(m)
    assert ["WORKER", "w1", "DRAINED", "-"] in [r[:4] for r in log], \
        [r for r in log if r[0] in ("WORKER", "TRANSFER")]


# ---------------------------------------------------------------------- close
def test_close_ends_connections_in_their_handshake_without_pending_tasks(
        caplog: pytest.LogCaptureFixture) -> None:
    import gc
    import socket
    m = vine.Manager(port=0)
    stranger = socket.create_connection(("127.0.0.1", m.port))  # never says hello
    try:
        poll_until(lambda: m._server._strangers == 1, timeout=5, what="the handshake begun")
        with caplog.at_level("ERROR", logger="asyncio"):
            m.close()
            gc.collect()  # (a task destroyed while pending is reported when collected)
        assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
        assert m._server._strangers == 0  # its handshake was ended, not abandoned
        stranger.settimeout(5)
        assert stranger.recv(1) == b""  # and its connection closed
    finally:
        stranger.close()
