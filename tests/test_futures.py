"""FuturesExecutor and VineFuture with real worker processes: results, exceptions, timeouts,
cancellation (the task's process is killed), as_completed/wait, callbacks, futures chained
through temps that never pass through the manager, map/reduce/allpairs, an executor with
its own factory, factory option names, shutdown with pending futures, a manager that
closes under pending futures.

Workers come from the conftest fixtures (ended by pid); every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import vinework as vine
from vinework.futures import FuturePythonTask, FuturesExecutor, VineFuture

try:
    from conftest import StartWorker, poll_until, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import StartWorker, poll_until, wait_workers

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------------- task functions
class BadInput(Exception):
    """An application error defined in a script (pickled by value)."""


def add(x: int, y: int) -> int:
    return x + y


def inc(x: int) -> int:
    return x + 1


def fail(message: str) -> None:
    raise BadInput(message)


def divide(a: int, b: int) -> float:
    return a / b


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def write_pid_and_sleep(path: str, seconds: float) -> int:
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return os.getpid()


def big_blob(n: int) -> bytes:
    time.sleep(0.3)  # (its consumer is surely submitted before it finishes)
    return b"x" * n


def length(b: bytes) -> int:
    return len(b)


def env(name: str) -> str | None:
    return os.environ.get(name)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------- fixtures
@pytest.fixture
def executor(manager: vine.Manager, workers: StartWorker) -> Iterator[FuturesExecutor]:
    """An executor over the test's manager, with one 2-core worker."""
    workers(manager, cores=2)
    wait_workers(manager, 1, timeout=30)
    ex = FuturesExecutor(manager=manager, factory=False)
    try:
        yield ex
    finally:
        ex.shutdown(wait=False)


# ---------------------------------------------------------------------- results
def test_futures_are_concurrent_futures_with_results(executor: FuturesExecutor) -> None:
    futures = [executor.submit(add, i, 10) for i in range(6)]
    f = executor.submit(add, x=1, y=2)  # keyword arguments too
    assert all(isinstance(x, cf.Future) and isinstance(x, vine.VineFuture) for x in futures)
    assert [x.result(timeout=30) for x in futures] == [10, 11, 12, 13, 14, 15]
    assert f.result(timeout=30) == 3
    assert all(x.done() and not x.running() and not x.cancelled() for x in futures)
    assert futures[0].exception(timeout=0) is None
    t = executor.future_task(env, "VINE_FUTURE_TEST")
    assert isinstance(t, FuturePythonTask) and isinstance(t, vine.PythonTask)
    t.set_env_var("VINE_FUTURE_TEST", "set by a setter")
    t.set_tag("futures")
    t.set_cores(1)
    fut = executor.submit(t)
    assert fut is t.future and executor.submit(t) is fut  # a task is submitted once
    assert fut.result(timeout=30) == "set by a setter"
    assert t.output() == "set by a setter"  # TaskVine's output(timeout) method


def test_an_exception_is_reraised_with_its_type_and_message(
        executor: FuturesExecutor) -> None:
    f = executor.submit(fail, "no such sample")
    with pytest.raises(BadInput) as raised:
        f.result(timeout=30)
    assert str(raised.value) == "no such sample"
    assert isinstance(f.exception(), BadInput) and f.done()
    z = executor.submit(divide, 1, 0)
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        z.result(timeout=30)
    assert "divide" in getattr(z.exception(), "remote_traceback", "")
    # TaskVine's FuturePythonTask.output() returns the exception object
    t = executor.future_task(fail, "as output")
    executor.submit(t)
    out = t.output(30)
    assert isinstance(out, BadInput) and str(out) == "as output"
    # a later task that takes a failed future fails with the same exception, not run
    later = executor.submit(add, f, 1)
    with pytest.raises(BadInput, match="no such sample"):
        later.result(timeout=30)
    assert later.task.id == 0  # never submitted to the manager


def test_a_task_failing_after_its_consumer_was_submitted_fails_the_consumer(
        executor: FuturesExecutor) -> None:
    slow_fail = executor.submit(sleep_then, 0.5, None)
    bad = executor.submit(divide, slow_fail, 0)  # None / 0: TypeError on the worker
    after = executor.submit(inc, bad)  # submitted while `bad` has not run
    with pytest.raises(TypeError):
        after.result(timeout=30)
    assert after.task.id != 0 and isinstance(bad.exception(), TypeError)


