"""Serverless libraries and FunctionCalls with real worker processes.

Every test runs a real manager and ``vinework worker`` processes (``conftest.py``),
installs a library made from functions of this module (which the workers cannot
import: they travel by value) or lambdas, and checks what comes back: results,
exceptions, context made once per instance, both exec modes, a library process
killed by its pid and one that exits, a missing library, temp outputs consumed by a
later FunctionCall and by a command task, files in a call's sandbox and in the
library's. Waits are bounded; processes are ended by pid.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import vinework as vine
from tests.conftest import StartWorker, poll_until, wait_all, wait_workers
from vinework.utils import load_variable_from_library

pytestmark = pytest.mark.timeout(90)

STATE = {"n": 0}


def add(x: int, y: int) -> int:
    return x + y


def where_am_i(x: int) -> tuple[int, int, str]:
    return x, os.getpid(), load_variable_from_library("token")


def make_context(path: str, token: str) -> dict[str, Any]:
    """The context function: counts itself in a file (one line per instance)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return {"token": token}


def bump() -> int:
    STATE["n"] += 1
    return STATE["n"]


def fail(x: int) -> int:
    raise ValueError(f"no good: {x}")


def slow(x: float) -> int:
    time.sleep(x)
    return os.getpid()


def leave(code: int) -> None:
    sys.exit(code)


def read_input(name: str) -> str:
    with open(name) as f:
        return f.read()


def write_output(name: str, text: str) -> str:
    with open(name, "w") as f:
        f.write(text)
    return os.getcwd()


def unpickle_input(name: str) -> Any:
    import pickle
    with open(name, "rb") as f:
        return pickle.load(f)


def read_model() -> str:
    return load_variable_from_library("model")


def load_model() -> dict[str, str]:
    with open("model.txt") as f:
        return {"model": f.read().strip()}


def instances(m: vine.Manager, ready: int) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]]:
        rows = [r for r in m.library_instances() if r["ready"]]
        return rows if len(rows) >= ready else []
    return poll_until(enough, 30, f"{ready} ready library instance(s)")  # type: ignore[no-any-return]


def submit_calls(m: vine.Manager, lib: str, fn: str, args: list[tuple[Any, ...]],
                 **setup: Any) -> dict[int, tuple[Any, ...]]:
    ids = {}
    for a in args:
        t = vine.FunctionCall(lib, fn, *a)
        for k, v in setup.items():
            getattr(t, k)(v)
        ids[m.submit(t)] = a
    return ids


# ---------------------------------------------------------------------------- tests
def test_many_calls_across_two_workers_with_context_made_once_per_instance(
        cluster: vine.Manager, tmp_path: Path) -> None:
    m = cluster
    count = tmp_path / "context-runs"
    lib = m.create_library_from_functions("lib", where_am_i, add, exec_mode="fork",
                                          library_context_info=[make_context,
                                                                [str(count), "t0k"], {}])
    lib.set_cores(1)  # two instances fit on each 2-core worker
    m.install_library(lib)
    assert m.check_library_exists("lib") and not m.check_library_exists("other")
    ids = submit_calls(m, "lib", "where_am_i", [(i,) for i in range(300)])
    done = wait_all(m, len(ids))
    assert all(t.successful() for t in done), [(t.result, t.output) for t in done][:3]
    assert sorted(t.output[0] for t in done) == list(range(300))
    assert {t.output[2] for t in done} == {"t0k"}
    assert {t.worker for t in done} == {"w1", "w2"}
    rows = m.library_instances()
    assert len(rows) == 4 and {r["worker"] for r in rows} == {"w1", "w2"}
    # the context ran exactly once in each instance (fork mode: calls run in children)
    made = count.read_text().split()
    assert sorted(made) == sorted(str(r["pid"]) for r in rows)
    assert sum(r["calls_done"] for r in rows) == 300


def test_direct_mode_keeps_state_between_calls_and_fork_mode_does_not(
        manager: vine.Manager, workers: StartWorker) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    direct = m.create_library_from_functions("direct", bump, exec_mode="direct")
    direct.set_function_slots(5)  # (one instance: direct calls run one at a time in it)
    direct.set_cores(1)  # (both libraries fit on the worker: neither evicts the other)
    m.install_library(direct)
    for _ in range(5):
        m.submit(vine.FunctionCall("direct", "bump"))
    assert sorted(t.output for t in wait_all(m, 5)) == [1, 2, 3, 4, 5]
    forked = m.create_library_from_functions("forked", bump, exec_mode="fork")
    forked.set_cores(1)
    forked.set_function_slots(5)
    m.install_library(forked)
    for _ in range(5):
        m.submit(vine.FunctionCall("forked", "bump"))
    assert [t.output for t in wait_all(m, 5)] == [1] * 5
    # a call can choose the other mode for itself
    t = vine.FunctionCall("direct", "bump")
    t.set_exec_method("fork")
    m.submit(t)
    (back,) = wait_all(m, 1)
    assert back.output == 6  # a fork of the direct library: its state, not changed after


