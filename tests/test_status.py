"""Status queries on the manager's port and the ``vinework status`` command.

A real manager with real worker processes running tasks; the command runs as a
subprocess against it over TCP. Checks: the JSON matches ``m.stats``, the
tables name the workers, a status client never counts as a worker, and with a
password set only the right one gets data (the others get one line saying why).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

import vinework as vine
from vinework.observe.status import manager_snapshot
from vinework.observe.status_cli import StatusError, parse_address, query
from vinework.observe.status_cli import main as status_main

try:
    from conftest import poll_until, wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, wait_all, wait_workers

pytestmark = pytest.mark.timeout(90)


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vinework", "status", *args],
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def run_some(m: vine.Manager) -> vine.File:
    """Tasks that pass a temp file worker to worker, one that fails, and a few plain."""
    tmp = m.declare_temp()
    make = vine.Task("head -c 5000 /dev/zero > out")
    make.add_output(tmp, "out")
    use = vine.Task("wc -c < in")
    use.add_input(tmp, "in")
    m.submit(make)
    m.submit(use)
    bad = vine.Task("true")
    bad.add_output(m.declare_temp(), "never-made")  # fails: output missing
    m.submit(bad)
    for i in range(3):
        m.submit(vine.Task(f"echo {i}"))
    wait_all(m, 6)
    return tmp  # (kept: a temp nobody holds is pruned)


def test_status_json_matches_the_managers_stats(manager: vine.Manager, workers: Any) -> None:
    m = manager
    workers(m)
    workers(m)
    wait_workers(m, 2)
    tmp = run_some(m)
    r = status(f"localhost:{m.port}", "--json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    st = m.stats
    for key in ("tasks_submitted", "tasks_done", "tasks_failed", "workers_connected",
                "bytes_peer", "bytes_sent", "bytes_received", "transfers_peer",
                "total_cores", "inuse_cache"):
        assert snap["stats"][key] == getattr(st, key), key
    assert snap["stats"]["tasks_done"] == 6 and snap["stats"]["tasks_failed"] >= 1
    assert st.workers_connected == 2  # the status client did not count as a worker
    assert sorted(w["worker_id"] for w in snap["workers"]) == ["w1", "w2"]
    assert sum(w["cores_total"] for w in snap["workers"]) == 4
    assert sum(w["tasks_done"] for w in snap["workers"]) == 6
    assert snap["tasks"]["done"] == 6 and snap["tasks"]["running"] == 0
    # the temp lives on a worker only (none of them is checkpointed)
    assert snap["files"]["workers_only"]["files"] >= 1
    assert snap["files"]["checkpointed"]["files"] == 0
    assert snap["transfers"]["in_flight"] == 0
    del tmp
    poll_until(lambda: m._server.status_answered == 1, 10, "the answer to be counted")
    assert m._server.rejected == 0

    tables = status(f"localhost:{m.port}")
    assert tables.returncode == 0, tables.stderr
    for word in ("workers", "w1", "w2", "tasks by state", "files by where they live",
                 "recoveries and transfers in flight"):
        assert word in tables.stdout, word


def test_a_status_query_sees_a_task_wait_just_returned(manager: vine.Manager,
                                                       workers: Any) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    m.submit(vine.Task("true"))
    [t] = wait_all(m, 1)
    assert t.successful()
    # wait() hands the core its TaskCollected quietly; the query applies it first
    snap = query("localhost", m.port)
    assert snap["tasks"]["by_state"].get("RETRIEVED", 0) == 0, snap["tasks"]["by_state"]
    assert snap["tasks"]["done"] == 1


def test_the_snapshot_is_the_loop_threads_view(manager: vine.Manager, workers: Any) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    t = vine.Task("sleep 30")
    t.set_category("slow")
    t.set_cores(1)
    m.submit(t)
    u = vine.Task("sleep 30")
    u.set_cores(1)
    m.submit(u)  # (2 cores: both run)

    def both_running() -> bool:
        return int(m._ask(lambda: manager_snapshot(m))["tasks"]["running"]) == 2
    poll_until(both_running, 20, "two running tasks")
    snap = query("localhost", m.port)
    assert snap["workers"][0]["tasks_running"] == 2
    assert snap["workers"][0]["cores_inuse"] == 2
    cats = {c["category"]: c for c in snap["tasks"]["categories"]}
    assert cats["slow"]["running"] == 1
    only = query("localhost", m.port, what="workers")
    assert set(only) == {"schema", "time", "workers"}
    with pytest.raises(StatusError, match="unknown status 'nonsense'"):
        query("localhost", m.port, what="nonsense")
    m.cancel_by_task_id(t.id)
    m.cancel_by_task_id(u.id)


def test_with_a_password_only_the_right_one_gets_data(
        manager: vine.Manager, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    m = manager
    m.set_password("sesame")
    right = tmp_path / "right"
    right.write_text("sesame\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("open up")
    r = status(f"localhost:{m.port}", "--json")  # (the command itself, once)
    assert r.returncode == 1 and r.stdout == ""
    assert "requires a password" in r.stderr and len(r.stderr.splitlines()) == 1
    capsys.readouterr()
    assert status_main([f"localhost:{m.port}", "--json", "--password", str(wrong)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "could not prove it knows the password" in err
    assert len(err.splitlines()) == 1
    assert status_main([f"localhost:{m.port}", "--json", "--password", str(right)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["manager"]["password"] is True
    assert status_main([f"localhost:{m.port}", "--password", str(tmp_path / "none")]) == 2
    assert "cannot read the password file" in capsys.readouterr().err
    poll_until(lambda: m._server.status_answered == 1, 10, "the answer to be counted")


def test_a_wrong_proof_gets_nothing(manager: vine.Manager) -> None:
    """A client that skips the password check on its side still gets no data."""
    import socket

    from vinework.protocol import PROTOCOL_VERSION, FrameDecoder, encode
    from vinework.protocol.auth import new_nonce
    from vinework.protocol.messages import Challenge, Proof, StatusQuery, StatusReply
    m = manager
    m.set_password("sesame")
    with socket.create_connection(("localhost", m.port), timeout=10) as s:
        s.sendall(encode(StatusQuery(version=PROTOCOL_VERSION, what="all", nonce=new_nonce())))
        dec = FrameDecoder()
        got: list[Any] = []
        while len(got) < 2:
            msg = dec.next_message()
            if msg is not None:
                got.append(msg)
                if isinstance(msg, Challenge):
                    s.sendall(encode(Proof(proof="0" * 64)))
                continue
            data = s.recv(65536)
            if not data:
                break
            dec.receive_data(data)
    assert isinstance(got[0], Challenge)
    assert isinstance(got[1], StatusReply) and got[1].json == ""
    assert "wrong password" in got[1].error
    # (counted once the manager has closed the connection, just after its reply)
    poll_until(lambda: m._server.rejected == 1, 10, "the refusal to be counted")
    assert m._server.status_answered == 0


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = status(f"127.0.0.1:{port}")
    assert r.returncode == 1 and "cannot connect" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert status_main(["localhost:notaport"]) == 2
    assert "not a manager address" in capsys.readouterr().err
    assert status_main(["localhost:1", "--watch", "-1"]) == 2
    assert "--watch" in capsys.readouterr().err
    assert parse_address(["host", "9123"]) == ("host", 9123)
    assert parse_address(["[::1]:9123"]) == ("::1", 9123)
    assert parse_address(["9123"]) == ("localhost", 9123)


def test_watch_refreshes_until_stopped(manager: vine.Manager) -> None:
    """``--watch`` asks again every period (JSON lines here; rich.live on a terminal)."""
    m = manager
    p = subprocess.Popen([sys.executable, "-m", "vinework", "status", f"localhost:{m.port}",
                          "--json", "--watch", "0.1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert p.stdout is not None
        first = json.loads(p.stdout.readline())
        m.submit(vine.Task("true"))  # no worker: it waits
        poll_until(lambda: json.loads(p.stdout.readline())["tasks"]["waiting"] == 1  # type: ignore[union-attr]
                   , 20, "a refreshed status with the waiting task")
        assert first["tasks"]["waiting"] == 0
    finally:
        p.kill()
        p.wait(10)
        if p.stdout is not None:
            p.stdout.close()
        if p.stderr is not None:
            p.stderr.close()
    poll_until(lambda: m._server.status_answered >= 2, 10, "the answers to be counted")


def test_queries_over_tls_and_while_tasks_run(tmp_path: Any, workers: Any) -> None:
    """With TLS the client needs --ssl (the manager's certificate verifies it with
    --ssl-ca); queries made while tasks run change nothing they do."""
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "ri"), shutdown=True, ssl=True)
    try:
        workers(m, extra=("--ssl",))
        wait_workers(m, 1)
        import os
        ca = os.path.join(m.runtime_directory, "tls", "manager.pem")  # its throwaway cert
        assert os.path.exists(ca)
        for i in range(8):
            t = vine.Task(f"echo {i}")
            t.set_cores(1)
            m.submit(t)
        answers = []
        while not m.empty():
            answers.append(query("localhost", m.port, tls=_client_tls(str(ca))))
            m.wait(0.05)
        assert m.stats.tasks_done == 8 and m.stats.tasks_failed == 0
        assert m.stats.workers_connected == 1 and m._server.rejected == 0
        assert answers and all(a["manager"]["ssl"] for a in answers)
        r = status(f"localhost:{m.port}", "--json", "--ssl", "--ssl-ca", str(ca))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["stats"]["tasks_done"] == 8
        r = status(f"localhost:{m.port}", "--json")  # plain TCP to a TLS port
        assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    finally:
        m.close()


def _client_tls(ca: str) -> Any:
    from vinework.tlsconf import manager_client_context
    return manager_client_context(ca)