def test_result_timeout_raises_timeout_error(executor: FuturesExecutor) -> None:
    f = executor.submit(sleep_then, 30, "late")
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.3)
    with pytest.raises(TimeoutError):
        f.exception(timeout=0.1)
    t = executor.future_task(sleep_then, 30, "late")
    executor.submit(t)
    with pytest.raises(TimeoutError):
        t.output(0.2)
    assert not f.done()
    with pytest.raises(TypeError):
        f.result(timeout="soon")
    assert f.cancel() and t.future.cancel()


def test_cancel_kills_the_running_task(executor: FuturesExecutor, tmp_path: Path) -> None:
    marker = str(tmp_path / "pid")
    f = executor.submit(write_pid_and_sleep, marker, 60)
    poll_until(lambda: os.path.exists(marker), 30, "the task to start")
    pid = int(Path(marker).read_text())
    assert alive(pid)
    poll_until(f.running, 10, "the future to say it is running")
    calls: list[VineFuture] = []
    f.add_done_callback(calls.append)
    assert f.cancel() is True
    assert f.cancelled() and f.done() and not f.running() and calls == [f]
    with pytest.raises(cf.CancelledError):
        f.result(timeout=1)
    assert cf.wait([f], timeout=1).done == {f}  # counted as done at once
    assert list(cf.as_completed([f], timeout=1)) == [f]
    poll_until(lambda: not alive(pid), 15, f"the task's process {pid} to be killed")
    # a later task taking a cancelled future is not run: it is cancelled too
    g = executor.submit(inc, f)
    assert g.cancelled() and g.task.id == 0
    with pytest.raises(cf.CancelledError):
        g.result(timeout=5)
    # a finished future cannot be cancelled
    h = executor.submit(inc, 1)
    assert h.result(timeout=30) == 2 and h.cancel() is False and not h.cancelled()


def test_as_completed_yields_the_fast_task_first(executor: FuturesExecutor) -> None:
    for as_completed in (cf.as_completed, vine.futures.as_completed):
        slow = executor.submit(sleep_then, 2.0, "slow")
        fast = executor.submit(sleep_then, 0.1, "fast")
        order = [f.result() for f in as_completed([slow, fast], timeout=30)]
        assert order == ["fast", "slow"]
    slow = executor.submit(sleep_then, 30, "slow")
    fast = executor.submit(inc, 1)
    seen = []
    with pytest.raises(TimeoutError):
        for f in vine.futures.as_completed([slow, fast], timeout=2):
            seen.append(f)
    assert seen == [fast]
    slow.cancel()


