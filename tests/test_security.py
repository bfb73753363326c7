"""Security with real processes: results unpickled only in the user's thread, password
authentication (both ways, refusals logged, a failed peer never a worker), transfer
tokens, and the bounds on what an unauthenticated connection may send."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

import vinework as vine
from vinework.protocol import (
    PROTOCOL_VERSION,
    CacheUpdate,
    FrameDecoder,
    Heartbeat,
    Hello,
    encode,
)
from vinework.protocol.auth import make_token
from vinework.protocol.messages import CacheReport, Challenge, Proof
from vinework.protocol.transfer import TransferError, fetch_file
from vinework.tlsconf import throwaway_pair

try:
    from conftest import poll_until, wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, wait_all, wait_workers

pytestmark = pytest.mark.timeout(60)


def test_a_result_is_unpickled_in_the_thread_that_reads_it(manager: vine.Manager,
                                                           workers: Any) -> None:
    class Probe:  # (a local class: cloudpickle sends it by value)
        def __setstate__(self, state: dict[str, Any]) -> None:
            import threading as th
            self.__dict__.update(state)
            self.unpickled_in = th.current_thread().name

    def make() -> Probe:
        p = Probe()
        p.value = 42  # type: ignore[attr-defined]
        return p

    m = manager
    workers(m)
    wait_workers(m, 1)
    t = vine.PythonTask(make)
    m.submit(t)
    (done,) = wait_all(m, 1)
    box: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: box.update(out=done.output), name="the-reader")
    reader.start()
    reader.join(10)
    assert box["out"].value == 42
    assert box["out"].unpickled_in == "the-reader"  # not the manager's loop thread
    assert done.output is box["out"]  # made once


# ---------------------------------------------------------------------- passwords
def _password_file(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text + "\n")
    p.chmod(0o600)
    return str(p)


def _worker_log(tmp_path: Path, n: int) -> str:
    return (tmp_path / f"worker-{n}.log").read_text()


def test_a_worker_with_the_password_works(manager: vine.Manager, workers: Any,
                                          tmp_path: Path) -> None:
    m = manager
    m.set_password("s3cret")
    workers(m, extra=("--password", _password_file(tmp_path, "pw", "s3cret")))
    wait_workers(m, 1)
    t = vine.Task("echo hello")
    m.submit(t)
    (done,) = wait_all(m, 1)
    assert done.successful() and done.output == "hello\n"


@pytest.mark.parametrize("worker_pw, manager_pw, says", [
    ("wrong", "s3cret", "does not know this worker's password"),
    (None, "s3cret", "requires a password"),
    ("s3cret", None, "has no password but this worker has one"),
])
def test_a_worker_and_a_manager_that_disagree_never_work_together(
        manager: vine.Manager, workers: Any, tmp_path: Path, worker_pw: str | None,
        manager_pw: str | None, says: str) -> None:
    m = manager
    if manager_pw:
        m.set_password(manager_pw)
    extra = ("--password", _password_file(tmp_path, "pw", worker_pw)) if worker_pw else ()
    p = workers(m, extra=extra)
    assert p.wait(timeout=20) == 1
    assert says in _worker_log(tmp_path, 0)
    assert m.stats.workers_connected == 0 and m.stats.workers_joined == 0
    poll_until(lambda: m._server.rejected >= 1, 10, "the manager to record the rejection")


def _raw(m: vine.Manager) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", m.port), timeout=10)
    return s


def _hello(nonce: str = "ab" * 16) -> bytes:
    return encode(Hello(version=PROTOCOL_VERSION, hostname="x", cores=64, memory=1, disk=1,
                        gpus=0, transfer_port=1, cached=[], nonce=nonce))


def _read_frame(s: socket.socket) -> Any:
    dec = FrameDecoder()
    while True:
        msg = dec.next_message()
        if msg is not None:
            return msg
        data = s.recv(65536)
        if not data:
            return None
        dec.receive_data(data)


def test_a_client_that_fails_the_proof_never_becomes_a_worker(manager: vine.Manager) -> None:
    m = manager
    m.set_password("s3cret")
    t = vine.Task("echo never")
    m.submit(t)
    with _raw(m) as s:
        s.sendall(_hello())
        challenge = _read_frame(s)
        assert isinstance(challenge, Challenge) and challenge.proof  # the manager proves
        s.sendall(encode(Proof(proof="00" * 32)) + encode(CacheReport(cached=[])))
        assert _read_frame(s) is None  # closed: no Welcome, no task, no file name
    assert m.stats.workers_joined == 0 and m._server.rejected == 1
    assert m.wait(0) is None  # the task was never sent anywhere


def test_a_stranger_may_send_only_a_small_first_frame(manager: vine.Manager) -> None:
    m = manager
    with _raw(m) as s:
        s.sendall(struct.pack(">I", 1 << 20) + b"\x00" * 4096)  # announces a 1 MiB frame
        assert _read_frame(s) is None  # dropped at once
    assert m._server.rejected == 1


def test_silent_strangers_are_dropped_and_capped(manager: vine.Manager,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import vinework.manager.server as server
    monkeypatch.setattr(server, "HANDSHAKE_TIMEOUT", 0.5)
    monkeypatch.setattr(server, "MAX_STRANGERS", 3)
    m = manager
    quiet = [_raw(m) for _ in range(3)]
    poll_until(lambda: m._server._strangers == 3, 5, "three strangers in their handshake")
    with _raw(m) as extra:
        assert _read_frame(extra) is None  # refused at once: too many strangers
    for s in quiet:  # each is dropped after the handshake timeout
        s.settimeout(5)
        assert _read_frame(s) is None
        s.close()
    poll_until(lambda: m._server._strangers == 0, 5, "the strangers to be gone")
    assert m.stats.workers_joined == 0


# ---------------------------------------------------------------------- transfer tokens
def test_transfer_servers_serve_only_requests_with_a_token_for_that_file(
        manager: vine.Manager, workers: Any, tmp_path: Path) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    src = tmp_path / "data.txt"
    src.write_text("private\n")
    f = m.declare_file(str(src), cache=True)
    temp = m.declare_temp()
    t = vine.Task("cat data > out")
    t.add_input(f, "data")
    t.add_output(temp, "out")
    m.submit(t)
    (done,) = wait_all(m, 1)
    assert done.successful()
    w = next(iter(m._state.workers.values()))
    key = m._server.transfer_key
    for port, name in ((w.transfer_port, temp.cache_name), (m._server.transfer.port, f.cache_name)):
        for token in ("", make_token(b"guessed key", name), make_token(key, "other-name"),
                      make_token(key, name, now=0.0)):  # none, forged, another file's, expired
            with pytest.raises(TransferError, match="not authorized"):
                fetch_file("127.0.0.1", port, name, str(tmp_path / "stolen"), -1, token=token)
            assert not (tmp_path / "stolen").exists()
        size, _ = fetch_file("127.0.0.1", port, name, str(tmp_path / "fetched"), -1,
                             token=make_token(key, name))
        assert (tmp_path / "fetched").read_text() == "private\n" and size == 8
        (tmp_path / "fetched").unlink()


# ---------------------------------------------------------------------- a worker that stops
def _fake_worker(m: vine.Manager, cores: int = 64) -> socket.socket:
    """A client that passes the handshake (no password) and then never answers."""
    s = _raw(m)
    s.sendall(encode(Hello(version=PROTOCOL_VERSION, hostname="liar", cores=cores,
                           memory=64000, disk=64000, gpus=0, transfer_port=1, cached=[],
                           nonce="ab" * 16)))
    assert isinstance(_read_frame(s), Challenge)
    s.sendall(encode(Proof(proof="")) + encode(CacheReport(cached=[])))
    return s


def test_a_task_swallowed_by_a_silent_worker_is_taken_back(
        manager: vine.Manager, workers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import vinework.core.deadlines as deadlines
    monkeypatch.setattr(deadlines, "DEADLINE_GRACE", 0.5)
    m = manager
    liar = _fake_worker(m)
    try:
        wait_workers(m, 1)
        t = vine.Task("echo finished")
        t.set_time_max(1)
        m.submit(t)
        poll_until(lambda: any(r["state"] == "RUNNING" for r in m.status("tasks")), 10,
                   "the task to go to the silent worker")
        workers(m)
        (done,) = wait_all(m, 1, 30)
        assert done.successful() and done.output == "finished\n"
        assert done.worker != "w1"  # the real worker ran it, after the silent one's deadline
    finally:
        liar.close()


# ---------------------------------------------------------------------- bounded workers
def _expect_dropped_after(m: vine.Manager, data: bytes) -> None:
    before = m.stats.workers_lost
    with _fake_worker(m) as s:
        poll_until(lambda: m.stats.workers_connected == 1, 10, "the fake worker to join")
        s.sendall(data)
        poll_until(lambda: m.stats.workers_lost == before + 1, 10, "the worker to be dropped")


def test_a_worker_is_dropped_for_an_oversized_small_message(manager: vine.Manager) -> None:
    # a CacheUpdate frame announcing 1 MiB (CacheUpdates are a few bytes): dropped as soon
    # as its header and tag have arrived, before the rest is buffered
    body = msgpack.packb([CacheUpdate.TAG, "x" * 100])
    _expect_dropped_after(manager, struct.pack(">I", 1 << 20) + body)


def test_a_worker_is_dropped_for_a_bad_file_name(manager: vine.Manager) -> None:
    _expect_dropped_after(manager, encode(CacheUpdate(name="../../etc/passwd", size=1,
                                                      seconds=0.0, transfer_id=0)))


def test_a_flooding_worker_is_dropped(manager: vine.Manager,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import vinework.manager.flood as flood
    monkeypatch.setattr(flood, "FLOOD_BURST", 1000)
    monkeypatch.setattr(flood, "FLOOD_RATE", 100)
    _expect_dropped_after(manager, encode(Heartbeat(seq=1)) * 5000)


# ---------------------------------------------------------------------- TLS
@pytest.fixture
def tls_manager(tmp_path: Path) -> Any:
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run-info"), shutdown=True,
                     ssl=True)
    try:
        yield m
    finally:
        m.close()


def test_tls_control_connections_and_peer_transfers(tls_manager: vine.Manager, workers: Any,
                                                   tmp_path: Path) -> None:
    m = tls_manager
    cert = next((tmp_path / "run-info").rglob("manager.pem"))
    workers(m, extra=("--ssl", "--ssl-ca", str(cert), "--feature", "a"))
    workers(m, extra=("--ssl", "--feature", "b"))
    wait_workers(m, 2)
    temp = m.declare_temp()
    make = vine.Task("echo over tls > out")
    make.add_feature("a")
    make.add_output(temp, "out")
    use = vine.Task("cat in")
    use.add_feature("b")
    use.add_input(temp, "in")
    m.submit(make)
    m.submit(use)
    got = {t.id: t for t in wait_all(m, 2)}
    assert got[use.id].output == "over tls\n" and m.stats.transfers_peer == 1
    # the workers' transfer servers speak only TLS, and only with the session's pair
    w = next(x for x in m._state.workers.values() if temp.cache_name in
             m._state.replicas.files_on(x.worker_id))
    token = make_token(m._server.transfer_key, temp.cache_name)
    with pytest.raises(TransferError):
        fetch_file("127.0.0.1", w.transfer_port, temp.cache_name, str(tmp_path / "x"), -1,
                   timeout=5, token=token)
    fetch_file("127.0.0.1", w.transfer_port, temp.cache_name, str(tmp_path / "y"), -1,
               timeout=5, token=token, ssl_context=m._server.peer_client)
    assert (tmp_path / "y").read_text() == "over tls\n"


def test_a_worker_that_cannot_verify_the_manager_does_not_connect(
        tls_manager: vine.Manager, workers: Any, tmp_path: Path) -> None:
    m = tls_manager
    other = tmp_path / "other"
    _, wrong = throwaway_pair(str(other), "someone-else")
    p = workers(m, extra=("--ssl", "--ssl-ca", wrong, "--timeout", "2"))
    assert p.wait(timeout=20) != 0
    assert m.stats.workers_joined == 0
    q = workers(m, extra=("--timeout", "2"))  # no --ssl at all
    assert q.wait(timeout=20) != 0
    assert m.stats.workers_joined == 0


def test_a_factory_passes_the_password_and_tls_on(tmp_path: Path) -> None:
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "run-info"), shutdown=True,
                     ssl=True)
    try:
        m.set_password_file(_password_file(tmp_path, "pw", "factory-secret"))
        f = vine.Factory(batch_type="local", manager=m)
        f.password = str(tmp_path / "pw")
        f.ssl = True
        with f:
            t = vine.Task("echo via factory")
            m.submit(t)
            (done,) = wait_all(m, 1, 30)
            assert done.successful() and done.output == "via factory\n"
    finally:
        m.close()


def test_a_futures_executor_passes_the_password_and_tls_on(tmp_path: Path) -> None:
    pw = _password_file(tmp_path, "pw", "executor-secret")
    opts = {"password": pw, "ssl": True, "min-workers": 1, "max-workers": 1, "cores": 1}
    with vine.FuturesExecutor(port=0, opts=opts) as ex:
        assert ex.manager._server.password == b"executor-secret"
        assert ex.manager._server.tls is not None and ex.manager.using_ssl
        # the factory's worker proved the password over TLS, or nothing would run
        assert ex.submit(pow, 3, 4).result(timeout=60) == 81
        assert ex.manager.stats.workers_connected == 1


# ---------------------------------------------------------------------- private files
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to look as another user")
def test_another_user_can_read_none_of_the_files(workers: Any) -> None:
    top = tempfile.mkdtemp(prefix="vinework-private-")
    try:
        os.chmod(top, 0o755)  # anyone may look inside, as in a shared /tmp or $HOME
        m = vine.Manager(port=0, run_info_path=os.path.join(top, "run"), shutdown=True)
        try:
            src = os.path.join(top, "in.txt")  # (the user's own file: its mode is theirs)
            with open(src, "w") as f:
                f.write("secret\n")
            os.chmod(src, 0o600)
            p = workers(m, extra=("--workdir", os.path.join(top, "w0")))
            assert p.poll() is None
            wait_workers(m, 1)
            temp = m.declare_temp()
            t = vine.Task("cat in > out")
            t.add_input(m.declare_file(src, cache=True), "in")
            t.add_output(temp, "out")
            m.submit(t)
            wait_all(m, 1)
            assert m.fetch_file(temp) == b"secret\n"  # a copy at the manager's staging too
            found = subprocess.run(
                ["su", "nobody", "-s", "/bin/sh", "-c",
                 f"find {top} -type f -readable 2>/dev/null"],
                capture_output=True, text=True, timeout=30).stdout.split()
            assert found == []
        finally:
            m.close()
    finally:
        shutil.rmtree(top, ignore_errors=True)
