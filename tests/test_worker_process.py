"""The ``vinework worker`` process: arguments, signals, timeouts, drain, parent death.

A fake manager here is a plain TCP server on an OS-chosen port that speaks the
real codec (``vinework.protocol.encode`` / ``FrameDecoder``). Every process a
test starts is ended by its pid at teardown (its process group too). Waits are
on events (a line on stderr, a message, a process exit, a pidfd), each with a
bound, never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import poll_until
from vinework.constants import TaskResult
from vinework.protocol import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    Kill,
    Leaving,
    Message,
    RunTask,
    Shutdown,
    TaskDone,
    Welcome,
    encode,
)
from vinework.protocol.messages import CacheReport, Challenge, Proof

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------- helpers
class WorkerProc:
    """A worker process whose stderr is read line by line by a thread."""

    def __init__(self, args: list[str], **kw: Any) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "vinework", "worker", *args],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, start_new_session=True, **kw)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for raw in self.p.stderr:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, text: str, timeout: float = 10.0) -> str:
        """The first stderr line containing ``text``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not self._reader.is_alive()):
                    pytest.fail(f"no stderr line with {text!r}; got {self.lines}")
                self._cond.wait(min(left, 0.2))

    def wait(self, timeout: float) -> int:
        code = self.p.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.p.pid, signal.SIGKILL)
            self.p.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.p.pid, signal.SIGKILL)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    procs: list[WorkerProc] = []

    def start_worker(*args: str, workdir: bool = True) -> WorkerProc:
        extra = ["--workdir", str(tmp_path / f"w{len(procs)}")] if workdir else []
        w = WorkerProc([*args, *extra])
        procs.append(w)
        return w

    try:
        yield start_worker
    finally:
        for w in procs:
            w.stop()


