"""Real-process tests: one manager and worker processes over real TCP on localhost.

Each test starts its own workers (``python -m vinework worker``) through the
``workers`` factory of conftest.py; they are ended by pid at teardown.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest

import vinework as vine
from vinework.protocol import PROTOCOL_VERSION, Hello, encode
from vinework.protocol.messages import CacheReport, Proof

try:
    from conftest import poll_until, task_states, wait_all, wait_running, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, task_states, wait_all, wait_running, wait_workers

pytestmark = pytest.mark.timeout(60)

# PythonTask functions below are shipped by value: workers cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------------- command tasks
def test_fanout_200_tasks_with_inputs_and_outputs(cluster, tmp_path):
    m = cluster
    shared = m.declare_buffer(b"shared-line\n", cache=True)
    script = tmp_path / "stamp.sh"
    script.write_text('cat data.txt; echo "task $1"; cat mine.txt\n')
    script_file = m.declare_file(str(script), cache=True)
    outdir = tmp_path / "out"
    outdir.mkdir()
    n = 200
    expected = {}
    for i in range(n):
        t = vine.Task(f"sh stamp.sh {i} > result.txt")
        t.add_input(shared, "data.txt")
        t.add_input(script_file, "stamp.sh")
        t.add_input(m.declare_buffer(f"own-{i}\n"), "mine.txt")
        t.add_output(m.declare_file(str(outdir / f"r{i}.txt")), "result.txt")
        t.set_cores(1)
        tid = m.submit(t)
        expected[tid] = (i, t)
    done = wait_all(m, n, timeout=50)
    assert sorted(t.id for t in done) == sorted(expected)
    for t in done:
        assert t.successful(), (t.id, str(t.result), t.exit_code, t.output)
    for i in range(n):
        assert (outdir / f"r{i}.txt").read_text() == f"shared-line\ntask {i}\nown-{i}\n"
    st = m.stats
    assert st.tasks_done == n and st.tasks_failed == 0
    assert {t.worker for t in done} == {"w1", "w2"}  # both workers took part
    assert m.empty()


def test_worker_killed_mid_task_tasks_finish_elsewhere(manager, workers, tmp_path):
    m = manager
    procs = {}
    for wid in ("w1", "w2"):  # worker ids follow connection order
        procs[wid] = workers(m)
        wait_workers(m, len(procs))
    outdir = tmp_path / "out"
    outdir.mkdir()
    ids = []
    for i in range(4):
        t = vine.Task("sleep 2; echo ok > out")
        t.add_output(m.declare_file(str(outdir / f"o{i}")), "out")
        t.set_cores(1)
        ids.append(m.submit(t))
    victim = wait_running(m, ids[0])
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait(timeout=10)
    done = wait_all(m, 4, timeout=30)
    for t in done:
        assert t.successful(), (t.id, str(t.result), t.error_message)
        assert t.worker != victim
    for i in range(4):
        assert (outdir / f"o{i}").read_text() == "ok\n"
    st = m.stats
    assert st.workers_lost == 1
    assert st.workers_connected == 1
    assert st.tasks_done == 4 and st.tasks_failed == 0


def test_time_limit_kills_task(cluster):
    m = cluster
    t = vine.Task("sleep 30")
    t.set_time_max(1)
    start = time.monotonic()
    m.submit(t)
    (r,) = wait_all(m, 1, timeout=20)
    assert time.monotonic() - start < 10
    assert r.result == vine.VINE_RESULT_MAX_WALL_TIME
    assert str(r.result) == "max wall time"
    assert not r.successful() and not r.completed()


def test_missing_local_input_is_returned_as_input_missing(manager, tmp_path):
    m = manager
    missing = tmp_path / "no-such-input.txt"
    t = vine.Task("cat in.txt")
    t.add_input(m.declare_file(str(missing)), "in.txt")
    m.submit(t)  # TaskVine's behaviour: no exception here; wait() returns it
    assert m.wait(5) is t and t.result == "input missing" and t.exit_code == -1
    assert str(missing) in t.error_message and "in.txt" in t.error_message
    assert m.empty()


def test_output_not_created_is_output_missing(cluster, tmp_path):
    m = cluster
    t = vine.Task("echo hi > other.txt")
    target = tmp_path / "expected.txt"
    t.add_output(m.declare_file(str(target)), "expected.txt")
    m.submit(t)
    (r,) = wait_all(m, 1)
    assert r.result == vine.VINE_RESULT_OUTPUT_MISSING
    assert str(r.result) == "output missing"
    assert not r.successful()
    assert "expected.txt" in r.error_message
    assert not target.exists()


def test_nonzero_exit_is_completed_not_successful(cluster):
    m = cluster
    t = vine.Task("echo partial; exit 3")
    m.submit(t)
    (r,) = wait_all(m, 1)
    assert r.completed()
    assert not r.successful()
    assert r.exit_code == 3
    assert r.result == vine.VINE_RESULT_SUCCESS
    assert r.output == "partial\n"
    assert m.stats.tasks_failed == 0 and m.stats.tasks_done == 1  # TaskVine's counters


COUNTER = 'n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo attempt $n; [ $n -ge 3 ]'


def test_retries_never_rerun_a_nonzero_exit(cluster, tmp_path):
    # TaskVine: retries cover a lost worker or exhausted resources; an exit code is the
    # task's own answer (set_max_retries is vinework's older name of set_retries)
    m = cluster
    counter = tmp_path / "counter"
    t = vine.Task(COUNTER.format(c=counter))
    t.set_max_retries(2)
    m.submit(t)
    (r,) = wait_all(m, 1)
    assert r.completed() and not r.successful() and r.exit_code == 1
    assert counter.read_text() == "1\n" and r.retries == 0


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/../../b", "a/..", ".."])
def test_unsafe_remote_names_rejected(bad):
    f = vine.File(vine.FileKind.TEMP)
    t = vine.Task("true")
    with pytest.raises(ValueError):
        t.add_input(f, bad)
    with pytest.raises(ValueError):
        t.add_output(f, bad)
    assert t.inputs == [] and t.outputs == []


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # dead, unreaped
    except FileNotFoundError:
        return True


def test_cancel_running_task(cluster, tmp_path):
    m = cluster
    pidfile = tmp_path / "pid"
    t = vine.Task(f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 30")
    start = time.monotonic()
    tid = m.submit(t)
    wait_running(m, tid)
    pid = int(poll_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10,
                         "the task to write its pid"))
    assert m.cancel_by_task_id(tid)
    (r,) = wait_all(m, 1, timeout=10)
    assert r.result == vine.VINE_RESULT_CANCELLED
    assert str(r.result) == "cancelled"
    assert not r.successful()
    poll_until(lambda: _pid_gone(pid), 10, "the cancelled command to be killed")
    assert time.monotonic() - start < 15
    assert not m.cancel_by_task_id(tid)  # already done
    # the worker is free again
    t2 = vine.Task("echo after")
    t2.set_cores(2)
    m.submit(t2)
    (r2,) = wait_all(m, 1)
    assert r2.successful() and r2.output == "after\n"


# ---------------------------------------------------------------------- PythonTask
def double(x):
    return x * 2


def explode(x):
    raise ValueError(f"boom {x}")


def make_lock():
    return threading.Lock()


def make_generator():
    return (i for i in range(3))


def make_list(n):
    return list(range(n))


def total(path):
    with open(path, "rb") as f:
        return sum(cloudpickle.load(f))


def test_python_task_returns_value(cluster):
    m = cluster
    t = vine.PythonTask(double, 21)
    m.submit(t)
    (r,) = wait_all(m, 1)
    assert r is t
    assert t.successful()
    assert t.output == 42


def test_python_task_raising(cluster):
    m = cluster
    t = vine.PythonTask(explode, 7)
    m.submit(t)
    (r,) = wait_all(m, 1)
    assert not r.successful()
    exc = r.output
    assert isinstance(exc, ValueError)
    assert str(exc) == "boom 7"
    tb = getattr(exc, "remote_traceback", "") or "\n".join(getattr(exc, "__notes__", []))
    assert "explode" in tb and "boom 7" in tb
    assert any("Remote traceback" in n for n in getattr(exc, "__notes__", []))


@pytest.mark.parametrize("fn", [make_lock, make_generator])
def test_python_task_unpicklable_result(cluster, fn):
    m = cluster
    t = vine.PythonTask(fn)
    m.submit(t)
    (r,) = wait_all(m, 1)
    assert not r.successful()
    exc = r.output
    assert isinstance(exc, BaseException)
    assert isinstance(exc, TypeError)
    assert "return value could not be pickled" in str(exc)
    assert "cannot pickle" in str(exc)  # and why
    assert "could not be pickled" in exc.remote_traceback


def test_python_temp_output_feeds_consumer(cluster):
    m = cluster
    a = vine.PythonTask(make_list, 1000)
    a.enable_temp_output()
    m.submit(a)
    b = vine.PythonTask(total, "in.p")
    b.add_input(a.output_file, "in.p")
    m.submit(b)
    done = {t.id: t for t in wait_all(m, 2)}
    assert done[a.id].successful() and done[b.id].successful()
    assert b.output == sum(range(1000))
    with pytest.raises(vine.TaskOutputUnavailable, match="output_file"):
        _ = a.output
    assert m.get_file_replica_count(a.output_file) >= 1
    assert cloudpickle.loads(m.fetch_file(a.output_file, timeout=10)) == list(range(1000))


def test_failed_temp_producer_fails_consumer_with_input_missing(cluster):
    m = cluster
    a = vine.PythonTask(explode, 1)
    a.enable_temp_output()
    m.submit(a)
    b = vine.PythonTask(total, "in.p")
    b.add_input(a.output_file, "in.p")
    m.submit(b)
    done = {t.id: t for t in wait_all(m, 2)}
    assert not done[a.id].successful()
    assert done[b.id].result == vine.VINE_RESULT_INPUT_MISSING
    assert str(done[b.id].result) == "input missing"
    assert str(a.id) in done[b.id].error_message


# ---------------------------------------------------------------------- peer transfers
def test_temp_moves_worker_to_worker_not_through_manager(manager, workers):
    m = manager
    size = 2_000_000
    workers(m)
    wait_workers(m, 1)
    temp = m.declare_temp()
    prod = vine.Task(f"head -c {size} /dev/urandom > out.dat")
    prod.add_output(temp, "out.dat")
    prod.set_cores(2)
    m.submit(prod)
    (p,) = wait_all(m, 1)
    assert p.successful() and p.worker == "w1"
    # occupy w1 completely, then bring w2: the consumer can only run on w2
    blocker = vine.Task("sleep 30")
    blocker.set_cores(2)
    bid = m.submit(blocker)
    assert wait_running(m, bid) == "w1"
    workers(m)
    wait_workers(m, 2)
    cons = vine.Task("md5sum in.dat")
    cons.add_input(temp, "in.dat")
    cons.set_cores(2)
    m.submit(cons)
    (c,) = wait_all(m, 1)
    assert c.successful(), (str(c.result), c.output, c.error_message)
    assert c.worker == "w2"
    m.cancel_by_task_id(bid)
    (b,) = wait_all(m, 1)
    assert b.result == vine.VINE_RESULT_CANCELLED
    st = m.stats
    assert st.bytes_peer >= size and st.transfers_peer >= 1
    assert st.bytes_received_files == 0  # the temp never reached the manager
    # what did: the tasks' output text, inside their completion messages
    assert st.bytes_received == st.bytes_received_inline >= len(c.output)
    assert st.bytes_sent == 0
    assert m.get_file_replica_count(temp) == 2
    data = m.fetch_file(temp, timeout=10)
    assert len(data) == size
    assert c.output.split()[0] == hashlib.md5(data).hexdigest()
    assert m.stats.bytes_received_files == size  # only fetch_file brought it back


# ---------------------------------------------------------------------- robustness
def _expect_dropped(port: int, payload: bytes) -> None:
    """Send ``payload`` as a new client; the manager must close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.settimeout(8)  # less than the manager's handshake timeout
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"the manager kept a connection that sent {payload[:20]!r}")