def test_exceptions_lambdas_and_unknown_functions(cluster: vine.Manager) -> None:
    m = cluster
    lib = m.create_library_from_functions("lib", fail, lambda x: x * 3, exec_mode="direct")
    m.install_library(lib)
    m.submit(vine.FunctionCall("lib", "fail", 7))
    m.submit(vine.FunctionCall("lib", "<lambda>", 5))
    m.submit(vine.FunctionCall("lib", "nothing", 1))
    by_fn = {t.fn_name: t for t in wait_all(m, 3)}  # type: ignore[attr-defined]
    err = by_fn["fail"].output
    assert isinstance(err, ValueError) and str(err) == "no good: 7"
    assert "in fail" in by_fn["fail"].remote_traceback
    assert "ValueError: no good: 7" in err.remote_traceback
    assert by_fn["fail"].result == "success" and by_fn["fail"].exit_code == 1
    assert by_fn["<lambda>"].output == 15
    assert isinstance(by_fn["nothing"].output, LookupError)
    assert "'nothing'" in str(by_fn["nothing"].output)


def test_a_missing_library_comes_back_at_once(manager: vine.Manager) -> None:
    m = manager  # (no worker at all: the answer does not need one)
    m.submit(vine.FunctionCall("never-installed", "f", 1))
    start = time.monotonic()
    t = m.wait(10)
    assert t is not None and time.monotonic() - start < 5
    assert t.result == "missing library" and t.result == vine.VINE_RESULT_MISSING_LIBRARY
    assert isinstance(t.output, vine.FunctionCallNoResult)


def test_a_killed_library_is_restarted_and_its_calls_are_not_lost(
        manager: vine.Manager, workers: StartWorker) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    lib = m.create_library_from_functions("lib", slow, exec_mode="direct")
    lib.set_function_slots(4)
    m.install_library(lib)
    ids = submit_calls(m, "lib", "slow", [(0.3,)] * 6)
    (row,) = instances(m, 1)
    victim = row["pid"]
    os.kill(victim, signal.SIGKILL)
    done = wait_all(m, len(ids))
    assert all(t.successful() for t in done), [(t.result, t.error_message) for t in done]
    pids = {t.output for t in done}
    assert victim not in pids  # every call that came back ran in the new instance...
    assert sum(t.retries for t in done) >= 1  # ... and some of them had to run again
    (now,) = instances(m, 1)
    assert now["pid"] != victim
    log = Path(m.library_log_path("lib", row["instance"]))
    text = poll_until(lambda: log.exists() and "ended" in log.read_text() and log.read_text(),
                      10, "the killed instance's log")
    assert f"pid {victim}" in text and "signal 9" in text
    assert "ready (pid" in text  # the library's own stdout came back with it


def test_a_library_that_exits_is_restarted_and_the_exiting_call_fails(
        manager: vine.Manager, workers: StartWorker) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    lib = m.create_library_from_functions("lib", leave, add, exec_mode="direct")
    m.install_library(lib)
    bad = vine.FunctionCall("lib", "leave", 3)
    bad.set_retries(2)
    m.submit(bad)
    (t,) = wait_all(m, 1)
    assert t.result == "library exit" and t.result == vine.VINE_RESULT_LIBRARY_EXIT
    assert isinstance(t.output, vine.FunctionCallNoResult)
    assert t.retries == 2  # set_retries(2): two more runs, each ended by its exit
    assert "exited with status 3" in t.error_message
    m.submit(vine.FunctionCall("lib", "add", 2, 3))  # the library comes back for this one
    (ok,) = wait_all(m, 1)
    assert ok.output == 5


