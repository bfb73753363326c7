"""The worker's command line: ``vinework worker`` and ``vine_worker`` with TaskVine's options.

Parsing is tested in-process (``worker_parser`` + ``worker_options``: no worker
starts); refusals and bad values through ``run_worker_command``, which
returns 2 before anything starts. A few tests start real worker processes
(``vine_worker`` through ``vinework.cli.vine_worker_main``) against a fake
manager on an OS-chosen port, and end them by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_worker_process import FakeManager, run_task, wait_pid_exit
from vinework.cli import main, run_worker_command, worker_parser
from vinework.protocol import Shutdown, TaskDone
from vinework.worker.options import (
    OptionError,
    WorkerOptions,
    detect_resources,
    normalize_argv,
    parse_time,
    worker_options,
)

pytestmark = pytest.mark.timeout(60)


def opts(*argv: str) -> WorkerOptions:
    args = worker_parser("vine_worker").parse_intermixed_args(normalize_argv(list(argv)))
    return worker_options(args)


# ---------------------------------------------------------------------- the manager address
def test_host_and_port_forms() -> None:
    assert (opts("localhost", "9123").host, opts("localhost", "9123").port) == ("localhost", 9123)
    o = opts("mgr.example:9200")
    assert (o.host, o.port, o.ignored_managers) == ("mgr.example", 9200, ())
    o = opts("[::1]:9300")
    assert (o.host, o.port) == ("::1", 9300)
    assert (opts("::1", "9400").host, opts("::1", "9400").port) == ("::1", 9400)


def test_host_and_port_forms_several_managers() -> None:
    o = opts("h1:9001;h2:9002")
    assert (o.host, o.port, o.ignored_managers) == ("h1", 9001, ("h2:9002",))
    o = opts("h1;h2:9002", "9999")  # PORT is the port of the entries without one
    assert (o.host, o.port, o.ignored_managers) == ("h1", 9999, ("h2:9002",))


@pytest.mark.parametrize("argv, message", [
    ([], "no manager given"),
    (["localhost"], "no port in the manager address"),
    (["h1:9001;h2"], "no port in the manager address 'h2'"),
    (["localhost", "0"], "outside 1-65535"),
    (["localhost", "http"], "not a number"),
    (["a", "1", "b"], "too many arguments"),
])
def test_bad_manager_addresses(argv: list[str], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        opts(*argv)


def test_options_and_address_in_any_order() -> None:
    o = opts("--cores", "2", "localhost", "--memory", "100", "9123", "--single-shot")
    assert (o.host, o.port, o.cores, o.memory, o.single_shot) == ("localhost", 9123, 2, 100,
                                                                   True)


# ---------------------------------------------------------------------- TaskVine's options
def test_timeouts_and_suffixes() -> None:
    assert [parse_time(t) for t in ("90", "1.5", "10s", "10m", "2h", "1d", "10M")] == \
        [90, 1.5, 10, 600, 7200, 86400, 600]
    o = opts("--timeout=10m", "h:1")
    assert (o.idle_timeout, o.connect_timeout, o.attempt_timeout) == (600, 600, 30)
    o = opts("-t", "10", "--idle-timeout", "1h", "h:1")
    assert (o.idle_timeout, o.connect_timeout, o.attempt_timeout) == (3600, 10, 10)
    o = opts("--connect-timeout=5", "h:1")
    assert (o.idle_timeout, o.connect_timeout) == (900, 5)
    o = opts("h:1", "--attempt-timeout", "2", "--drain-timeout", "1m", "--wall-time", "2h")
    assert (o.attempt_timeout, o.drain_timeout, o.wall_time) == (2, 60, 7200)
    o = opts("h:1", "-i", "2", "-b", "30")
    assert (o.min_backoff, o.max_backoff) == (2, 30)
    with pytest.raises(OptionError, match="below --min-backoff"):
        opts("h:1", "--min-backoff", "5", "--max-backoff", "2")


def test_resources_options() -> None:
    o = opts("h:1", "--cores=all", "--memory=all", "--disk=all", "--gpus=all")
    assert (o.cores, o.memory, o.disk, o.gpus) == (0, 0, 0, None)
    o = opts("h:1", "--cores=4", "--memory=100", "--disk=200", "--gpus=0",
             "--disk-percent=75")
    assert (o.cores, o.memory, o.disk, o.gpus, o.disk_percent) == (4, 100, 200, 0, 75)
    assert opts("h:1", "--gpus", "-1").gpus is None
    assert opts("h:1", "--disk-percent", "all").disk_percent == 100
    assert opts("h:1").disk_percent == 50


def test_detect_resources_reads_the_environment_when_options_are_unset(tmp_path: Path) -> None:
    env = {"CORES": "3", "MEMORY": "123", "DISK": "45", "GPUS": "2"}
    r = detect_resources(opts("h:1"), str(tmp_path), env=env)
    assert (r.cores, r.memory, r.disk, r.gpus) == (3, 123, 45, 2)
    r = detect_resources(opts("h:1", "--cores", "5", "--gpus", "0"), str(tmp_path), env=env)
    assert (r.cores, r.gpus) == (5, 0)
    r = detect_resources(opts("h:1", "--cores", "all"), str(tmp_path), env=env)
    assert r.cores == (os.cpu_count() or 1)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize // (1 << 20)
    half = detect_resources(opts("h:1"), str(tmp_path), env={}).disk
    assert abs(half - free // 2) <= 2
    full = detect_resources(opts("h:1", "--disk-percent", "100"), str(tmp_path), env={}).disk
    assert abs(full - free) <= 2
    huge = detect_resources(opts("h:1", "--disk", str(10**12)), str(tmp_path), env={}).disk
    assert abs(huge - free) <= 2  # never more than the free space
    assert detect_resources(opts("h:1"), str(tmp_path), env={}).gpus >= 0  # nvidia-smi or 0


def test_every_accepted_option() -> None:
    o = opts("h:1", "-d", "all", "-o", "w.log", "--debug-rotate-max=1M", "--debug-release-reset",
             "--feature=a", "--feature", "b", "--feature", "a", "--transfer-port=9000:9010",
             "--contact-hostport=node7:9500", "--max-transfer-procs=4", "--parent-death",
             "-w", "64K", "-A", "x86_64", "-O", "Linux", "--from-factory", "f1",
             "--task-wrapper", "time", "-s", "/tmp/x", "--keep-workspace",
             "--disable-symlinks", "--hoist", "numpy", "--parent-pid", "1")
    assert o.debug and (o.debug_file, o.debug_rotate_max) == ("w.log", 1 << 20)
    assert o.features == ("a", "b") and o.transfer_ports == (9000, 9010)
    assert (o.contact_port, o.max_transfer_procs, o.task_wrapper) == (9500, 4, "time")
    assert (o.workdir, o.keep_workspace, o.hoist, o.parent_pid) == ("/tmp/x", True,
                                                                     ("numpy",), 1)
    assert opts("h:1", "--workspace", "/tmp/y").workdir == "/tmp/y"
    assert opts("h:1", "--workdir", "/tmp/z").workdir == "/tmp/z"
    assert opts("h:1", "--parent-death").parent_pid == os.getppid()  # the worker's parent
    assert opts("h:1", "--transfer-port", "9001").transfer_ports == (9001, 9001)
    assert opts("h:1", "--contact-hostport", ":9600").contact_port == 9600


@pytest.mark.parametrize("argv, debug", [
    (["h:1"], False),
    (["h:1", "--debug"], True),
    (["--debug", "h:1"], True),  # a manager address is not taken for a subsystem
    (["-d", "all", "h:1"], True),
    (["--debug=all", "h:1"], True),
    (["-dall", "h:1"], True),
    (["--debug", "vine,tcp", "h", "1"], True),
    (["h:1", "-d"], True),
    (["h:1", "--debug=none"], False),
])
def test_debug_takes_an_optional_subsystem(argv: list[str], debug: bool) -> None:
    o = opts(*argv)
    assert o.debug is debug and o.host == "h"


@pytest.mark.parametrize("argv, message", [
    (["-M", "myproject"], "-M/--manager-name: vinework runs no catalog server; give HOST PORT"),
    (["--manager-name=x", "h:1"], "vinework runs no catalog server"),
    (["--master-name=x"], "vinework runs no catalog server"),
    (["-C", "catalog.cse.nd.edu:9097", "h:1"], "-C/--catalog: vinework runs no catalog"),
    (["--connection-mode=by_ip", "h:1"], "--connection-mode"),
    (["--ssl-ca", "ca.pem", "h:1"], "--ssl-ca and --tls-sni go with --ssl"),
    (["--tls-sni=x.org", "h:1"], "--ssl-ca and --tls-sni go with --ssl"),
    (["-P", "/nonexistent/pw.txt", "h:1"], "-P/--password: cannot read the password file"),
    (["--bandwidth=10M", "h:1"], "--bandwidth: throttling transfers is not supported"),
    (["--disk-allocation", "h:1"], "--disk-allocation"),
])
def test_refused_options_exit_2_with_one_line(argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert run_worker_command(argv, "vine_worker") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vine_worker: error: ") and message in err


@pytest.mark.parametrize("argv, message", [
    (["h:1", "--timeout", "-1"], "positive"),
    (["h:1", "--timeout", "soon"], "is not a time"),
    (["h:1", "--cores", "-1"], "negative"),
    (["h:1", "--cores", "many"], "'all'"),
    (["h:1", "--transfer-port", "9010:9000"], "low port is above"),
    (["h:1", "--contact-hostport", "node"], "HOST:PORT"),
    (["h:1", "--no-such-option"], "unrecognized arguments"),
])
def test_bad_values_exit_2_with_one_line(argv: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        run_worker_command(argv, "vine_worker")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    names = ["--cores", "--memory", "--disk", "--gpus", "--disk-percent", "--single-shot",
             "--timeout", "--idle-timeout", "--connect-timeout", "--workdir", "--workspace",
             "--keep-workspace", "--debug", "--debug-file", "--debug-rotate-max",
             "--debug-release-reset", "--feature", "--transfer-port", "--contact-hostport",
             "--max-transfer-procs", "--parent-death", "--wall-time", "--tcp-window-size",
             "--min-backoff", "--max-backoff", "--arch", "--os", "--from-factory", "--version",
             "--task-wrapper", "--bandwidth", "--manager-name", "--catalog", "--ssl",
             "--tls-sni", "--password", "--connection-mode", "--drain-timeout", "--parent-pid",
             "--hoist", "--attempt-timeout", "-M", "-C", "-P", "-s", "-d", "-o", "-t", "-w",
             "-i", "-b", "-A", "-O", "-v"]
    for argv in (["worker", "--help"],):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        text = capsys.readouterr().out
        missing = [n for n in names if n not in text]
        assert not missing, missing
    with pytest.raises(SystemExit):
        run_worker_command(["--help"], "vine_worker")
    assert capsys.readouterr().out.startswith("usage: vine_worker [options] HOST PORT")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    for argv in (["-v"], ["--version"]):
        with pytest.raises(SystemExit) as e:
            run_worker_command(argv, "vine_worker")
        assert e.value.code == 0
        assert capsys.readouterr().out.strip() == f"vine_worker {version('vinework')}"


# ---------------------------------------------------------------------- real processes
VINE_WORKER = [sys.executable, "-c",
               "import sys; from vinework.cli import vine_worker_main; "
               "sys.exit(vine_worker_main())"]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture
def fm() -> Iterator[FakeManager]:
    m = FakeManager()
    try:
        yield m
    finally:
        m.close()


def vine_worker(procs: list[subprocess.Popen[bytes]], *argv: str, **kw: Any
                ) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([*VINE_WORKER, *argv], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True, **kw)
    procs.append(p)
    return p


def test_vine_worker_as_taskvine_runs_it(procs: list[subprocess.Popen[bytes]],
                                         fm: FakeManager, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    p = vine_worker(procs, f"127.0.0.1:{fm.port}", "--debug=all", f"--debug-file={log}",
                    "--timeout=10", "--cores=1", "--memory=100", "--disk=100",
                    "-s", str(tmp_path / "w"))
    fm.handshake()
    fm.send(run_task(1, "echo hi"))
    assert fm.recv_type(TaskDone).output == "hi\n"
    fm.send(Shutdown(reason="done"))
    assert p.wait(timeout=10) == 0
    text = log.read_text()
    assert "connected to 127.0.0.1" in text and "task 1 started" in text
    assert "task 1 finished" in text


def test_transfer_port_range_and_contact_port(procs: list[subprocess.Popen[bytes]],
                                              fm: FakeManager, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        lo = s.getsockname()[1]
    vine_worker(procs, "127.0.0.1", str(fm.port), f"--transfer-port={lo}:{lo + 20}",
                "-s", str(tmp_path / "w1"))
    hello = fm.handshake()
    assert lo <= hello.transfer_port <= lo + 20
    with socket.create_connection(("127.0.0.1", hello.transfer_port)):
        pass  # it listens there
    assert fm.conn is not None
    fm.conn.close()
    vine_worker(procs, "127.0.0.1", str(fm.port), "--contact-hostport=:45678",
                "-s", str(tmp_path / "w2"))
    assert fm.handshake().transfer_port == 45678


def test_a_taken_transfer_port_is_one_line_and_exit_2(procs: list[subprocess.Popen[bytes]],
                                                      tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as s:
        s.bind(("::" if socket.has_ipv6 else "0.0.0.0", 0))
        s.listen(1)
        port = s.getsockname()[1]
        p = vine_worker(procs, "127.0.0.1", "9", f"--transfer-port={port}",
                        "-s", str(tmp_path / "w"))
        _, err = p.communicate(timeout=20)
    assert p.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "--transfer-port" in lines[0], lines


PARENT = textwrap.dedent("""
    import subprocess, sys, time
    p = subprocess.Popen([sys.executable, "-c",
                          "import sys; from vinework.cli import vine_worker_main; "
                          "sys.exit(vine_worker_main())", sys.argv[1], "--parent-death",
                          "-s", sys.argv[2]], start_new_session=True)
    print(p.pid, flush=True)
    time.sleep(300)
""")


def test_parent_death(fm: FakeManager, tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, f"127.0.0.1:{fm.port}",
                               str(tmp_path / "w")], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    worker_pid = 0
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        fm.handshake()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_pid_exit(worker_pid, 5), "the worker outlived its parent"
    finally:
        for pid in (parent.pid, worker_pid):
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.wait(timeout=10)