def test_manager_drops_garbage_clients_and_keeps_serving(manager, workers):
    m = manager
    _expect_dropped(m.port, b"\x00\x00\x00\x04\xc1\xc1\xc1\xc1")  # undecodable msgpack
    _expect_dropped(m.port, struct.pack(">I", 1 << 31) + b"x" * 100)  # oversized frame
    _expect_dropped(m.port, b"GET / HTTP/1.0\r\n\r\n")  # not our protocol at all
    _expect_dropped(m.port, encode(Hello(version=PROTOCOL_VERSION + 99, hostname="x", cores=1,
                                         memory=1, disk=1, gpus=0, transfer_port=1, cached=[])))
    st = m.stats
    assert st.workers_joined == 0 and st.workers_connected == 0
    # a client that passes the handshake and then sends junk is dropped too
    hello = encode(Hello(version=PROTOCOL_VERSION, hostname="fake", cores=1, memory=10,
                         disk=10, gpus=0, transfer_port=1, cached=[], nonce="ab" * 16))
    with socket.create_connection(("127.0.0.1", m.port), timeout=10) as s:
        s.sendall(hello + encode(Proof(proof="")) + encode(CacheReport(cached=[])))
        poll_until(lambda: m.stats.workers_joined == 1, 10, "the fake worker to join")
        s.sendall(struct.pack(">I", 1 << 30))
        poll_until(lambda: m.stats.workers_lost == 1, 10, "the fake worker to be dropped")
    assert m.stats.workers_connected == 0
    # real workers are still served
    workers(m)
    wait_workers(m, 1)
    t = vine.Task("echo still-serving")
    m.submit(t)
    (r,) = wait_all(m, 1)
    assert r.successful() and r.output == "still-serving\n"