def test_temp_output_feeds_a_later_call_and_a_command_task(
        manager: vine.Manager, workers: StartWorker) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    lib = m.create_library_from_functions("lib", add, unpickle_input, exec_mode="fork")
    m.install_library(lib)
    first = vine.FunctionCall("lib", "add", 40, 2)
    first.enable_temp_output()
    m.submit(first)
    second = vine.FunctionCall("lib", "unpickle_input", "in.p")
    second.add_input(first.output_file, "in.p")
    m.submit(second)
    cmd = vine.Task(f"{sys.executable} -c \"import pickle; print(pickle.load(open('in.p', "
                    "'rb')) * 10)\"")
    cmd.add_input(first.output_file, "in.p")
    m.submit(cmd)
    done = {t.id: t for t in wait_all(m, 3)}
    assert done[first.id].successful()
    with pytest.raises(vine.task.TaskOutputUnavailable):
        _ = done[first.id].output
    assert done[second.id].output == 42
    assert done[cmd.id].successful() and done[cmd.id].output.strip() == "420"
    assert m.stats.bytes_received == 0 or m.stats.bytes_received < 200  # stayed there


def test_files_in_the_calls_sandbox_and_in_the_librarys(
        manager: vine.Manager, workers: StartWorker, tmp_path: Path) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    lib = m.create_library_from_functions("lib", read_input, write_output, read_model,
                                          exec_mode="direct",
                                          library_context_info=[load_model, [], {}])
    lib.add_input(m.declare_buffer(b"resnet-50\n"), "model.txt")
    lib.set_env_var("LIB_VAR", "on")
    m.install_library(lib)
    t1 = vine.FunctionCall("lib", "read_input", "data.txt")
    t1.add_input(m.declare_buffer(b"hello call"), "data.txt")
    out = tmp_path / "out.txt"
    t2 = vine.FunctionCall("lib", "write_output", "result.txt", "written")
    t2.add_output(m.declare_file(str(out)), "result.txt")
    t3 = vine.FunctionCall("lib", "read_model")
    for t in (t1, t2, t3):
        m.submit(t)
    done = {t.id: t for t in wait_all(m, 3)}
    assert done[t1.id].output == "hello call"
    assert done[t2.id].successful() and out.read_text() == "written"
    sandbox = done[t2.id].output
    assert "/libraries/" not in sandbox  # its own sandbox, not the library's directory
    assert done[t3.id].output == "resnet-50"


def test_an_idle_library_is_evicted_for_another_one(manager: vine.Manager,
                                                   workers: StartWorker) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    for name in ("a", "b"):
        m.install_library(m.create_library_from_functions(name, add, exec_mode="fork"))
    m.submit(vine.FunctionCall("a", "add", 1, 1))
    assert wait_all(m, 1)[0].output == 2
    (a,) = instances(m, 1)
    m.submit(vine.FunctionCall("b", "add", 2, 2))
    assert wait_all(m, 1)[0].output == 4
    (b,) = instances(m, 1)
    assert (a["library"], b["library"]) == ("a", "b") and a["pid"] != b["pid"]
    # and an idle library makes room for a plain task that needs the worker
    t = vine.PythonTask(lambda a, b: a + b, 3, 4)
    m.submit(t)
    assert wait_all(m, 1)[0].output == 7


def test_remove_library_and_bad_arguments(manager: vine.Manager, workers: StartWorker) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    m.install_library(m.create_library_from_functions("lib", add))
    with pytest.raises(ValueError, match="installed already"):
        m.install_library(m.create_library_from_functions("lib", add))
    m.submit(vine.FunctionCall("lib", "add", 1, 2))
    assert wait_all(m, 1)[0].output == 3
    m.remove_library("lib")
    assert not m.check_library_exists("lib")
    m.submit(vine.FunctionCall("lib", "add", 1, 2))
    assert wait_all(m, 1)[0].result == "missing library"
    poll_until(lambda: not m.library_instances(), 10, "the removed library's instance to go")
    with pytest.raises(NotImplementedError, match="poncho"):
        m.create_library_from_functions("p", add, poncho_env="env.tar.gz")
    with pytest.raises(ValueError, match="exec_mode"):
        m.create_library_from_functions("p", add, exec_mode="thread")
    with pytest.raises(ValueError, match="library_context_info"):
        m.create_library_from_functions("p", add, library_context_info=["nope"])
    with pytest.raises(TypeError):
        m.submit(m.create_library_from_functions("p", add))
    with pytest.raises(ValueError, match="exec method"):
        vine.FunctionCall("lib", "add").set_exec_method("spawn")
    with pytest.raises(RuntimeError, match="inside a FunctionCall"):
        load_variable_from_library("x")
    with pytest.raises(ValueError, match="input file"):
        m.submit(vine.FunctionCall("lib", "add", b"x" * (40 << 20), 1))
    blob = b"x" * (40 << 20)
    with pytest.raises(ValueError, match="input files"):
        m.install_library(m.create_library_from_functions("huge", lambda: len(blob)))


