"""A TaskVine program's tasks, written from TaskVine's manual: the outcome of every kind of
ending, retries, the task's environment, long stdout, measured resources, the keyword
constructor, PythonTask failures, and workers that outlive their manager.

Real ``vinework worker`` processes over TCP (conftest fixtures); bounded waits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import cloudpickle
import pytest

import vinework as vine

try:
    from conftest import poll_until, stop_process, wait_all, wait_running, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, stop_process, wait_all, wait_running, wait_workers

pytestmark = pytest.mark.timeout(120)
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests


def run_all(m: vine.Manager, tasks: list[vine.Task], timeout: float = 60) -> None:
    for t in tasks:
        m.submit(t)
    back = wait_all(m, len(tasks), timeout)
    assert sorted(t.id for t in back) == sorted(t.id for t in tasks)


# ---------------------------------------------------------------------- the outcome matrix
def test_outcome_matrix_of_command_tasks(cluster: vine.Manager, tmp_path: Any) -> None:
    m = cluster
    exit3 = vine.Task("echo out; exit 3")
    not_found = vine.Task("no-such-command-anywhere")
    not_exec = vine.Task("./script")
    plain = m.declare_buffer(b"#!/bin/sh\necho x\n")
    plain.set_mode(0o644)  # buffers are executable by default
    not_exec.add_input(plain, "script")
    signalled = vine.Task("kill -9 $$")
    made = tmp_path / "made.txt"
    exit2_with_output = vine.Task("echo data > o.txt; exit 2")
    exit2_with_output.add_output(m.declare_file(str(made)), "o.txt")
    missing_ok = vine.Task("true")
    missing_ok.add_output(m.declare_file(str(tmp_path / "never.txt")), "never.txt")
    missing_bad = vine.Task("exit 4")
    missing_bad.add_output(m.declare_file(str(tmp_path / "never2.txt")), "never2.txt")
    tasks = [exit3, not_found, not_exec, signalled, exit2_with_output, missing_ok, missing_bad]
    run_all(m, tasks)

    assert (exit3.result, exit3.exit_code, exit3.output) == ("success", 3, "out\n")
    assert exit3.completed() and not exit3.successful()
    assert (not_found.result, not_found.exit_code) == ("success", 127)
    assert (not_exec.result, not_exec.exit_code) == ("success", 126)
    assert (signalled.result, signalled.exit_code) == ("success", 9)
    assert (exit2_with_output.result, exit2_with_output.exit_code) == ("success", 2)
    assert made.read_text() == "data\n"  # outputs of a non-zero exit are brought back
    assert (missing_ok.result, missing_ok.exit_code) == ("output missing", 0)
    assert (missing_bad.result, missing_bad.exit_code) == ("output missing", 4)
    assert missing_bad.result == vine.VINE_RESULT_OUTPUT_MISSING


def test_time_limits(cluster: vine.Manager) -> None:
    m = cluster
    wall = vine.Task("sleep 30")
    wall.set_time_max(1)
    end = vine.Task("sleep 30")
    end.set_time_end((time.time() + 1.5) * 1e6)
    past = vine.Task("echo never")
    past.set_time_end((time.time() - 10) * 1e6)
    start = vine.Task("echo later")
    start.set_time_start((time.time() + 1.5) * 1e6)
    submitted = time.time()
    run_all(m, [wall, end, past, start])
    assert (wall.result, wall.exit_code) == ("max wall time", 9)
    assert (end.result, end.exit_code) == ("max end time", 9)
    assert past.result == "max end time" and past.output == ""
    assert start.successful() and start.start_time - submitted >= 1.0 - 0.2  # not before


def test_a_long_stdout_comes_back_whole(cluster: vine.Manager) -> None:
    m = cluster
    t = vine.Task("head -c 3000000 /dev/zero | tr '\\0' a; echo; echo end")
    run_all(m, [t])
    assert t.successful()
    assert len(t.output) == 3_000_000 + 5 and t.output.endswith("a\nend\n")
    assert m.stats.bytes_received_files >= 3_000_000  # as a file, not inside a message


def test_stdout_storage_cap(cluster: vine.Manager) -> None:
    m = cluster
    assert m.tune("max-task-stdout-storage", 200_000) == 0
    t = vine.Task("head -c 1000000 /dev/zero | tr '\\0' b")
    run_all(m, [t])
    assert t.result == "success" and 200_000 <= len(t.output) < 201_000 + 200


# ---------------------------------------------------------------------- retries, forsaken
def test_retries_cover_a_lost_worker_not_an_exit_code(
        manager: vine.Manager, workers: Any) -> None:
    m = manager
    p1 = workers(m, cores=1)
    wait_workers(m, 1)
    t = vine.Task("sleep 60")
    t.set_retries(1)  # one more run after a lost worker
    failing = vine.Task("exit 5")
    failing.set_retries(3)  # never re-run: a non-zero exit is the task's answer
    m.submit(t)
    wait_running(m, t.id)
    os.killpg(p1.pid, signal.SIGKILL)  # the worker dies with the task
    p2 = workers(m, cores=1)
    poll_until(lambda: m.stats.workers_lost >= 1 and m.stats.tasks_running == 1, 30,
               "the task running again on the second worker")
    os.killpg(p2.pid, signal.SIGKILL)
    back = m.wait(30)
    assert back is t and t.result == "max retries" and t.result == vine.VINE_RESULT_MAX_RETRIES
    workers(m, cores=1)
    m.submit(failing)
    back = m.wait(30)
    assert back is failing and failing.exit_code == 5 and failing.retries == 0
    for p in (p1, p2):
        stop_process(p, grace=1)


# ---------------------------------------------------------------------- env and constructor
def test_the_task_environment(manager: vine.Manager, workers: Any) -> None:
    m = manager
    workers(m, cores=2, memory=1000, disk=2000)
    script = ("echo CORES=$CORES OMP=$OMP_NUM_THREADS MKL=$MKL_NUM_THREADS MEMORY=$MEMORY "
              "DISK=$DISK GPUS=$GPUS; echo TMP=$TMPDIR; echo DISPLAY=${DISPLAY-unset}; "
              "echo MINE=$MINE GONE=${HOME-unset}; test -d \"$TMPDIR\" && echo tmpdir-ok")
    t = vine.Task(script, cores=1, memory=300, disk=400, env={"MINE": "x", "HOME": None})
    run_all(m, [t])
    out = t.output
    assert "CORES=1 OMP=1 MKL=1 MEMORY=300 DISK=400 GPUS=0" in out
    assert "/.taskvine.tmp" in out and "tmpdir-ok" in out
    assert "DISPLAY=unset" in out and "MINE=x GONE=unset" in out


def test_keyword_constructor_and_setters(tmp_path: Any) -> None:
    f = vine.File(vine.FileKind.TEMP)
    t = vine.Task("cmd", cores=2, memory=100, disk=50, gpus=0, tag="x", category="c",
                  priority=3, retries=4, time_max=10, features=["a", "b"],
                  inputs={f: "in.dat"}, outputs={f: {"remote_name": "out.dat"}},
                  env={"A": "1"})
    assert (t.cores, t.memory, t.disk, t.gpus, t.tag, t.category) == (2, 100, 50, 0, "x", "c")
    assert (t.priority, t.retries_max, t.time_max, t.features) == (3, 4, 10, ["a", "b"])
    assert t.inputs == [(f, "in.dat")] and t.outputs == [(f, "out.dat")] and t.env == {"A": "1"}
    with pytest.raises(TypeError, match="unknown option"):
        vine.Task("cmd", bogus=1)
    t.set_command("other")
    t.set_cores(-1)  # TaskVine's "unset"
    assert t.command == "other" and t.cores is None
    t.set_max_forsaken(2)
    t.set_scheduler("worst")
    assert t.max_forsaken == 2 and t.scheduler == "worst" and t.state == "INITIAL"
    with pytest.raises(TypeError, match="declare_poncho"):
        t.add_environment(f)  # a temp is not an environment


# ---------------------------------------------------------------------- python tasks
def _boom() -> None:
    raise ValueError("boom")


def test_python_task_failures_follow_taskvines_contract(manager: vine.Manager) -> None:
    m = manager  # no worker needed for the cancelled one
    raised = vine.PythonTask(_boom)
    cancelled = vine.PythonTask(sum, [1, 2])
    m.submit(cancelled)
    m.cancel_by_task_id(cancelled.id)
    back = m.wait(10)
    assert back is cancelled and isinstance(cancelled.output, vine.PythonTaskNoResult)
    assert cancelled.result == "cancelled"
    assert raised.output_file is not None
    args = [1]
    late = vine.PythonTask(sum, args)
    args.append(41)  # serialized at submit, as TaskVine
    m.submit(late)
    m.submit(raised)
    p = subprocess.Popen([sys.executable, "-m", "vinework", "worker", "localhost", str(m.port),
                          "--single-shot", "--timeout", "30"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = {t.id: t for t in wait_all(m, 2)}
        assert done[late.id].output == 42
        err = done[raised.id].output
        assert isinstance(err, ValueError) and str(err) == "boom"
        assert not raised.successful()
    finally:
        m.close()
        stop_process(p, grace=10)


def test_resources_measured(cluster: vine.Manager) -> None:
    m = cluster
    m.enable_monitoring()
    t = vine.Task("python3 -c 'x = bytearray(60_000_000); sum(range(3_000_000))'")
    t.set_memory(20)  # it uses more than it was given: limits_exceeded says so
    t.set_cores(1)
    run_all(m, [t])
    r = t.resources_measured
    assert t.successful() and r.wall_time > 0 and r.cpu_time > 0 and r.memory >= 60
    assert t.limits_exceeded is not None and t.limits_exceeded.memory >= 60
    assert t.get_metric("time_when_done") >= t.get_metric("time_when_submitted") > 0


# ---------------------------------------------------------------------- workers outlive managers
def test_workers_outlive_the_manager_and_keep_worker_level_files(tmp_path: Any) -> None:
    data = tmp_path / "data.txt"
    data.write_text("keep me\n")
    m1 = vine.Manager(port=0, run_info_path=str(tmp_path / "r1"))  # shutdown=False
    port = m1.port
    p = subprocess.Popen([sys.executable, "-m", "vinework", "worker", "localhost", str(port),
                          "--timeout", "60", "--workdir", str(tmp_path / "w"),
                          "--min-backoff", "0.2", "--max-backoff", "0.5"],
                         start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        keep = m1.declare_file(str(data), cache="worker")
        drop = m1.declare_buffer(b"workflow only", cache=True)
        t = vine.Task("cat k d")
        t.add_input(keep, "k")
        t.add_input(drop, "d")
        m1.submit(t)
        assert m1.wait(30) is t and t.output == "keep me\nworkflow only"
        m1.close()
        time.sleep(0.2)
        assert p.poll() is None  # it waits for the next manager
        m2 = vine.Manager(port=port, run_info_path=str(tmp_path / "r2"))
        try:
            wait_workers(m2, 1, timeout=30)
            keep2 = m2.declare_file(str(data), cache="worker")
            drop2 = m2.declare_buffer(b"workflow only", cache=True)
            t2 = vine.Task("cat k d")
            t2.add_input(keep2, "k")
            t2.add_input(drop2, "d")
            m2.submit(t2)
            assert m2.wait(30) is t2 and t2.successful()
            st = m2.stats
            # the worker-level file was still there; the workflow-level buffer was sent again
            assert st.bytes_sent == len(b"workflow only")
        finally:
            m2.shutdown = True
            m2.close()
        p.wait(timeout=20)
    finally:
        stop_process(p, grace=1)


def _raw_bytes() -> bytes:
    return b"plain bytes\n"


def test_disable_output_serialization_keeps_the_bytes_as_they_are(cluster: vine.Manager) -> None:
    m = cluster
    inline = vine.PythonTask(_raw_bytes)
    inline.disable_output_serialization()
    kept = vine.PythonTask(_raw_bytes)
    kept.disable_output_serialization()
    kept.enable_temp_output()
    wrong = vine.PythonTask(len, "not bytes")
    wrong.disable_output_serialization()
    reader = vine.Task("cat result")  # a command reads the result file as it is
    reader.add_input(kept.output_file, "result")
    run_all(m, [inline, kept, wrong, reader])
    assert inline.output == b"plain bytes\n"
    assert reader.output == "plain bytes\n"
    assert isinstance(wrong.output, TypeError) and "must return bytes" in str(wrong.output)


# ---------------------------------------------------------------------- file modes
def test_executables_and_scripts_keep_their_mode_on_every_worker(
        manager: vine.Manager, workers: Any, tmp_path: Any) -> None:
    m = manager
    workers(m, extra=("--feature", "maker"))
    workers(m, extra=("--feature", "user"))
    wait_workers(m, 2)
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $0\n")
    script.chmod(0o750)
    plain = tmp_path / "plain.txt"
    plain.write_text("x\n")
    plain.chmod(0o640)
    shipped = m.declare_file(str(script), cache=True)
    buf = m.declare_buffer(b"#!/bin/sh\necho buffer runs\n")  # executable by default
    quiet = m.declare_buffer(b"#!/bin/sh\necho no\n")
    quiet.set_mode(0o644)
    made = m.declare_temp()
    # a task makes an executable temp; a consumer on the other worker (a peer transfer)
    # runs it
    maker = vine.Task("printf '#!/bin/sh\\necho made here\\n' > tool; chmod 755 tool")
    maker.add_output(made, "tool")
    maker.add_feature("maker")
    user = vine.Task("./tool")
    user.add_input(made, "tool")
    user.add_feature("user")
    runs = [vine.Task("./hello.sh"), vine.Task("./it"), vine.Task("./q"),
            vine.Task("stat -c %a plain.txt")]
    runs[0].add_input(shipped, "hello.sh")
    runs[1].add_input(buf, "it")
    runs[2].add_input(quiet, "q")
    runs[3].add_input(m.declare_file(str(plain)), "plain.txt")
    run_all(m, [maker, user, *runs])
    assert runs[0].output == "hello from ./hello.sh\n" and runs[0].successful()
    assert runs[1].output == "buffer runs\n"
    assert runs[2].exit_code == 126  # set_mode(0o644): not executable
    assert runs[3].output == "640\n"
    assert user.output == "made here\n" and user.successful()
    assert m.stats.transfers_peer == 1  # the tool went worker to worker, mode and all


def test_file_contents_len_and_type(cluster: vine.Manager, tmp_path: Any) -> None:
    m = cluster
    local = tmp_path / "local.txt"
    local.write_bytes(b"local bytes")
    lf = m.declare_file(str(local))
    buf = m.declare_buffer(b"buffer bytes")
    tmp = m.declare_temp()
    t = vine.Task("printf 'made by a task' > out")
    t.add_output(tmp, "out")
    run_all(m, [t])
    assert (lf.type(), buf.type(), tmp.type()) == (vine.VINE_FILE, vine.VINE_BUFFER, vine.VINE_TEMP)
    assert lf.contents() == b"local bytes" and len(lf) == 11
    assert buf.contents() == b"buffer bytes" and len(buf) == 12
    assert tmp.contents() == b"made by a task" and len(tmp) == 14
    assert tmp.contents(lambda b: b.decode().upper()) == "MADE BY A TASK"
    assert bool(m.declare_buffer(b"")) and len(m.declare_buffer(b"")) == 0


def test_a_url_cannot_be_an_output(manager: vine.Manager) -> None:
    t = vine.Task("true")
    with pytest.raises(ValueError, match="cannot be a task output"):
        t.add_output(manager.declare_url("http://127.0.0.1:9/x"), "x")
    assert t.outputs == []