def test_wait_first_completed_and_timeouts(executor: FuturesExecutor) -> None:
    slow = executor.submit(sleep_then, 30, "slow")
    fast = executor.submit(sleep_then, 0.2, "fast")
    done, not_done = cf.wait([slow, fast], timeout=20, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    result = vine.futures.wait([slow, fast], timeout=0.5)
    assert result.done == {fast} and result.not_done == {slow}
    bad = executor.submit(fail, "x")
    done, not_done = vine.futures.wait([slow, bad], timeout=20,
                                       return_when=vine.futures.FIRST_EXCEPTION)
    assert done == {bad} and not_done == {slow}
    with pytest.raises(ValueError):
        vine.futures.wait([slow], return_when="SOMETIME")
    slow.cancel()
    assert vine.futures.wait([slow, fast, bad], timeout=5).not_done == set()


def test_wait_submits_a_future_task_not_yet_submitted(executor: FuturesExecutor) -> None:
    t = executor.future_task(add, 2, 3)
    assert not t.future.done() and t.id == 0
    assert vine.futures.wait([t.future], timeout=30).done == {t.future}
    assert t.future.result() == 5


def test_done_callbacks_run_when_the_task_ends(executor: FuturesExecutor) -> None:
    got: list[Any] = []
    ended = threading.Event()

    def record(f: cf.Future) -> None:  # type: ignore[type-arg]
        got.append(f.result())
        ended.set()

    f = executor.submit(sleep_then, 0.3, 42)
    f.add_done_callback(record)
    assert ended.wait(30) and got == [42]
    f.add_done_callback(lambda fut: got.append("at once"))  # already done: called now
    assert got == [42, "at once"]


# ---------------------------------------------------------------------- temps
def test_chained_futures_stay_on_the_workers(executor: FuturesExecutor) -> None:
    m = executor.manager
    size = 2_000_000
    received, sent = m.stats.bytes_received, m.stats.bytes_sent
    a = executor.submit(big_blob, size)
    b = executor.submit(length, a)
    c = executor.submit(add, b, 0)  # a chain of three
    assert c.result(timeout=60) == size
    assert b.result() == size
    # the 2 MB intermediate never reached the manager, nor went back out from it
    assert m.stats.bytes_received - received < 10_000
    assert m.stats.bytes_sent - sent < 10_000
    assert not a.fetched
    story = "\n".join(m.file_story(a.task.output_file))
    assert "the manager" not in story.splitlines()[-1]
    # and it can still be fetched when asked for
    assert a.result(timeout=30) == b"x" * size
    assert m.stats.bytes_received - received >= size


def test_a_future_passed_twice_and_as_keyword(executor: FuturesExecutor) -> None:
    a = executor.submit(inc, 4)
    b = executor.submit(add, a, y=a)
    assert b.result(timeout=30) == 10
    with pytest.raises(TypeError, match="direct argument"):
        executor.submit(sum, [a, a])  # a future inside a list cannot be sent


# ---------------------------------------------------------------------- map/reduce/allpairs
def test_map_reduce_allpairs(executor: FuturesExecutor) -> None:
    nums = list(range(101))
    doubles = executor.map(lambda x: 2 * x, nums, chunk_size=13)
    assert isinstance(doubles, VineFuture)
    assert doubles.result(timeout=60) == [2 * x for x in nums]
    assert executor.map(inc, [], chunk_size=4).result(timeout=30) == []
    assert executor.reduce(max, nums, fn_arity=2).result(timeout=60) == 100
    assert executor.reduce(min, nums, fn_arity=2, chunk_size=50).result(timeout=60) == 0
    assert executor.reduce(sum, nums, fn_arity=11, chunk_size=13).result(timeout=60) \
        == sum(nums)
    assert executor.reduce(sum, [7]).result(timeout=30) == 7
    # futures may be among the values to reduce
    parts = [executor.submit(inc, i) for i in range(5)]
    assert executor.reduce(sum, parts).result(timeout=60) == 15
    table = executor.allpairs(lambda x, y: x * y, range(3), nums, chunk_size=11)
    rows = table.result(timeout=60)
    assert len(rows) == 3 and all(len(r) == 101 for r in rows)
    assert rows[2] == [2 * x for x in nums]
    for bad in (lambda: executor.map(inc, nums, chunk_size=0),
                lambda: executor.reduce(sum, nums, fn_arity=1),
                lambda: executor.reduce(sum, []),
                lambda: executor.allpairs(add, [1], [2], chunk_size=-1)):
        with pytest.raises(ValueError):
            bad()



def test_map_reduce_allpairs_in_a_library(executor: FuturesExecutor) -> None:
    nums = list(range(30))
    assert executor.map(inc, nums, library_name="hof", chunk_size=7).result(timeout=60) \
        == [x + 1 for x in nums]
    assert executor.reduce(sum, nums, library_name="hof", chunk_size=4).result(timeout=60) \
        == sum(nums)
    table = executor.allpairs(add, [1, 2], [10, 20, 30], library_name="hof", chunk_size=2)
    assert table.result(timeout=60) == [[11, 21, 31], [12, 22, 32]]
    assert executor.manager.check_library_exists("hof")
    lib = executor.manager.create_library_from_functions("taken", inc)
    lib.set_cores(1)
    executor.manager.install_library(lib)
    with pytest.raises(ValueError, match="installed already"):
        executor.map(inc, nums, library_name="taken")


# ---------------------------------------------------------------------- executor lifetimes
def test_executor_with_its_own_factory(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # (its manager's run info goes to the cwd)
    with FuturesExecutor(port=0, opts={"min-workers": 1, "max-workers": 1, "cores": 2,
                                       "timeout": 20}) as ex:
        assert ex.factory is not None and ex.get("min-workers") == 1
        assert ex.get("max_workers") == 1 and ex.get("cores") == 2
        assert ex.port == ex.manager.port != 0
        pids = [p.pid for p in ex.factory.procs]
        assert len(pids) == 1
        a = ex.submit(inc, 1)
        b = ex.submit(add, a, 10)
        assert b.result(timeout=60) == 12
        leaf = ex.submit(sleep_then, 0.2, "kept")
        m = ex.manager
    # its workers and its manager are gone; a finished value is still readable
    for pid in pids:
        poll_until(lambda pid=pid: not alive(pid), 15, f"worker {pid} to exit")
    with pytest.raises(RuntimeError, match="closed"):
        m.submit(vine.Task("true"))
    assert leaf.result(timeout=0) == "kept"
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(inc, 1)


def test_factory_option_names_are_checked(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AttributeError, match="min-wrokers"):
        FuturesExecutor(port=0, opts={"min-wrokers": 1})
    with pytest.raises(NotImplementedError, match="mesos-master"):
        FuturesExecutor(port=0, opts={"mesos-master": "host:5050"})
    with pytest.raises(ValueError, match="factory=False"):
        FuturesExecutor(port=0, factory=False, opts={"cores": 1})
    with pytest.raises(ValueError, match="batch_type"):
        FuturesExecutor(port=0, batch_type="nosuch")
    with pytest.raises(NotImplementedError, match="worker_binary"):
        FuturesExecutor(port=0, worker_binary="/bin/vine_worker")
    ex = FuturesExecutor(port=0, factory=False)
    try:
        with pytest.raises(ValueError, match="no factory"):
            ex.set("cores", 1)
    finally:
        ex.shutdown()


def test_executor_with_a_given_manager_leaves_it_open(manager: vine.Manager,
                                                      workers: StartWorker) -> None:
    workers(manager)
    wait_workers(manager, 1, timeout=30)
    with FuturesExecutor(manager=manager, factory=False) as ex:
        assert ex.manager is manager and ex.factory is None
        assert ex.submit(inc, 41).result(timeout=30) == 42
        # the manager's own tasks are left to the user's wait()
        t = vine.PythonTask(inc, 1)
        manager.submit(t)
        f = ex.submit(inc, 2)
        assert f.result(timeout=30) == 3
        back = manager.wait(30)
        assert back is t and t.output == 2
    assert manager.submit(vine.Task("true")) > 0  # still open
    assert manager.wait(30) is not None


def test_shutdown_with_pending_futures(manager: vine.Manager, workers: StartWorker) -> None:
    workers(manager, cores=2)
    wait_workers(manager, 1, timeout=30)
    ex = FuturesExecutor(manager=manager, factory=False)
    waited = ex.submit(sleep_then, 0.5, "finished")
    ex.shutdown(wait=True)  # waits for it
    assert waited.done() and waited.result(timeout=0) == "finished"
    ex = FuturesExecutor(manager=manager, factory=False)
    running = ex.submit(sleep_then, 60, "never")
    queued = [ex.submit(sleep_then, 60, i) for i in range(4)]
    later = ex.submit(add, running, 1)
    poll_until(running.running, 20, "the first task to run")
    ex.shutdown(wait=False)
    for f in [running, later, *queued]:
        assert f.cancelled()
        with pytest.raises(cf.CancelledError):
            f.result(timeout=0)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(inc, 1)
    ex.shutdown()  # twice is fine
    # the cancelled tasks come back to the manager and are collected: nothing is left
    poll_until(lambda: manager.stats.tasks_cancelled >= 5, 20, "the tasks to be cancelled")


def test_a_closed_manager_fails_pending_futures(manager: vine.Manager) -> None:
    ex = FuturesExecutor(manager=manager, factory=False)
    f = ex.submit(inc, 1)  # no worker: it waits
    g = ex.submit(add, f, 1)
    manager.close()
    with pytest.raises(RuntimeError, match="closed"):
        f.result(timeout=30)
    with pytest.raises(RuntimeError, match="closed"):
        g.result(timeout=30)
    with pytest.raises(RuntimeError):
        ex.submit(inc, 2)
    ex.shutdown()


def test_bad_submissions_say_what_is_wrong(executor: FuturesExecutor,
                                           manager: vine.Manager) -> None:
    with pytest.raises(TypeError, match="callable"):
        executor.submit(42)
    with pytest.raises(TypeError, match="not a Task"):
        executor.submit(vine.Task("true"))
    t = executor.future_task(inc, 1)
    with pytest.raises(TypeError, match="no other arguments"):
        executor.submit(t, 2)
    other = FuturesExecutor(manager=manager, factory=False)
    try:
        with pytest.raises(ValueError, match="another executor"):
            other.submit(t)
        f = executor.submit(inc, 1)
        with pytest.raises(ValueError, match="another executor"):
            other.submit(add, f, 1)
    finally:
        other.shutdown()


def test_values_no_task_consumes_come_back_many_per_task(executor: FuturesExecutor,
                                                        manager: vine.Manager) -> None:
    before = manager.stats.tasks_submitted
    futures = [executor.submit(inc, i) for i in range(120)]
    poll_until(lambda: all(f.fetched for f in futures), 60,
               "the values to come back without result()")
    gathers = manager.stats.tasks_submitted - before - len(futures)
    assert 1 <= gathers <= 30  # a few gather tasks, not one transfer per value
    assert [f.result(timeout=0) for f in futures] == list(range(1, 121))


def test_without_prefetch_result_fetches_the_value(manager: vine.Manager,
                                                   workers: StartWorker) -> None:
    workers(manager)
    wait_workers(manager, 1, timeout=30)
    with FuturesExecutor(manager=manager, factory=False, prefetch=False) as ex:
        futures = [ex.submit(inc, i) for i in range(5)]
        assert len(cf.wait(futures, timeout=30).done) == 5
        assert not any(f.fetched for f in futures)
        received = manager.stats.bytes_received
        assert [f.result(timeout=30) for f in futures] == [1, 2, 3, 4, 5]
        assert all(f.fetched for f in futures) and manager.stats.bytes_received > received


# ---------------------------------------------------------------------- function calls
def my_sum(x: int, y: int) -> int:
    return x + y


def refuse(x: int) -> int:
    raise KeyError(f"no key {x}")


def test_future_funcalls_chain_through_temps(executor: FuturesExecutor,
                                             manager: vine.Manager) -> None:
    lib = executor.create_library_from_functions("futures-lib", my_sum, refuse)
    lib.set_cores(1)
    executor.install_library(lib)
    t = executor.future_funcall("futures-lib", "my_sum", 7, 4)
    assert isinstance(t, vine.FutureFunctionCall) and isinstance(t, vine.FunctionCall)
    a = executor.submit(t)
    b = executor.submit(executor.future_funcall("futures-lib", my_sum, a, y=a))
    c = executor.submit(my_sum, b, 1)  # a PythonTask taking a FunctionCall's temp
    assert c.result(timeout=60) == 23 and b.result(timeout=0) == 22
    assert not a.fetched  # a's value went only to b, worker to worker
    assert t.output() == 11
    with pytest.raises(KeyError, match="no key 3"):
        executor.submit(executor.future_funcall("futures-lib", "refuse", 3)).result(60)
    missing = executor.submit(executor.future_funcall("no-such-lib", "f", 1))
    assert isinstance(missing.exception(timeout=60), vine.FunctionCallNoResult)


def test_a_task_taken_by_the_users_wait_still_settles_its_future(
        executor: FuturesExecutor, manager: vine.Manager) -> None:
    # the user's wait() and the executor's driver race for each finished task; whoever
    # takes it, its future is settled
    taken = 0
    for i in range(40):
        f = executor.submit(inc, i)
        t = None
        while t is None and not f.done():
            t = manager.wait(0.01)
        assert t is None or getattr(t, "_executor", None) is executor  # (or a gather)
        taken += t is not None
        assert f.result(timeout=30) == i + 1
        if taken >= 3:
            break
    assert taken >= 1


def test_gathers_run_where_the_values_are(cluster: vine.Manager) -> None:
    m = cluster
    with FuturesExecutor(manager=m, factory=False) as ex:
        futures = [ex.submit(inc, i) for i in range(200)]
        poll_until(lambda: all(f.fetched for f in futures), 60, "the values to come back")
        assert {f.task.worker for f in futures} == {"w1", "w2"}
        assert m.stats.transfers_peer == 0 and m.stats.bytes_peer == 0
        assert [f.result(timeout=0) for f in futures] == list(range(1, 201))


def test_a_value_comes_back_while_every_core_is_busy(executor: FuturesExecutor) -> None:
    # its gather task finds no free core: it is given up after a while and the value
    # is fetched by itself, long before the long tasks end
    f = executor.submit(inc, 1)
    sleepers = [executor.submit(sleep_then, 40, i) for i in range(2)]
    assert f.result(timeout=30) == 2
    assert not any(s.done() for s in sleepers)
    for s in sleepers:
        s.cancel()
