"""A TaskVine program's Manager calls, written from TaskVine's manual: names, results,
waits, cancels, hungry, tune, stats, status, the run-info layout, blocking and releasing
workers, resource limits.

Real ``vinework worker`` processes over TCP where a worker is needed (conftest
fixtures); bounded waits everywhere.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pytest

import vinework as vine
from vinework.core.tunables import NO_EFFECT, TUNABLES

try:
    from conftest import poll_until, wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, wait_all, wait_workers

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------- names
TASKVINE_CLASSES = ["Manager", "Factory", "Task", "PythonTask", "PythonTaskNoResult",
                    "FunctionCall", "LibraryTask", "File", "DaskVine", "FuturesExecutor",
                    "FuturePythonTask", "FutureFunctionCall", "VineFuture"]


def test_every_taskvine_name_imports() -> None:
    for name in TASKVINE_CLASSES:
        assert getattr(vine, name) is not None, name
    from vinework import cvine, futures, utils
    from vinework.cvine import VINE_ALLOCATION_MODE_MAX, VINE_RESULT_SUCCESS
    assert VINE_RESULT_SUCCESS == 0 and VINE_ALLOCATION_MODE_MAX == 1
    assert cvine.VINE_RESULT_MAX_END_TIME == 24 and cvine.VINE_RESULT_FORSAKEN == 40
    assert cvine.VINE_CACHE_LEVEL_FOREVER == 3 and cvine.VINE_WAIT_FOREVER == -1
    assert cvine.VINE_SCHEDULE_FILES == 2 and cvine.VINE_FILE == 1
    assert cvine.VINE_MOUNT_SYMLINK == 32 and cvine.VINE_UNLINK_WHEN_DONE == 2
    assert utils.get_c_constant("result_success") == 0
    assert callable(futures.wait) and callable(futures.as_completed)
    from importlib import metadata
    assert vine.__version__ == metadata.version("vinework")


@pytest.mark.parametrize("make", [
    lambda: vine.Task("true").set_snapshot_file("snap"),
])
def test_later_features_say_so_when_used(make: Any) -> None:
    with pytest.raises(NotImplementedError, match="vinework does not support"):
        make()


def test_later_manager_methods_say_so(manager: vine.Manager) -> None:
    for call in (lambda: manager.declare_starch(None),
                 lambda: manager.create_library_from_functions("l", print, poncho_env="e"),
                 lambda: manager.create_library_from_command("serve", "l"),
                 lambda: manager.install_library(vine.LibraryTask("cmd", "l"))):
        with pytest.raises(NotImplementedError):
            call()
    with pytest.raises(ValueError, match="ssl must be True or"):
        vine.Manager(port=0, ssl="yes please")


# ---------------------------------------------------------------------- results
def test_a_result_equals_its_string_and_its_number() -> None:
    r = vine.constants.result_string(vine.VINE_RESULT_MAX_END_TIME)
    assert r == "max end time" and r == vine.VINE_RESULT_MAX_END_TIME and r == 24
    assert vine.VINE_RESULT_MAX_END_TIME == r and str(r) == "max end time"
    assert f"{r}" == "max end time" and int(r) == 24 and r != "success" and r != 0
    names = {vine.constants.result_string(int(code)) for code in vine.TaskResult}
    assert {"success", "input missing", "output missing", "stdout missing", "signal",
            "resource exhaustion", "max end time", "unknown", "forsaken", "max retries",
            "max wall time", "monitor error", "output transfer error",
            "fixed location missing", "cancelled", "library exit", "sandbox exhaustion",
            "missing library"} <= names


# ---------------------------------------------------------------------- submit and wait
def test_a_missing_input_comes_back_from_wait(manager: vine.Manager, tmp_path: Any) -> None:
    t = vine.Task("cat in.txt")
    t.add_input(manager.declare_file(str(tmp_path / "nope.txt")), "in.txt")
    tid = manager.submit(t)  # TaskVine does not raise here
    assert tid == t.id and not manager.empty()
    assert manager.task_state(tid) == vine.VINE_TASK_RETRIEVED
    back = manager.wait(5)
    assert back is t and t.result == "input missing" and t.exit_code == -1
    assert t.result == vine.VINE_RESULT_INPUT_MISSING and not t.completed()
    assert manager.empty() and manager.task_state(tid) == vine.VINE_TASK_DONE
    p = vine.PythonTask(len, "x")
    p.add_input(manager.declare_file(str(tmp_path / "nope.txt")), "x")
    manager.submit(p)
    assert manager.wait(5) is p and isinstance(p.output, vine.PythonTaskNoResult)


def test_wait_forms(manager: vine.Manager) -> None:
    assert manager.wait() is None  # nothing submitted: at once, even "forever"
    assert manager.wait("wait_forever") is None and manager.wait(vine.VINE_WAIT_FOREVER) is None
    t = vine.Task("true")
    manager.submit(t)  # no worker: never finishes
    start = time.monotonic()
    assert manager.wait(0) is None and time.monotonic() - start < 2
    assert manager.wait(0.2) is None
    assert manager.cancel_by_task_id(t.id)
    assert manager.wait() is t and t.result == "cancelled"


def test_wait_for_tag_and_task_id_keep_the_others(cluster: vine.Manager) -> None:
    m = cluster
    ids = {}
    for tag in ("a", "b", "c"):
        t = vine.Task(f"echo {tag}")
        t.set_tag(tag)
        ids[tag] = m.submit(t)
    poll_until(lambda: m.stats.tasks_with_results == 3, 30, "three finished tasks")
    b = m.wait_for_tag("b", 10)
    assert b is not None and b.tag == "b" and b.output == "b\n"
    assert m.wait_for_tag("b", 0) is None  # none left with that tag
    c = m.wait_for_task_id(ids["c"], 10)
    assert c is not None and c.id == ids["c"]
    a = m.wait(10)
    assert a is not None and a.tag == "a" and m.empty()


def test_cancel_forms(manager: vine.Manager) -> None:
    m = manager  # no worker: everything stays queued
    tasks = []
    for i in range(6):
        t = vine.Task("true")
        t.set_tag("t" if i < 3 else "u")
        t.set_category("x" if i % 2 else "y")
        m.submit(t)
        tasks.append(t)
    assert m.cancel_by_task_tag("t") == 1  # TaskVine: one task per call
    assert m.cancel_all_by_tag("t") == 2
    assert m.cancel_by_task_tag("t") == 0
    assert m.cancel_by_category("x") == 2  # tasks 3 and 5 (1 was cancelled already)
    assert m.cancel_all() == 1
    back = [m.wait(5) for _ in range(6)]
    assert all(t is not None and t.result == "cancelled" for t in back)
    assert m.empty() and m.stats.tasks_cancelled == 6


# ---------------------------------------------------------------------- hungry
def test_hungry_follows_taskvines_formula(manager: vine.Manager, workers: Any) -> None:
    # the sequence of TaskVine's own hungry test (its documented numbers)
    m = manager
    m.tune("hungry-minimum", 11)
    assert m.hungry() == 11
    m.tune("hungry-minimum", 2)
    assert m.hungry() == 2
    t1, t2 = vine.Task("sleep 120"), vine.Task("sleep 120")
    m.submit(t1)
    assert m.hungry() == 1
    m.submit(t2)
    assert m.hungry() == 0
    workers(m, cores=12, memory=1200, disk=1200)
    poll_until(lambda: m.stats.tasks_running == 1, 20, "one running task")
    assert m.hungry() == 1  # minimum 2, one waiting
    m.tune("hungry-minimum", 5)
    assert m.hungry() == 4
    m.cancel_by_task_id(t1.id)
    m.cancel_by_task_id(t2.id)
    poll_until(lambda: m.stats.tasks_running == 0 and m.stats.tasks_waiting == 0, 20, "idle")
    assert m.hungry() == 2 * 12
    t3 = vine.Task("sleep 120")
    t3.set_cores(1)
    m.submit(t3)
    poll_until(lambda: m.stats.tasks_running == 1, 20, "t3 running")
    assert m.hungry() == 2 * 12 - 1
    m.tune("hungry-minimum-factor", 3)
    assert m.hungry() == 3 * 12 - 1
    t4 = vine.Task("sleep 120")
    t4.set_cores(11)
    m.submit(t4)
    poll_until(lambda: m.stats.tasks_running == 2, 20, "t4 running")
    assert m.hungry() == 5  # every core in use: the minimum
    m.cancel_all()
    poll_until(lambda: m.stats.tasks_running == 0, 20, "idle")
    t5 = vine.Task("sleep 120")
    t5.set_cores(1)
    t5.set_memory(200)
    m.submit(t5)
    poll_until(lambda: m.stats.tasks_running == 1, 20, "t5 running")
    assert m.hungry() == (3 * 1200 - 200) / 200  # memory limits
    m.cancel_all()
    while m.wait(0) is not None:
        pass


# ---------------------------------------------------------------------- tune
def test_tune_accepts_every_taskvine_name_and_never_raises(
        manager: vine.Manager, caplog: pytest.LogCaptureFixture) -> None:
    m = manager
    with caplog.at_level(logging.WARNING, logger="vinework"):
        for name in sorted(NO_EFFECT):
            assert m.tune(name, 1) == 0, name
        assert m.tune("not-a-knob", 3) == -1
        assert m.tune("hungry-minimum", "many") == -1  # a bad value: -1, not an exception
        assert m.tune("hungry-minimum", 7) == 0 and m.hungry() == 7
        assert m.tune("keepalive-interval", 2.5) == 0
    text = caplog.text
    assert "not-a-knob" in text and "prefer-dispatch" in text and "no effect" in text
    assert text.count("prefer-dispatch") == 1  # said once
    for name in ("hungry-minimum-factor", "attempt-schedule-depth", "max-task-stdout-storage",
                 "wait-for-workers", "max-workers", "temp-replica-count",
                 "worker-source-max-transfers", "file-source-max-transfers"):
        assert name in TUNABLES


def test_wait_for_workers_holds_dispatch(manager: vine.Manager, workers: Any) -> None:
    m = manager
    m.tune("wait-for-workers", 2)
    t = vine.Task("echo ok")
    m.submit(t)
    workers(m)
    wait_workers(m, 1)
    assert m.wait(1) is None and m.stats.tasks_running == 0
    workers(m)
    assert m.wait(30) is t and t.successful()


# ---------------------------------------------------------------------- stats, status
def test_stats_and_status_use_taskvines_names(cluster: vine.Manager) -> None:
    m = cluster
    m.set_name("compat-test")
    m.set_property("framework", "tests")
    t = vine.Task("sleep 30")
    t.set_cores(1)
    t.set_category("sleepers")
    m.submit(t)
    poll_until(lambda: m.stats.tasks_running == 1, 20, "a running task")
    st = m.stats
    assert st.workers_connected == 2 and st.workers_busy == 1 and st.workers_idle == 1
    assert st.total_cores == 4 and st.committed_cores == 1 and st.max_cores == 2
    assert st.tasks_submitted == 1 and st.tasks_dispatched == 1 and st.time_when_started > 0
    (row,) = m.status("manager")
    assert row["project"] == "compat-test" and row["framework"] == "tests"
    assert row["port"] == m.port and row["tasks_running"] == 1 and row["type"] == "vine_manager"
    (task,) = m.status("tasks")
    assert task["task_id"] == t.id and task["taskvine_state"] == "RUNNING"
    assert task["category"] == "sleepers" and task["cores"] == 1
    cats = {r["category"]: r for r in m.status("categories")}
    assert cats["sleepers"]["tasks_running"] == 1
    ws = m.status("workers")
    assert {w["cores_total"] for w in ws} == {2} and sum(w["cores_inuse"] for w in ws) == 1
    assert m.summarize_workers() == [{"workers": 2, "cores": 2, "memory": 1000, "disk": 2000,
                                      "gpus": 0}]
    assert t.state == "RUNNING"
    m.cancel_all()
    assert m.wait(10) is t and t.state == "DONE"


def test_run_info_layout(tmp_path: Any) -> None:
    root = tmp_path / "runs"
    with vine.Manager(port=0, run_info_path=str(root)) as m:
        run = m.runtime_directory
        assert os.path.realpath(root / "most-recent") == os.path.realpath(run)
        assert m.logging_directory == os.path.join(run, "vine-logs")
        assert os.path.isdir(m.staging_directory) and m.staging_directory.startswith(run)
        assert m.cache_directory == str(root / "vine-cache")
        assert os.environ["VINE_RUNTIME_INFO_DIR"] == run
        m.log_txn_app("hello from the application")
        staging = m.staging_directory
        assert m.name is None and m.hostname and m.addrport.endswith(f":{m.port}")
    with open(os.path.join(run, "vine-logs", "transactions")) as f:
        assert "APPLICATION hello from the application" in f.read()
    assert not os.path.exists(staging)  # removed at close, as TaskVine does
    with vine.Manager(port=0, run_info_path=str(root), run_info_template="named") as m2:
        assert m2.runtime_directory == str(root / "named")
    assert os.path.realpath(root / "most-recent") == str(root / "named")


def test_port_as_a_list_or_tuple(tmp_path: Any) -> None:
    import socket
    s = socket.socket()
    s.bind(("", 0))
    free = s.getsockname()[1]
    s.close()
    with vine.Manager(port=[free, free + 5], run_info_path=str(tmp_path)) as m:
        assert free <= m.port <= free + 5
        assert os.environ["TCP_LOW_PORT"] == str(free)
    os.environ.pop("TCP_LOW_PORT")
    os.environ.pop("TCP_HIGH_PORT")


# ---------------------------------------------------------------------- workers
def test_block_and_unblock_a_host(manager: vine.Manager, workers: Any) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    m.block_host("localhost")
    m.block_host("127.0.0.1")
    poll_until(lambda: m.stats.workers_connected == 0, 20, "the blocked worker to be gone")
    assert m.stats.workers_blocked >= 1
    m.unblock_host()
    workers(m)
    wait_workers(m, 1, timeout=30)


def test_workers_shutdown_releases_idle_workers(manager: vine.Manager, workers: Any) -> None:
    m = manager
    p = workers(m)
    wait_workers(m, 1)
    assert m.workers_shutdown() == 1
    p.wait(timeout=20)
    assert m.stats.workers_released == 1 and m.stats.workers_connected == 0


def test_category_maximum_sizes_its_tasks(manager: vine.Manager, workers: Any) -> None:
    m = manager
    m.set_category_resources_max("small", {"cores": 1, "memory": 100})
    m.set_category_mode("small", "max")
    tasks = []
    for _ in range(2):
        t = vine.Task("sleep 20")
        t.set_category("small")  # no resources of its own: gets the category's maximum
        m.submit(t)
        tasks.append(t)
    workers(m)  # 2 cores: both fit at once (a task without limits would take the worker)
    poll_until(lambda: m.stats.tasks_running == 2, 20, "both tasks running")
    rows = m.status("tasks")
    assert {r["cores"] for r in rows} == {1} and {r["memory"] for r in rows} == {100}
    m.cancel_all()
    wait_all(m, 2)


def test_a_task_with_a_feature_waits_for_a_worker_that_has_it(
        manager: vine.Manager, workers: Any) -> None:
    m = manager
    t = vine.Task("echo special")
    t.add_feature("special-hw")
    m.submit(t)
    workers(m)
    wait_workers(m, 1)
    assert m.wait(1.5) is None  # the plain worker may not run it
    workers(m, extra=("--feature", "special-hw"))
    back = m.wait(30)
    assert back is t and t.output == "special\n"
