"""Tests for the network-namespace cluster harness (vinework.testing.netns)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from vinework.testing import netns
from vinework.testing.netns import NetnsCluster, NetnsError, netns_available, parse_rate

AVAILABLE, REASON = netns_available()
if not AVAILABLE and "CI" not in os.environ:
    pytest.skip(f"network namespaces unavailable: {REASON}", allow_module_level=True)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

# Binds port 0 on all of the manager namespace's addresses, prints the port, then answers
# every connection's "ping" with "pong".
SERVER = r"""
import socket, threading
s = socket.socket()
s.bind(("0.0.0.0", 0))
s.listen(64)
print(s.getsockname()[1], flush=True)
def serve(c):
    with c:
        if c.recv(4) == b"ping":
            c.sendall(b"pong")
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Exit 0 iff a ping/pong round trip to argv[1]:argv[2] succeeds within argv[3] seconds.
CLIENT = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
        c.sendall(b"ping")
        sys.exit(0 if c.recv(4) == b"pong" else 1)
except OSError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture(autouse=True)
def _require_netns() -> None:
    if not AVAILABLE:  # only reached with CI set: a CI machine must be able to run these
        pytest.fail(f"network namespaces unavailable on CI: {REASON}")


@pytest.fixture
def cluster() -> Iterator[NetnsCluster]:
    with NetnsCluster(2) as c:
        yield c


def start_server(c: NetnsCluster) -> tuple[subprocess.Popen[str], int]:
    """Start the ping/pong server on the manager; return it and its port."""
    proc = c.popen(0, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    assert ready, "server did not print its port within 10 s"
    return proc, int(proc.stdout.readline())


def can_connect(c: NetnsCluster, i: int, port: int, timeout: float = 1.0) -> bool:
    """Whether host ``i`` completes a round trip to the manager's server."""
    argv = c.wrap(i, [sys.executable, "-c", CLIENT, c.manager_address, str(port), str(timeout)])
    return subprocess.run(argv, capture_output=True, timeout=timeout + 10).returncode == 0


def wait_for(pred: object, limit: float = 5.0) -> bool:
    """Poll ``pred()`` until true or ``limit`` seconds have passed."""
    assert callable(pred)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return bool(pred())


def ns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_layout(cluster: NetnsCluster) -> None:
    assert len(cluster.hosts) == 3 and cluster.n_workers == 2
    assert cluster.manager_address == cluster.address(0) == "10.77.0.1"
    assert [cluster.address(i) for i in (1, 2)] == ["10.77.0.11", "10.77.0.12"]
    assert cluster.netns_path(1) == f"/run/netns/{cluster.hosts[1]}"
    assert cluster.wrap(2, ["true"]) == ["nsenter", f"--net=/run/netns/{cluster.hosts[2]}", "true"]
    assert {cluster.switch, *cluster.hosts} <= ns_list()
    assert all(len(f"p-{h}") <= 15 for h in cluster.hosts)
    with pytest.raises(IndexError):
        cluster.address(3)
    # loopback is up inside each host
    for i in range(3):
        out = subprocess.run(cluster.wrap(i, ["ip", "-br", "link", "show", "lo"]),
                             capture_output=True, text=True, timeout=10).stdout
        assert "UP" in out or "UNKNOWN" in out


def test_workers_reach_manager(cluster: NetnsCluster) -> None:
    _, port = start_server(cluster)
    assert can_connect(cluster, 1, port)
    assert can_connect(cluster, 2, port)


def test_cut_and_restore(cluster: NetnsCluster) -> None:
    _, port = start_server(cluster)
    assert can_connect(cluster, 1, port)
    cluster.cut(1)
    assert not can_connect(cluster, 1, port, timeout=0.5)
    assert can_connect(cluster, 2, port)
    cluster.restore(1)
    assert wait_for(lambda: can_connect(cluster, 1, port, timeout=0.5), 5.0)


def test_kill_host(cluster: NetnsCluster) -> None:
    server, port = start_server(cluster)
    sleeper = cluster.popen(1, ["sleep", "60"])
    cluster.kill_host(0)
    assert server.wait(timeout=5) == -signal.SIGKILL
    assert sleeper.poll() is None  # other hosts untouched
    assert not can_connect(cluster, 1, port, timeout=0.5)


def test_close_removes_everything() -> None:
    c = NetnsCluster(2, rate=None)
    try:
        names = {c.switch, *c.hosts}
        server, _ = start_server(c)
        recorded = c.popen(2, ["sleep", "60"])
        # started behind the harness's back: only the namespace sweep can find it
        stray = subprocess.Popen(c.wrap(1, ["sleep", "60"]))
        assert names <= ns_list()
    finally:
        c.close()
    try:
        assert not names & ns_list()
        assert server.returncode is not None and recorded.returncode is not None
        assert stray.wait(timeout=5) == -signal.SIGKILL
        for pid in (server.pid, recorded.pid, stray.pid):
            assert not alive(pid)
        c.close()  # idempotent
        assert c.closed
        with pytest.raises(NetnsError):
            c.popen(0, ["true"])
    finally:
        if stray.poll() is None:
            stray.kill()


@pytest.mark.parametrize("fair, qdisc", [(True, "htb"), (False, "tbf")])
def test_shaping_installed(fair: bool, qdisc: str) -> None:
    with NetnsCluster(2, rate="100mbit", fair=fair) as c:
        for i, host in enumerate(c.hosts):
            for ns, dev in ((host, "eth0"), (c.switch, f"p-{host}")):
                out = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev],
                                     capture_output=True, text=True, timeout=10).stdout
                assert qdisc in out, (i, ns, dev, out)
        if fair:  # one class per peer plus parent and default
            out = subprocess.run(["tc", "-n", c.hosts[1], "class", "show", "dev", "eth0"],
                                 capture_output=True, text=True, timeout=10).stdout
            assert out.count("class htb") == 4 and "ceil 100Mbit" in out


def test_unshaped_has_no_htb() -> None:
    with NetnsCluster(1, rate=None) as c:
        out = subprocess.run(["tc", "-n", c.hosts[1], "qdisc", "show", "dev", "eth0"],
                             capture_output=True, text=True, timeout=10).stdout
        assert "htb" not in out and "tbf" not in out


def test_failed_setup_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = netns._run
    created: list[str] = []

    def flaky_run(argv: list[str], **kw: object) -> object:
        if argv[:3] == ["ip", "netns", "add"]:
            created.append(argv[3])
        if argv[:2] == ["ip", "-n"] and argv[-2:] == ["netns", created[-1]] and len(created) == 3:
            raise NetnsError("injected failure")
        return real_run(argv, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(netns, "_run", flaky_run)
    with pytest.raises(NetnsError, match="injected failure"):
        NetnsCluster(3)
    assert len(created) == 3  # the switch and two hosts existed when setup failed
    assert not set(created) & ns_list()


def test_bad_arguments() -> None:
    assert parse_rate("1gbit") == 10**9 and parse_rate("10mbps") == 80 * 10**6
    with pytest.raises(ValueError):
        parse_rate("fast")
    with pytest.raises(ValueError):
        NetnsCluster(1, rate="1 parsec")
    with pytest.raises(ValueError):
        NetnsCluster(1, prefix="muchtoolongprefix")
    with NetnsCluster(1, rate=None) as c, pytest.raises(NetnsError, match="already exist"):
        NetnsCluster(1, prefix=c.prefix)