def square(x: int) -> int:
    return x * x


def total(xs: list[int]) -> int:
    return sum(xs)


def test_remote_map_pair_and_tree_reduce(cluster: vine.Manager) -> None:
    m = cluster
    m.install_library(m.create_library_from_functions("hof", square, total, fail,
                                                      exec_mode="direct"))
    assert m.remote_map("square", range(10), "hof", chunksize=3) == [x * x for x in range(10)]
    assert m.remote_pair("total", [1, 2], [10, 20], "hof", chunksize=2) == [11, 21, 12, 22]
    assert m.remote_tree_reduce("total", range(1, 101), "hof", chunksize=4) == 5050
    with pytest.raises(ValueError, match="no good: 1"):
        m.remote_map("fail", [1, 2, 3], "hof")
    assert m.empty()


def broken_context() -> dict[str, Any]:
    raise KeyError("no-such-model")


def test_a_library_whose_context_raises_ends_its_calls_with_the_error(
        manager: vine.Manager, workers: StartWorker) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    m.install_library(m.create_library_from_functions(
        "bad", add, library_context_info=[broken_context, [], {}]))
    for i in range(5):
        m.submit(vine.FunctionCall("bad", "add", i, 1))
    done = wait_all(m, 5, timeout=60)
    assert {t.result for t in done} == {"library exit"}
    assert all("no-such-model" in t.error_message for t in done), done[0].error_message
    assert all(isinstance(t.output, vine.FunctionCallNoResult) for t in done)
    logs = list(Path(m._run.library_logs).glob("bad.*.log"))
    assert logs and any("KeyError" in p.read_text() for p in logs)


def test_calls_of_a_lost_worker_finish_on_the_other_one(manager: vine.Manager,
                                                        workers: StartWorker) -> None:
    m = manager
    first = workers(m)
    workers(m)
    wait_workers(m, 2)
    lib = m.create_library_from_functions("lib", slow, exec_mode="fork")
    lib.set_function_slots(4)
    m.install_library(lib)
    ids = submit_calls(m, "lib", "slow", [(0.2,)] * 24)
    poll_until(lambda: {r["worker"] for r in m.library_instances() if r["ready"]}
               == {"w1", "w2"}, 30, "an instance on each worker")
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its library processes
    done = wait_all(m, len(ids), timeout=60)
    assert all(t.successful() for t in done), [(t.result, t.error_message) for t in done]
    (survivor,) = {r["worker"] for r in m.library_instances()}  # (the killed one's gone)
    assert {t.worker for t in done if t.retries} == {survivor}  # its calls ran again there


def chatty(n: int) -> int:
    sys.stdout.write("x" * (n - 4) + "end\n")
    sys.stdout.flush()
    return n


def test_a_huge_library_log_comes_back_as_its_end(manager: vine.Manager,
                                                  workers: StartWorker) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    m.install_library(m.create_library_from_functions("talk", chatty, exec_mode="direct"))
    m.submit(vine.FunctionCall("talk", "chatty", 3 << 20))
    assert wait_all(m, 1)[0].output == 3 << 20
    (row,) = instances(m, 1)
    m.remove_library("talk")
    log = Path(m.library_log_path("talk", row["instance"]))
    text = poll_until(lambda: log.exists() and "ended" in log.read_text() and log.read_text(),
                      15, "the log of the removed library")
    assert "end\n" in text and len(text) < 1 << 20
    assert m.stats.workers_connected == 1  # the worker was not dropped for a big frame
    m.install_library(m.create_library_from_functions("again", add))
    m.submit(vine.FunctionCall("again", "add", 1, 1))
    assert wait_all(m, 1)[0].output == 2


def test_a_short_direct_call_is_not_held_back_by_a_long_one(manager: vine.Manager,
                                                           workers: StartWorker) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    lib = m.create_library_from_functions("lib", slow, exec_mode="direct")
    lib.set_function_slots(4)
    m.install_library(lib)
    m.submit(vine.FunctionCall("lib", "slow", 0.5))  # (warm: the instance is up)
    wait_all(m, 1)
    short = vine.FunctionCall("lib", "slow", 0.0)
    long = vine.FunctionCall("lib", "slow", 4.0)
    m.submit(short)
    m.submit(long)  # both reach the library in one batch; the short one runs first
    start = time.monotonic()
    first = m.wait(10)
    assert first is not None and first.id == short.id
    assert time.monotonic() - start < 3.0  # its reply did not wait for the long call
    assert wait_all(m, 1)[0].id == long.id
