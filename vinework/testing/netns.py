"""A simulated multi-host cluster on one Linux machine, for vinework's multi-host tests.

Each "host" is a network namespace with its own address and its own (optionally
bandwidth-limited) cable to a shared switch, so tests and benchmarks can run a real
manager and real workers that talk over TCP exactly as across machines, cut a host's
cable, or crash a host.

Layout (see ``/work/shared/notes/cluster-sim.md``)::

    switch namespace  PREFIX-sw : bridge br0, one port p-PREFIX-hI per host
    host namespace    PREFIX-hI : lo + eth0, address 10.77.0.1 (I = 0, the manager)
                                  or 10.77.0.(10+I) (I = 1..n, the workers)

Nothing is created in the root namespace: every veth pair is created inside the
switch namespace and its peer is moved straight into the host namespace. Traffic can
only reach these namespaces' addresses (no routes lead anywhere else).

Shaping (``rate`` given), both directions of every cable (host egress on ``eth0``,
switch egress on ``p-HOST``):

* ``fair=True`` (default): ``htb`` root with a parent class at the link rate and one
  child class per peer address (u32 match on ``dst`` on the host side, ``src`` on the
  switch side), each guaranteed ``rate / n_peers`` and allowed to borrow up to the full
  rate, ``burst 256kb cburst 256kb quantum 65536`` (with htb's small default bursts a
  lone stream reached only 0.76-0.85 of the rate here). Concurrent flows share a link
  evenly.
* ``fair=False``: one ``tbf`` (``burst 256kb latency 5ms``) per direction. Caps the
  total correctly but splits it unevenly between flows.

Processes run "on" a host through ``nsenter --net=...`` (only the network namespace is
entered; ``ip netns exec`` would remount ``/sys``). Needs root; see :func:`netns_available`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any

SUBNET = "10.77.0"
"""First three octets of the cluster's private /24 (only ever used inside the namespaces)."""
MAX_WORKERS = 244
"""Workers use 10.77.0.11 .. 10.77.0.254."""
CMD_TIMEOUT = 15.0
"""Timeout in seconds for every ``ip``/``tc`` command."""
_IFNAMSIZ = 15
_NETNS_DIR = "/run/netns"

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_IEC = {"ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30, "ti": 2.0**40}
_RATE_UNITS = {"": 1.0} | {  # tc's rate units, in bit/s ("bps" = bytes per second)
    p + u: m * per for p, m in (_SI | _IEC).items() for u, per in (("bit", 1), ("bps", 8))
}


class NetnsError(RuntimeError):
    """A command building, driving or tearing down the simulated cluster failed."""


def _run(argv: Sequence[str], *, stdin: str | None = None,
         timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a command; raise :class:`NetnsError` naming it and its stderr if it fails.

    Args:
        argv: Command and arguments.
        stdin: Text fed to the command's standard input (e.g. a ``tc -batch -`` script).
        timeout: Seconds before the command is killed and an error raised.

    Returns:
        The completed process (text mode, output captured).
    """
    cmd = shlex.join(argv)
    try:
        cp = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                            timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise NetnsError(f"command timed out after {timeout:g}s: {cmd}") from e
    except OSError as e:
        raise NetnsError(f"cannot run command: {cmd}: {e}") from e
    if cp.returncode != 0:
        err = (cp.stderr or cp.stdout).strip() or "(no output)"
        raise NetnsError(f"command failed (exit {cp.returncode}): {cmd}: {err}")
    return cp


def parse_rate(rate: str) -> int:
    """Convert a ``tc``-style rate (``"1gbit"``, ``"100mbit"``, ``"10mbps"``) to bit/s.

    Raises:
        ValueError: The rate is malformed, has an unknown unit, or is not positive.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", rate)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _RATE_UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"bad rate {rate!r}: expected e.g. '1gbit', '100mbit', '10mbps'")
    return int(float(m.group(1)) * _RATE_UNITS[unit])


def _exists(ns: str) -> bool:
    return os.path.exists(os.path.join(_NETNS_DIR, ns))


def _ns_pids(ns: str) -> list[int]:
    """Pids of live processes in namespace ``ns`` (never our own pid)."""
    if not _exists(ns):
        return []
    out = _run(["ip", "netns", "pids", ns]).stdout
    return [p for p in (int(x) for x in out.split()) if p != os.getpid()]


def _kill_ns_pids(ns: str, timeout: float = 5.0) -> None:
    """SIGKILL every process in ``ns`` (by pid) until none is left, for at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while pids := _ns_pids(ns):
        if time.monotonic() > deadline:
            raise NetnsError(f"processes {pids} in namespace {ns} survived SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def netns_available() -> tuple[bool, str]:
    """Tell whether this machine can build a :class:`NetnsCluster`.

    Checks for Linux, root, the ``ip``, ``tc`` and ``nsenter`` tools, and that a trial
    namespace with a veth pair, a bridge and an ``htb`` qdisc can be created and deleted.

    Returns:
        ``(True, "ok")``, or ``(False, reason)`` with a human-readable reason.
    """
    if not sys.platform.startswith("linux"):
        return False, f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return False, "needs root to create network namespaces (run the tests as root)"
    missing = [t for t in ("ip", "tc", "nsenter") if shutil.which(t) is None]
    if missing:
        return False, f"missing tools: {', '.join(missing)} (install iproute2 / util-linux)"
    name = f"vwchk{secrets.token_hex(3)}"
    try:
        _run(["ip", "netns", "add", name])
    except NetnsError as e:
        return False, f"cannot create a network namespace: {e}"
    reason = "ok"
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        _run(["ip", "-n", name, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb"])
        _run(["tc", "-n", name, "qdisc", "add", "dev", "va", "root", "handle", "1:", "htb"])
    except NetnsError as e:
        reason = f"namespace created but cannot be equipped: {e}"
    try:
        _run(["ip", "netns", "del", name])
    except NetnsError as e:
        reason = f"cannot delete a network namespace: {e}"
    return reason == "ok", reason


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs since boot, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; user..steal


def wait_for_idle_cpu(idle: float = 0.9, window: float = 0.2, timeout: float = 10.0) -> float:
    """Wait until the machine's CPUs were at least ``idle`` idle over one ``window``
    (seconds), at most ``timeout`` seconds; return the last window's idle fraction.

    For benchmarks on a small machine: the processes a previous run left exiting, or a
    just-started worker's imports, must not share the cores with the next measured run.
    """
    deadline = time.monotonic() + timeout
    frac = 0.0
    while True:
        i0, t0 = _cpu_times()
        time.sleep(window)
        i1, t1 = _cpu_times()
        frac = (i1 - i0) / max(t1 - t0, 1)
        if frac >= idle or time.monotonic() >= deadline:
            return frac


class _State:
    """What teardown needs, held apart from the cluster so a finalizer can keep it."""

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []

    def reap(self) -> None:
        """Collect the exit status of recorded processes that have died."""
        for p in self.procs:
            p.poll()

    def teardown(self) -> None:
        """Kill every recorded process and every process in the namespaces, then delete them.

        Safe to call repeatedly; tries every step and raises one error listing all failures.
        """
        errors: list[str] = []
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                errors.append(f"pid {p.pid} did not die after SIGKILL")
                continue
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        self.procs = [p for p in self.procs if p.returncode is None]
        for ns in reversed(self.namespaces):  # hosts first, the switch last
            try:
                _kill_ns_pids(ns)
                if _exists(ns):
                    _run(["ip", "netns", "del", ns])
            except NetnsError as e:
                errors.append(str(e))
        self.reap()
        self.namespaces = [ns for ns in self.namespaces if _exists(ns)]
        if errors:
            raise NetnsError("cluster teardown incomplete: " + "; ".join(errors))


class NetnsCluster:
    """A switch plus ``n_hosts + 1`` hosts (index 0 = manager), each a network namespace.

    Use as a context manager; on exit (or :meth:`close`) every process started in the
    cluster is killed and every namespace deleted. A finalizer also tears down at
    interpreter exit if ``close`` was never called.

    Attributes:
        prefix: Unique prefix of every namespace name of this instance.
        switch: Name of the switch namespace (holds bridge ``br0`` and ports ``p-HOST``).
        hosts: Host namespace names; ``hosts[0]`` is the manager, ``hosts[1:]`` the workers.
        rate: Link rate of every cable in ``tc`` syntax, or ``None`` for unshaped links.
        fair: ``htb`` per-peer fair sharing (``True``) or a plain ``tbf`` cap (``False``).
    """

    def __init__(self, n_hosts: int, rate: str | None = "1gbit", prefix: str | None = None,
                 fair: bool = True) -> None:
        """Build the cluster.

        Args:
            n_hosts: Number of workers (0..244); one manager host is added.
            rate: Per-link rate in ``tc`` syntax (``"1gbit"``), or ``None`` for no shaping.
            prefix: Namespace name prefix (letters, digits, ``_``); default ``vw`` + 4 random
                hex digits. Namespaces already existing with this prefix are an error.
            fair: Shape with per-peer ``htb`` classes (``True``) or ``tbf`` (``False``).

        Raises:
            ValueError: Bad ``n_hosts``, ``rate`` or ``prefix``.
            NetnsError: A setup command failed (everything created so far is removed).
        """
        if not 0 <= n_hosts <= MAX_WORKERS:
            raise ValueError(f"n_hosts must be in 0..{MAX_WORKERS}, got {n_hosts}")
        self._bits = parse_rate(rate) if rate is not None else None
        self.rate = rate
        self.fair = fair
        if prefix is None:
            prefix = "vw" + secrets.token_hex(2)
            while any(n.startswith(prefix + "-") for n in self._listdir()):
                prefix = "vw" + secrets.token_hex(2)
        elif not re.fullmatch(r"[A-Za-z0-9_]+", prefix):
            raise ValueError(f"prefix {prefix!r} must be letters, digits or '_'")
        if len(f"p-{prefix}-h{n_hosts}") > _IFNAMSIZ:
            raise ValueError(f"prefix {prefix!r} too long: port names must be <= {_IFNAMSIZ}")
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.hosts: list[str] = [f"{prefix}-h{i}" for i in range(n_hosts + 1)]
        taken = sorted(set(self._listdir()) & {self.switch, *self.hosts})
        if taken:
            raise NetnsError(f"namespaces already exist: {', '.join(taken)}")
        self._state = _State()
        self._finalizer = weakref.finalize(self, self._state.teardown)
        try:
            self._setup()
        except BaseException as exc:
            try:
                self.close()
            except NetnsError as e:
                exc.add_note(f"and cleaning up after it failed too: {e}")
            raise

    @staticmethod
    def _listdir() -> list[str]:
        try:
            return os.listdir(_NETNS_DIR)
        except FileNotFoundError:
            return []

    def _add_ns(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self._state.namespaces.append(ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _setup(self) -> None:
        sw = self.switch
        self._add_ns(sw)
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", sw, "link", "set", "br0", "up"])
        for i, host in enumerate(self.hosts):
            self._add_ns(host)
            port = self._port(i)
            _run(["ip", "-n", sw, "link", "add", port, "type", "veth",
                  "peer", "name", "eth0", "netns", host])
            _run(["ip", "-n", sw, "link", "set", port, "master", "br0"])
            _run(["ip", "-n", sw, "link", "set", port, "up"])
            _run(["ip", "-n", host, "addr", "add", f"{self.address(i)}/24", "dev", "eth0"])
            _run(["ip", "-n", host, "link", "set", "eth0", "up"])
        if self._bits is not None:
            switch_script: list[str] = []
            for i, host in enumerate(self.hosts):
                host_script = self._shape_cmds("eth0", i, "dst")
                _run(["tc", "-n", host, "-batch", "-"], stdin="\n".join(host_script) + "\n")
                switch_script += self._shape_cmds(self._port(i), i, "src")
            _run(["tc", "-n", sw, "-batch", "-"], stdin="\n".join(switch_script) + "\n")

    def _shape_cmds(self, dev: str, i: int, match: str) -> list[str]:
        """``tc -batch`` lines shaping egress of ``dev`` on host ``i``'s cable."""
        assert self._bits is not None
        rate = f"{self._bits}bit"
        if not self.fair:
            return [f"qdisc replace dev {dev} root tbf rate {rate} burst 256kb latency 5ms"]
        peers = [j for j in range(len(self.hosts)) if j != i]
        share = f"{max(self._bits // max(len(peers), 1), 8000)}bit"
        # burst/cburst: htb's defaults (rate / HZ) are too small for this timer; with
        # them a single stream got 0.76-0.85 of the rate, with 256 KB 0.955 (1 Gbit/s
        # on the wire, headers included), as tbf does
        cls = f"htb rate {{}} ceil {rate} burst 256kb cburst 256kb quantum 65536"
        cmds = [
            f"qdisc replace dev {dev} root handle 1: htb default 2",
            f"class add dev {dev} parent 1: classid 1:1 {cls.format(rate)}",
            # unclassified traffic (ARP, anything not from/to a peer): small guarantee
            f"class add dev {dev} parent 1:1 classid 1:2 "
            f"{cls.format(f'{max(self._bits // 100, 8000)}bit')}",
        ]
        for k, j in enumerate(peers):
            cid = f"1:{0x10 + k:x}"
            cmds += [
                f"class add dev {dev} parent 1:1 classid {cid} {cls.format(share)}",
                f"filter add dev {dev} parent 1: protocol ip prio 1 u32 "
                f"match ip {match} {self.address(j)}/32 flowid {cid}",
            ]
        return cmds

    def _check(self, i: int) -> str:
        if not 0 <= i < len(self.hosts):
            raise IndexError(f"host index {i} out of range 0..{len(self.hosts) - 1}")
        return self.hosts[i]

    def _port(self, i: int) -> str:
        return f"p-{self._check(i)}"

    @property
    def n_workers(self) -> int:
        """Number of worker hosts (``len(hosts) - 1``)."""
        return len(self.hosts) - 1

    @property
    def manager_address(self) -> str:
        """IPv4 address of the manager host (``10.77.0.1``)."""
        return self.address(0)

    def address(self, i: int) -> str:
        """IPv4 address of host ``i``: ``10.77.0.1`` for 0, ``10.77.0.(10+i)`` otherwise."""
        self._check(i)
        return f"{SUBNET}.1" if i == 0 else f"{SUBNET}.{10 + i}"

    def netns_path(self, i: int) -> str:
        """Path of host ``i``'s namespace file, ``/run/netns/NAME``."""
        return f"{_NETNS_DIR}/{self._check(i)}"

    def wrap(self, i: int, argv: Sequence[str]) -> list[str]:
        """Prefix ``argv`` so it runs in host ``i``'s network namespace (only) via ``nsenter``."""
        return ["nsenter", f"--net={self.netns_path(i)}", *argv]

    def popen(self, i: int, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on host ``i``; the process is killed at teardown.

        Args:
            i: Host index (0 = manager).
            argv: Command and arguments.
            **kw: Passed to :class:`subprocess.Popen` (``stdout=``, ``env=``, ...).

        Returns:
            The started process (its pid is that of the command itself: nsenter execs it).
        """
        if self.closed:
            raise NetnsError("cluster is closed")
        proc: subprocess.Popen[Any] = subprocess.Popen(self.wrap(i, argv), **kw)
        self._state.procs.append(proc)
        return proc

    def link_bytes(self, i: int) -> tuple[int, int]:
        """Bytes host ``i`` has sent and received on its cable so far (its ``eth0``
        counters: every frame, headers included). Take the difference of two readings."""
        out = _run(["ip", "-n", self._check(i), "-s", "-j", "link", "show", "eth0"]).stdout
        try:
            stats = json.loads(out)[0]["stats64"]
            return int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"])
        except (ValueError, LookupError, TypeError) as exc:
            raise NetnsError(f"cannot read the counters of {self.hosts[i]}: {out[:200]!r}") \
                from exc

    def cut(self, i: int) -> None:
        """Pull host ``i``'s cable (its switch port goes down; connections stall)."""
        _run(["ip", "-n", self.switch, "link", "set", self._port(i), "down"])

    def restore(self, i: int) -> None:
        """Plug host ``i``'s cable back in (stalled connections resume after ~0.5-1 s)."""
        _run(["ip", "-n", self.switch, "link", "set", self._port(i), "up"])

    def kill_host(self, i: int) -> None:
        """Crash host ``i``: SIGKILL every process in its namespace and wait until none is left."""
        _kill_ns_pids(self._check(i))
        self._state.reap()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has completed."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Kill all processes and delete all namespaces. Idempotent.

        Raises:
            NetnsError: Something could not be removed (a later ``close`` retries).
        """
        self._state.teardown()
        self._finalizer.detach()

    def __enter__(self) -> NetnsCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"NetnsCluster(prefix={self.prefix!r}, workers={self.n_workers}, "
                f"rate={self.rate!r}, fair={self.fair}, closed={self.closed})")