def free_port() -> int:
    """A port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TRANSFER_KEY = b"k" * 32  # the fake manager's transfer-token key (protocol/auth.py)


class FakeManager:
    """A TCP server speaking the vinework codec, one worker connection at a time."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = int(self.sock.getsockname()[1])
        self.conn: socket.socket | None = None
        self.dec = FrameDecoder()

    def accept(self, timeout: float = 10.0) -> None:
        self.sock.settimeout(timeout)
        self.conn, _ = self.sock.accept()
        self.dec = FrameDecoder()

    def recv(self, timeout: float = 10.0) -> Message | None:
        """The next message, or None when the worker closed the connection."""
        assert self.conn is not None
        deadline = time.monotonic() + timeout
        while (msg := self.dec.next_message()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail("no message from the worker in time")
            self.conn.settimeout(left)
            data = self.conn.recv(65536)
            if not data:
                return None
            self.dec.receive_data(data)
        return msg

    def recv_type(self, kind: type[Message], timeout: float = 10.0) -> Any:
        """The next message of type ``kind`` (heartbeats and others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is None:
                pytest.fail(f"the worker closed the connection before a {kind.__name__}")
            if isinstance(msg, kind):
                return msg

    def send(self, msg: Message) -> None:
        assert self.conn is not None
        self.conn.sendall(encode(msg))

    def handshake(self, interval: float = 0.2, timeout: float = 30.0) -> Hello:
        self.accept()
        hello = self.recv()
        assert isinstance(hello, Hello)
        self.challenge()
        self.send(Welcome(version=PROTOCOL_VERSION, worker_id="w-test", keepalive_interval=interval,
                          transfer_port=0, keepalive_timeout=timeout,
                          transfer_key=TRANSFER_KEY.hex()))
        return hello

    def challenge(self) -> list[tuple[str, int]]:
        """Send a Challenge (no password); return what the worker's CacheReport says."""
        self.send(Challenge(nonce="cd" * 16, proof=""))
        assert isinstance(self.recv(), Proof)
        report = self.recv()
        assert isinstance(report, CacheReport)
        return sorted(map(tuple, report.cached))  # type: ignore[arg-type]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.sock.close()


@pytest.fixture
def fake() -> Iterator[FakeManager]:
    m = FakeManager()
    try:
        yield m
    finally:
        m.close()


def wait_pid_exit(pid: int, timeout: float) -> bool:
    """Wait (on a pidfd) until a process that is not our child exits."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("args, what", [
    (["localhost", "0"], "outside 1-65535"),
    (["localhost", "65536"], "outside 1-65535"),
    (["localhost", "http"], "not a number"),
    (["localhost", "9000", "--cores", "-1"], "negative"),
    (["localhost", "9000", "--memory", "-5"], "negative"),
    (["localhost", "9000", "--timeout", "-1"], "positive"),
])
def test_bad_arguments_get_one_line_and_exit_2(start: Any, args: list[str], what: str) -> None:
    w = start(*args, workdir=False)
    assert w.wait(10) == 2
    assert len(w.lines) == 1 and what in w.lines[0], w.lines


def test_unusable_workdir_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    w = WorkerProc(["localhost", "9000", "--workdir", str(blocker / "sub")])
    try:
        assert w.wait(10) == 2
        assert len(w.lines) == 1 and "--workdir" in w.lines[0], w.lines
    finally:
        w.stop()


def test_gpus_zero_is_normal(start: Any, fake: FakeManager) -> None:
    start("127.0.0.1", str(fake.port), "--gpus", "0", "--cores", "0")
    hello = fake.handshake()
    assert hello.gpus == 0 and hello.cores == (os.cpu_count() or 1)


# ---------------------------------------------------------------------- no manager
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_a_worker_without_a_manager_within_2_s(start: Any, sig: int) -> None:
    w = start("127.0.0.1", str(free_port()), "--timeout", "300")
    w.wait_line("retrying in")
    os.kill(w.p.pid, sig)
    assert w.wait(2) == 0


def test_sigterm_during_a_silent_handshake_stops_at_once(start: Any, fake: FakeManager) -> None:
    w = start("127.0.0.1", str(fake.port), "--timeout", "300")
    fake.accept()
    assert isinstance(fake.recv(), Hello)  # and no Welcome: the handshake hangs
    os.kill(w.p.pid, signal.SIGTERM)
    assert w.wait(2) == 0


def test_gives_up_after_the_timeout(start: Any) -> None:
    w = start("127.0.0.1", str(free_port()), "--timeout", "1")
    w.wait_line("connecting to 127.0.0.1")
    assert w.wait(10) == 1
    assert "giving up" in w.lines[-1]


def test_attempt_timeout_bounds_a_silent_handshake(start: Any, fake: FakeManager) -> None:
    w = start("127.0.0.1", str(fake.port), "--timeout", "300", "--attempt-timeout", "0.5")
    fake.accept()
    assert isinstance(fake.recv(), Hello)
    w.wait_line("no Welcome from 127.0.0.1", timeout=10)
    assert fake.recv(timeout=10) is None  # the worker hung up
    fake.accept()  # and came back
    assert isinstance(fake.recv(), Hello)


def test_peer_that_does_not_speak_vinework_exits_2(start: Any, fake: FakeManager) -> None:
    w = start("127.0.0.1", str(fake.port), "--timeout", "300")
    fake.accept()
    assert fake.conn is not None
    fake.conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    assert w.wait(10) == 2
    assert "does not speak the vinework protocol" in w.lines[-1]
    assert not any("Traceback" in line for line in w.lines)


# ---------------------------------------------------------------------- connected
def test_logs_connection_and_drops_a_silent_manager(start: Any, fake: FakeManager) -> None:
    w = start("127.0.0.1", str(fake.port), "--timeout", "300")
    fake.handshake(interval=0.2, timeout=1.0)
    w.wait_line("connected to 127.0.0.1")
    assert "as w-test" in w.wait_line("connected to")
    # the fake says nothing more: after keepalive_timeout (1 s, not 30) the worker hangs up
    while fake.recv(timeout=10) is not None:
        pass
    w.wait_line("manager silent for 1 s")
    w.wait_line("disconnected from 127.0.0.1")
    w.wait_line("retrying in")


def test_debug_logs_tasks(start: Any, fake: FakeManager) -> None:
    w = start("127.0.0.1", str(fake.port), "--debug")
    fake.handshake()
    fake.send(run_task(1, "exit 3"))
    done = fake.recv_type(TaskDone)
    assert (done.result, done.exit_code) == (TaskResult.SUCCESS, 3)
    w.wait_line("task 1 started")
    w.wait_line("task 1 finished")


def run_task(task_id: int, command: str) -> RunTask:
    return RunTask(task_id=task_id, attempt=1, command=command, inputs=[], outputs=[], env=[],
                   cores=1, memory=10, disk=10, gpus=0, time_max=0)


def test_first_sigterm_drains_until_shutdown(start: Any, fake: FakeManager,
                                             tmp_path: Path) -> None:
    w = start("127.0.0.1", str(fake.port))
    fake.handshake()
    fake.send(run_task(1, "echo $$ > pid; exec sleep 30"))
    pidfile = _started(tmp_path)  # (a SIGTERM before the task arrives would refuse it)
    os.kill(w.p.pid, signal.SIGTERM)
    leaving = fake.recv_type(Leaving)
    assert "SIGTERM" in leaving.reason
    fake.send(run_task(2, "true"))  # placed before the manager saw Leaving
    refused = fake.recv_type(TaskDone)
    assert (refused.task_id, refused.result) == (2, TaskResult.FORSAKEN)
    # the batch system stops the task's processes: not a task failure
    poll_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the task's pid")
    os.killpg(int(pidfile.read_text()), signal.SIGTERM)
    done = fake.recv_type(TaskDone)
    assert (done.task_id, done.result) == (1, TaskResult.FORSAKEN)
    assert w.p.poll() is None  # still draining, still connected
    fake.send(Shutdown(reason="drained"))
    assert w.wait(5) == 0


def test_drain_ends_after_the_drain_timeout(start: Any, fake: FakeManager) -> None:
    w = start("127.0.0.1", str(fake.port), "--drain-timeout", "0.5")
    fake.handshake()
    os.kill(w.p.pid, signal.SIGTERM)
    fake.recv_type(Leaving)
    assert w.wait(5) == 0
    assert "no Shutdown within 0.5 s" in w.lines[-1]


def test_second_signal_stops_at_once_and_kills_tasks(start: Any, fake: FakeManager,
                                                     tmp_path: Path) -> None:
    w = start("127.0.0.1", str(fake.port))
    fake.handshake()
    fake.send(run_task(1, "echo $$ > pid; exec sleep 30"))
    pidfile = tmp_path / "w0" / "sandbox" / "s1" / "pid"
    poll_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the task's pid")
    task_pid = int(pidfile.read_text())
    os.kill(w.p.pid, signal.SIGTERM)
    fake.recv_type(Leaving)
    os.kill(w.p.pid, signal.SIGINT)
    assert w.wait(3) == 0
    assert wait_pid_exit(task_pid, 5), "the task outlived its worker"
    # a --workdir given by the user is kept, with its cache
    assert (tmp_path / "w0" / "cache").is_dir()


def _started(tmp_path: Path) -> Path:
    """The pid file a task of the first worker wrote in its sandbox, once it is there."""
    def find() -> Path | None:
        for p in (tmp_path / "w0").rglob("pid"):
            if p.read_text().strip():
                return p
        return None
    return poll_until(find, 10, "the task to start")  # type: ignore[no-any-return]


def test_kill_during_drain_is_not_reported(start: Any, fake: FakeManager,
                                           tmp_path: Path) -> None:
    w = start("127.0.0.1", str(fake.port))
    fake.handshake()
    fake.send(run_task(1, "echo $$ > pid; exec sleep 30"))
    _started(tmp_path)
    os.kill(w.p.pid, signal.SIGTERM)
    fake.recv_type(Leaving)
    fake.send(Kill(task_id=1))
    fake.send(run_task(2, "true"))  # a marker: its refusal comes after any report of task 1
    done = fake.recv_type(TaskDone)
    assert done.task_id == 2
    fake.send(Shutdown(reason="drained"))
    assert w.wait(5) == 0


# ---------------------------------------------------------------------- workers of a Factory
PARENT = textwrap.dedent("""
    import sys, time
    import vinework as vine
    f = vine.Factory(manager_host_port=sys.argv[1])
    f.timeout = 300
    f.start()
    print(f.procs[0].pid, flush=True)
    time.sleep(300)
""")


def test_factory_worker_exits_when_its_parent_dies(fake: FakeManager) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, f"127.0.0.1:{fake.port}"],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    worker_pid = 0
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        fake.handshake()  # connected to its manager: it would wait for work forever
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_pid_exit(worker_pid, 5), "the worker outlived the process that made it"
    finally:
        for pid in (parent.pid, worker_pid):
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.wait(timeout=10)


def test_factory_stop_stops_its_workers_at_once_without_a_drain(fake: FakeManager) -> None:
    import vinework as vine

    f = vine.Factory(manager_host_port=f"127.0.0.1:{fake.port}")
    f.timeout = 300
    f.start()
    try:
        fake.handshake()
        worker = f.procs[0]
        f.stop()
        assert worker.returncode == 0  # it stopped on SIGINT, it was not SIGKILLed
        msgs = []
        while (m := fake.recv(timeout=5)) is not None:
            msgs.append(m)
        assert not any(isinstance(m, Leaving) for m in msgs)
    finally:
        f.stop()


def test_dead_parent_pid_at_start_stops_at_once(start: Any) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    w = start("127.0.0.1", str(free_port()), "--parent-pid", str(child.pid))
    assert w.wait(5) == 0
    assert f"parent process {child.pid}" in w.lines[-1]


def test_sigint_removes_a_workdir_the_worker_made(tmp_path: Path, fake: FakeManager) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    w = WorkerProc(["127.0.0.1", str(fake.port)], env={**os.environ, "TMPDIR": str(scratch)})
    try:
        fake.handshake()
        assert [p.name for p in scratch.iterdir() if p.name.startswith("vinework-worker-")]
        os.kill(w.p.pid, signal.SIGINT)
        assert w.wait(3) == 0
        assert not [p for p in scratch.iterdir() if p.name.startswith("vinework-worker-")]
    finally:
        w.stop()


# ---------------------------------------------------------------------- managers come and go
class FileServer:
    """A vinework transfer server for files of a test directory (what a manager serves)."""

    def __init__(self, root: Path) -> None:
        from vinework.protocol.transfer import TransferServer

        self.root = root
        root.mkdir(exist_ok=True)
        self.server = TransferServer(lambda name: str(root / name)
                                     if (root / name).is_file() else None)

    def add(self, name: str, data: bytes) -> int:
        (self.root / name).write_bytes(data)
        return len(data)

    def close(self) -> None:
        self.server.close()


def fetch_into(fake: FakeManager, files: FileServer, tid: int, name: str, level: int,
               data: bytes) -> None:
    from vinework.protocol import CacheUpdate, Fetch

    size = files.add(name, data)
    fake.send(Fetch(transfer_id=tid, name=name, host="127.0.0.1", port=files.server.port,
                    size=size, cache_level=level))
    upd = fake.recv_type(CacheUpdate)
    assert (upd.name, upd.transfer_id, upd.size) == (name, tid, size)


def cache_files(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / "cache").iterdir() if not p.name.startswith("."))


def test_reconnects_after_eof_with_worker_and_forever_files_only(
        start: Any, fake: FakeManager, tmp_path: Path) -> None:
    files = FileServer(tmp_path / "served")
    workdir = tmp_path / "w0"
    try:
        w = start("127.0.0.1", str(fake.port), "--min-backoff", "0.1")
        fake.handshake()
        fetch_into(fake, files, 1, "t-task", 0, b"t")
        fetch_into(fake, files, 2, "t-workflow", 1, b"wf")
        fetch_into(fake, files, 3, "t-worker", 2, b"wrk")
        fetch_into(fake, files, 4, "t-forever", 3, b"ever")
        out = RunTask(task_id=1, attempt=1, command="echo made > o", inputs=[],
                      outputs=[("t-out", "o")], env=[], cores=1, memory=10, disk=10, gpus=0,
                      time_max=0)
        fake.send(out)
        assert [tuple(o) for o in fake.recv_type(TaskDone).outputs] == [("t-out", 5)]
        fake.send(run_task(2, "echo $$ > pid; exec sleep 30"))
        pidfile = workdir / "sandbox" / "s1" / "pid"
        poll_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the pid")
        task_pid = int(pidfile.read_text())
        assert fake.conn is not None
        fake.conn.close()  # the manager goes away without a Shutdown
        w.wait_line("disconnected from 127.0.0.1")
        assert wait_pid_exit(task_pid, 5), "the task outlived its manager"
        fake.accept()
        hello = fake.recv()
        assert isinstance(hello, Hello)
        assert fake.challenge() == [("t-forever", 4), ("t-worker", 3)]
        assert cache_files(workdir) == ["t-forever", "t-worker"]
        fake.send(Welcome(version=PROTOCOL_VERSION, worker_id="w-2", keepalive_interval=0.2,
                          transfer_port=0, keepalive_timeout=30.0))
        fake.send(Shutdown(reason="done"))
        assert w.wait(5) == 0
        # a given workdir keeps its FOREVER files, and a worker restarted on it finds them
        assert cache_files(workdir) == ["t-forever"]
        w2 = WorkerProc(["127.0.0.1", str(fake.port), "--workdir", str(workdir)])
        try:
            fake.accept()
            hello = fake.recv()
            assert isinstance(hello, Hello) and fake.challenge() == [("t-forever", 4)]
        finally:
            w2.stop()
    finally:
        files.close()


def test_own_workspace_lives_across_managers(tmp_path: Path, fake: FakeManager) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    files = FileServer(tmp_path / "served")
    w = WorkerProc(["127.0.0.1", str(fake.port), "-i", "0.1"],
                   env={**os.environ, "TMPDIR": str(scratch)})
    try:
        fake.handshake()
        (workspace,) = [p for p in scratch.iterdir() if p.name.startswith("vinework-worker-")]
        fetch_into(fake, files, 1, "kept", 2, b"abc")
        assert fake.conn is not None
        fake.conn.close()
        fake.accept()
        hello = fake.recv()
        assert isinstance(hello, Hello) and fake.challenge() == [("kept", 3)]
        assert [p for p in scratch.iterdir() if p.name.startswith("vinework-worker-")] == \
            [workspace]
        os.kill(w.p.pid, signal.SIGINT)
        assert w.wait(3) == 0
        assert not workspace.exists()
    finally:
        w.stop()
        files.close()


def test_idle_timeout_leaves_the_manager(start: Any, fake: FakeManager) -> None:
    w = start("127.0.0.1", str(fake.port), "--idle-timeout", "0.5", "--feature", "fast",
              "--feature", "gpu-x")
    hello = fake.handshake()
    assert hello.features == ["fast", "gpu-x"]
    leaving = fake.recv_type(Leaving)
    assert "idle" in leaving.reason
    fake.send(Shutdown(reason="released"))
    assert w.wait(5) == 0


def test_wall_time_ends_a_worker_without_a_manager(start: Any) -> None:
    w = start("127.0.0.1", str(free_port()), "--wall-time", "0.5", "--timeout", "300")
    assert w.wait(10) == 0
    assert "wall time" in w.lines[-1]