def test_closing_manager_makes_workers_exit(manager, workers):
    m = manager
    procs = [workers(m), workers(m)]
    wait_workers(m, 2)
    t = vine.Task("echo hi")
    m.submit(t)
    (r,) = wait_all(m, 1)
    assert r.successful()
    m.close()
    for p in procs:
        try:
            assert p.wait(timeout=10) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {p.pid} did not exit after the manager closed")


def test_status_reports_running_tasks(cluster):
    m = cluster
    t = vine.Task("sleep 30")
    tid = m.submit(t)
    wid = wait_running(m, tid)
    assert task_states(m)[tid] == ("RUNNING", wid)
    rows = {w["worker_id"]: w for w in m.worker_stats()}
    assert set(rows) == {"w1", "w2"}
    assert rows[wid]["running"] == 1
    m.cancel_by_task_id(tid)
    wait_all(m, 1)
    assert os.path.isdir(m.run_dir)


def test_hungry_until_enough_tasks_wait(manager: vine.Manager) -> None:
    m = manager
    assert m.hungry()  # nothing waiting
    for _ in range(12):  # more than hungry-minimum (10) with no worker connected
        m.submit(vine.Task("true"))
    assert not m.hungry()
    m.tune("hungry-minimum", 100)
    assert m.hungry()
