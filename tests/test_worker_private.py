"""Workers keep their files private and clean up after themselves (real processes).

A worker without ``--workdir`` makes its own workdir under ``$TMPDIR`` (here a
test directory): mode 0700, its cache and sandboxes 0700 too, and it removes it
on a manager's shutdown, SIGTERM, SIGINT, SIGHUP and a start-up error after the
directory was made; with ``--workdir`` the cache (0700) and its FOREVER files
stay. What a SIGKILL'd worker left is removed by the next worker started in the
same ``$TMPDIR``, but never the directory of a running process, of a dead pid
whose lock is still held, or of another user.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import vinework as vine

try:
    from conftest import poll_until, stop_process, wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import poll_until, stop_process, wait_all, wait_workers

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[object]:
    """``spawn(manager_port, tmpdir, *extra) -> Popen``: a worker without --workdir."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int, tmpdir: Path, *extra: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, TMPDIR=str(tmpdir))
        p = subprocess.Popen([sys.executable, "-m", "vinework", "worker", "localhost",
                              str(port), "--cores", "1", "--timeout", "20", *extra],
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        stop_process(p)


def _workdir_of(tmpdir: Path, pid: int) -> Path:
    found = poll_until(lambda: list(tmpdir.glob(f"vinework-worker-{pid}-*")), 10,
                       f"the workdir of worker {pid}")
    assert len(found) == 1, found
    return Path(found[0])


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def _run_one(m: vine.Manager) -> None:
    t = vine.Task("echo hi > out; cat out")
    t.add_output(m.declare_temp(), "out")
    m.submit(t)
    [back] = wait_all(m, 1, 30)
    assert back.successful(), (back.result, back.output)


@pytest.mark.parametrize("how", ["shutdown", "SIGTERM", "SIGINT", "SIGHUP"])
def test_an_own_workdir_is_private_and_removed_at_exit(tmp_path: Path, spawn: object,
                                                       how: str) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "ri"), shutdown=True)
    try:
        p = spawn(m.port, tmpdir)  # type: ignore[operator]
        wait_workers(m, 1, 20)
        _run_one(m)
        wd = _workdir_of(tmpdir, p.pid)
        assert _mode(wd) == 0o700
        assert _mode(wd / "cache") == 0o700 and _mode(wd / "sandbox") == 0o700
        assert any((wd / "cache").iterdir())  # the temp is there, out of reach of others
        shm = list(Path("/dev/shm").glob(f"vinework-{p.pid}-*"))
        assert all(_mode(d) == 0o700 for d in shm), shm  # PythonTask sandboxes
        if how == "shutdown":
            m.close()
        else:
            os.kill(p.pid, getattr(signal, how))
        p.wait(timeout=20)
        assert not wd.exists(), f"{how}: the workdir outlived its worker"
        assert not any(d.exists() for d in shm), shm
        assert not list(tmpdir.iterdir())
    finally:
        m.close()


def test_a_start_up_error_removes_the_workdir(tmp_path: Path, spawn: object) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    taken.bind(("0.0.0.0", 0))
    taken.listen(1)
    try:
        p = spawn(1, tmpdir, "--transfer-port", str(taken.getsockname()[1]))  # type: ignore[operator]
        assert p.wait(timeout=20) == 2
        assert p.stderr is not None and b"transfer-port" in p.stderr.read()
        assert not list(tmpdir.iterdir()), list(tmpdir.iterdir())
    finally:
        taken.close()


def test_a_given_workdir_keeps_its_cache(manager: vine.Manager, workers: object,
                                         tmp_path: Path) -> None:
    m = manager
    p = workers(m)  # type: ignore[operator]
    wait_workers(m, 1)
    f = tmp_path / "in"
    f.write_text("forever\n")
    t = vine.Task("cat in")
    t.add_input(m.declare_file(str(f), cache=vine.VINE_CACHE_LEVEL_FOREVER), "in")
    m.submit(t)
    [back] = wait_all(m, 1, 30)
    assert back.output == "forever\n"
    wd = tmp_path / "worker-0"
    assert _mode(wd / "cache") == 0o700
    os.kill(p.pid, signal.SIGTERM)
    p.wait(timeout=20)
    assert wd.is_dir() and (wd / "cache").is_dir()
    kept = [e for e in (wd / "cache").iterdir() if not e.name.startswith(".")]
    assert kept, "the FOREVER file of a given workdir was removed"


def test_a_new_worker_removes_what_dead_workers_left(tmp_path: Path, spawn: object) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    m = vine.Manager(port=0, run_info_path=str(tmp_path / "ri"), shutdown=True)
    holder = None
    try:
        p = spawn(m.port, tmpdir)  # type: ignore[operator]
        wait_workers(m, 1, 20)
        _run_one(m)
        dead = _workdir_of(tmpdir, p.pid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        assert dead.exists()
        # what must stay: a running pid's, a dead pid's whose lock is held, another user's
        live = tmpdir / f"vinework-worker-{os.getpid()}-aaaa"
        live.mkdir()
        held = tmpdir / f"vinework-worker-{p.pid}-bbbb"
        held.mkdir()
        holder = os.open(held / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(holder, fcntl.LOCK_EX)
        # a process that holds the lock, as a live worker in another pid namespace would
        other = tmpdir / f"vinework-worker-{p.pid}-cccc"
        other.mkdir()
        if os.geteuid() == 0:
            os.chown(other, 65534, 65534)
        unrelated = tmpdir / "vinework-worker-notapid"
        unrelated.mkdir()
        q = spawn(m.port, tmpdir)  # type: ignore[operator]
        new = _workdir_of(tmpdir, q.pid)
        poll_until(lambda: not dead.exists(), 10, "the dead worker's workdir to go")
        assert live.exists() and held.exists() and unrelated.exists()
        if os.geteuid() == 0:
            assert other.exists()
        assert new.exists()
        wait_workers(m, 1, 20)
        _run_one(m)
    finally:
        if holder is not None:
            os.close(holder)
        m.close()
