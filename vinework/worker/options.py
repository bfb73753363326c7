"""The worker's command line: TaskVine's ``vine_worker`` options, and what the worker offers.

``add_worker_arguments`` puts every option on an ``argparse`` parser (used by
``vinework worker`` and ``vine_worker``, see ``cli.py``); ``worker_options``
turns the parsed namespace into ``WorkerOptions`` or raises ``OptionError``
with a one-line reason. ``normalize_argv`` lets ``-d``/``--debug`` take an
optional value the way TaskVine's users write it (``--debug``, ``--debug=all``,
``-d all``). ``detect_resources`` says what the worker offers.

The manager address: ``HOST PORT``, ``HOST:PORT``, or TaskVine's
``"h1:p1;h2:p2"`` (a second positional argument is then the port of the
entries that have none). vinework connects to one manager: it uses the first
address and says in its log that it ignores the others.

Options TaskVine has that vinework cannot honour are accepted by the parser
and then refused with one line (exit 2): ``-M/--manager-name``,
``-C/--catalog`` and ``--connection-mode`` (no catalog server), ``--bandwidth`` and
``--disk-allocation``. Options that have no effect here are accepted and
documented as such in ``--help``: ``-w/--tcp-window-size`` (the kernel tunes
TCP windows), ``-A/--arch``, ``-O/--os`` (nothing in vinework's Hello carries
them), ``--from-factory``, ``--debug-release-reset``, ``--disable-symlinks``,
and the host part of ``--contact-hostport`` (the manager reaches a worker's
transfer server at the address its connection comes from; the port is
advertised).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from ..protocol.auth import read_password_file
from .outcome import Resources

DEFAULT_TIMEOUT = 900.0  # TaskVine's idle and connect timeouts
DEFAULT_ATTEMPT_TIMEOUT = 30.0


class OptionError(Exception):
    """A worker option that cannot be honoured (the message is one line)."""


@dataclass
class WorkerOptions:
    """Everything ``vinework worker`` / ``vine_worker`` was told (None resources: detect)."""

    host: str
    port: int
    cores: int | None = None  # None: $CORES, else detect; 0 ("all"): detect
    memory: int | None = None  # MB; same rules ($MEMORY)
    disk: int | None = None  # MB; same rules ($DISK); detected disk is --disk-percent of free
    gpus: int | None = None  # None: $GPUS, else detect (nvidia-smi -L); N >= 0: exactly N
    disk_percent: float = 50.0
    workdir: str | None = None  # None: a fresh directory under $TMPDIR, removed at exit
    keep_workspace: bool = False  # keep even a workdir the worker made
    connect_timeout: float = DEFAULT_TIMEOUT  # give up after this long without a manager
    idle_timeout: float = DEFAULT_TIMEOUT  # leave after this long connected with nothing to do
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT  # one connection attempt, handshake too
    drain_timeout: float = 20.0
    single_shot: bool = False
    wall_time: float = 0.0  # leave this long after the start; 0: no limit
    min_backoff: float = 1.0
    max_backoff: float = 8.0
    hoist: tuple[str, ...] = ()
    parent_pid: int = 0  # exit when this process exits (0: no parent to watch)
    debug: bool = False
    debug_file: str = ""  # "" or ":stderr": stderr; ":stdout": stdout; else a file
    debug_rotate_max: int = 10 << 20  # bytes; 0: never rotate
    features: tuple[str, ...] = ()
    password: bytes = b""  # -P/--password FILE: its contents
    ssl: bool = False  # --ssl: TLS to the manager and for peer transfers
    ssl_ca: str = ""  # --ssl-ca FILE: verify the manager's certificate
    tls_sni: str = ""  # --tls-sni NAME
    transfer_ports: tuple[int, int] = (0, 0)  # (0, 0): any free port
    contact_port: int = 0  # the transfer port to advertise (0: the one bound)
    max_transfer_procs: int = 16  # concurrent fetches into the cache
    task_wrapper: str = ""
    ignored_managers: tuple[str, ...] = ()  # further "h:p" of a "h1:p1;h2:p2" argument


# ---------------------------------------------------------------------- value parsers
_TIME = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_TIME_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_METRIC = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgtp]?)i?b?\s*$", re.IGNORECASE)
_METRIC_UNIT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_time(text: str) -> float:
    """Seconds from "90", "1.5", "10s", "10m", "2h", "1d" (TaskVine's time suffixes)."""
    m = _TIME.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a time (a number of seconds, or with s/m/h/d)")
    return float(m.group(1)) * _TIME_UNIT[m.group(2).lower()]


def _positive_time(text: str) -> float:
    try:
        s = parse_time(text)
    except ValueError as e:
        if text.strip().startswith("-"):
            raise argparse.ArgumentTypeError(
                f"{text} is not a positive number of seconds") from None
        raise argparse.ArgumentTypeError(str(e)) from None
    if not s > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return s


def _time_or_zero(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (0: no limit)") from None


def _metric(text: str) -> int:
    m = _METRIC.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (bytes, or with K/M/G)")
    return int(float(m.group(1)) * _METRIC_UNIT[m.group(2).lower()])


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def _amount(text: str) -> int:
    """A whole number >= 0, or "all" (= 0: detect)."""
    if text.strip().lower() == "all":
        return 0
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'all'") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative (0, 'all' or unset means: detect)")
    return n


def _gpus(text: str) -> int:
    """A number of gpus; "all" or a negative number: detect (-1)."""
    if text.strip().lower() == "all":
        return -1
    try:
        return max(-1, int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'all'") from None


def _percent(text: str) -> float:
    if text.strip().lower() == "all":
        return 100.0
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    return min(100.0, max(0.0, p))


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a positive number")
    return n


def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"{pid} is not a process id")
    return pid


def _port_range(text: str) -> tuple[int, int]:
    parts = text.split(":")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not PORT or LOW:HIGH")
    lo = _port(parts[0])
    hi = _port(parts[1]) if len(parts) == 2 else lo
    if lo > hi:
        raise argparse.ArgumentTypeError(f"{text!r}: the low port is above the high one")
    return lo, hi


def _contact(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT or :PORT")
    return host.strip("[]"), _port(port)


# ---------------------------------------------------------------------- -d / --debug
DEBUG_FLAGS = frozenset("""
    all none fatal error notice debug syscall channel process resolve libcall local dns
    tcp auth irods cvmfs http ftp nest grow chirp dcap rfio glite lfc gfal multi pstree
    alloc cache poll hdfs bxgrid login wq mpi user xrootd remote batch rmonitor makeflow
    hook ext vine jx sandbox time pid mq catalog work_queue taskvine resource
""".split())


def _is_debug_value(token: str) -> bool:
    return bool(token) and all(f.lstrip("+-").lower() in DEBUG_FLAGS for f in token.split(","))


def normalize_argv(argv: list[str]) -> list[str]:
    """Give ``-d``/``--debug`` a value: the next word if it is a debug subsystem
    (``-d all``, ``--debug vine,tcp``), else "all"; ``--debug=X`` and ``-dX`` stay."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out.extend(argv[i:])
            break
        if a in ("-d", "--debug"):
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            if _is_debug_value(nxt):
                out.append(f"--debug={nxt}")
                i += 2
                continue
            out.append("--debug=all")
        else:
            out.append(a)
        i += 1
    return out


# ---------------------------------------------------------------------- the parser
def add_worker_arguments(p: argparse.ArgumentParser) -> None:
    """Every ``vine_worker`` option (TaskVine's names and meanings) and vinework's own."""
    p.add_argument("manager", nargs="*", metavar="HOST PORT",
                   help="the manager: HOST PORT, HOST:PORT, or \"h1:p1;h2:p2\" (vinework uses "
                   "the first)")
    p.add_argument("-v", "--version", action="version", version=f"%(prog)s {_version()}",
                   help="show the version and exit")
    res = p.add_argument_group("resources (unset: $CORES/$MEMORY/$DISK/$GPUS, else detected)")
    res.add_argument("--cores", type=_amount, metavar="N|all",
                     help="cores to offer (0 or all: every core)")
    res.add_argument("--memory", type=_amount, metavar="MB|all",
                     help="memory to offer, MB (0 or all: the machine's memory)")
    res.add_argument("--disk", type=_amount, metavar="MB|all",
                     help="disk to offer, MB (at most the free space; 0 or all: detect)")
    res.add_argument("--disk-percent", type=_percent, default=None, metavar="P",
                     help="without --disk, offer P%% of the free space (default 50)")
    res.add_argument("--gpus", type=_gpus, metavar="N|all",
                     help="gpus to offer (unset, all or negative: count them with nvidia-smi)")
    res.add_argument("--feature", action="append", metavar="NAME",
                     help="a feature this worker provides (Task.add_feature); repeatable")
    res.add_argument("--wall-time", type=_time_or_zero, default=0.0, metavar="T",
                     help="leave after T seconds: drain, then exit (default: no limit)")
    t = p.add_argument_group("manager connection")
    t.add_argument("-t", "--timeout", type=_positive_time, metavar="T",
                   help="set both --idle-timeout and --connect-timeout (suffixes s/m/h/d)")
    t.add_argument("--idle-timeout", type=_positive_time, metavar="T",
                   help="leave a manager (drain, then exit) after T with no task and no "
                   "transfer (default 900 s)")
    t.add_argument("--connect-timeout", type=_positive_time, metavar="T",
                   help="exit after T without a manager: never connected, or since the last "
                   "disconnection (default 900 s)")
    t.add_argument("--attempt-timeout", type=_positive_time, metavar="T",
                   help="vinework: longest one connection attempt may take, handshake "
                   "included (default: 30 s, or the connect timeout if smaller)")
    t.add_argument("-i", "--min-backoff", type=_positive_time, default=1.0, metavar="T",
                   help="first pause before reconnecting, doubled per failure (default 1 s)")
    t.add_argument("-b", "--max-backoff", type=_positive_time, default=8.0, metavar="T",
                   help="longest pause between connection attempts (default 8 s)")
    t.add_argument("--single-shot", action="store_true",
                   help="exit when the first manager disconnects (else: keep WORKER and "
                   "FOREVER files and wait for the next manager)")
    t.add_argument("--parent-death", action="store_true",
                   help="exit when the parent process exits")
    t.add_argument("--parent-pid", type=_pid, default=None,
                   help="vinework: exit at once when this process exits (used by Factory)")
    t.add_argument("--drain-timeout", type=_positive_time, default=20.0, metavar="T",
                   help="vinework: after the first SIGTERM (or --idle-timeout, --wall-time), "
                   "exit after T even if the manager has not said Shutdown (default 20)")
    t.add_argument("-w", "--tcp-window-size", type=_metric, metavar="BYTES",
                   help="accepted; no effect (the kernel tunes TCP windows)")
    w = p.add_argument_group("workspace")
    w.add_argument("-s", "--workdir", "--workspace", dest="workdir", metavar="DIR",
                   help="directory for the cache and sandboxes, kept at exit with its FOREVER "
                   "files (default: a fresh directory under $TMPDIR, removed at exit)")
    w.add_argument("--keep-workspace", action="store_true",
                   help="keep the workspace at exit, even the one the worker made")
    w.add_argument("--disable-symlinks", action="store_true",
                   help="accepted; no effect")
    w.add_argument("--task-wrapper", default="", metavar="CMD",
                   help="run every command task as CMD /bin/sh -c 'TASK' ({} in CMD: the "
                   "quoted task, [] : the task as is)")
    w.add_argument("--hoist", action="append", metavar="MODULE",
                   help="vinework: module to pre-import for PythonTasks")
    x = p.add_argument_group("peer transfers")
    x.add_argument("--transfer-port", type=_port_range, metavar="P|LO:HI",
                   help="port (or the first free one of a range) of the transfer server")
    x.add_argument("--contact-hostport", type=_contact, metavar="H:P",
                   help="advertise port P for transfers (the host part has no effect: peers "
                   "use the address the worker connects from)")
    x.add_argument("--max-transfer-procs", type=_count, metavar="N",
                   help="concurrent fetches into the cache (default 16)")
    d = p.add_argument_group("debugging")
    d.add_argument("-d", "--debug", metavar="SUBSYS",
                   help="log every task started and done (any subsystem: all, vine, ...)")
    d.add_argument("-o", "--debug-file", metavar="FILE",
                   help="write the log to FILE (also :stderr, :stdout)")
    d.add_argument("--debug-rotate-max", type=_metric, default=10 << 20, metavar="BYTES",
                   help="rotate the debug file at this size (default 10M; 0: never)")
    d.add_argument("--debug-release-reset", action="store_true", help="accepted; no effect")
    n = p.add_argument_group("accepted for TaskVine compatibility")
    n.add_argument("-A", "--arch", help="accepted; no effect")
    n.add_argument("-O", "--os", help="accepted; no effect")
    n.add_argument("--from-factory", metavar="NAME", help="accepted; no effect")
    n.add_argument("-M", "-N", "--manager-name", "--master-name", dest="manager_name",
                   metavar="NAME", help="refused: vinework runs no catalog server")
    n.add_argument("-C", "--catalog", metavar="HOST:PORT",
                   help="refused: vinework runs no catalog server")
    n.add_argument("--connection-mode", metavar="MODE", help="refused (applies to -M)")
    n.add_argument("--ssl", action="store_true",
                   help="TLS to the manager (Manager(ssl=...)) and for peer transfers")
    n.add_argument("--ssl-ca", metavar="FILE",
                   help="with --ssl: verify the manager's certificate against this CA "
                        "bundle (or the certificate itself); without it the connection "
                        "is encrypted but the manager is not verified")
    n.add_argument("--tls-sni", metavar="NAME",
                   help="with --ssl: the server name to ask the manager for")
    n.add_argument("-P", "--password", metavar="FILE",
                   help="a file holding the manager's password (set_password): both sides "
                        "prove they know it before anything else")
    n.add_argument("--bandwidth", metavar="RATE", help="refused: not supported")
    n.add_argument("--disk-allocation", action="store_true", help="refused: not supported")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vinework")
    except PackageNotFoundError:
        return "unknown"


def _refusals(args: argparse.Namespace) -> None:
    if args.manager_name is not None or args.catalog is not None:
        opt = "-M/--manager-name" if args.manager_name is not None else "-C/--catalog"
        raise OptionError(f"{opt}: vinework runs no catalog server; give HOST PORT")
    if args.connection_mode is not None:
        raise OptionError("--connection-mode: it applies to -M, and vinework runs no catalog "
                          "server; give HOST PORT")
    if (args.ssl_ca or args.tls_sni) and not args.ssl:
        raise OptionError("--ssl-ca and --tls-sni go with --ssl")
    if args.bandwidth is not None:
        raise OptionError("--bandwidth: throttling transfers is not supported")
    if args.disk_allocation:
        raise OptionError("--disk-allocation: loop-device sandboxes are not supported")


def _password(path: str | None) -> bytes:
    if path is None:
        return b""
    try:
        return read_password_file(path)
    except ValueError as e:
        raise OptionError(f"-P/--password: {e}") from None


def _hostport(text: str, default_port: int | None) -> tuple[str, int]:
    m = re.fullmatch(r"\[([^]]+)\](?::(\d+))?", text)
    if m is not None:  # [ipv6]:port
        host, port = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:  # a bare host, or an IPv6 address without a port
        host, port = text, None
    if not host:
        raise OptionError(f"no host in the manager address {text!r}")
    if port is None:
        if default_port is None:
            raise OptionError(f"no port in the manager address {text!r}: give HOST PORT "
                              "or HOST:PORT")
        return host, default_port
    try:
        return host, _port(port)
    except argparse.ArgumentTypeError as e:
        raise OptionError(str(e)) from None


def parse_managers(words: list[str]) -> list[tuple[str, int]]:
    """The manager addresses of the positional arguments (see the module docstring)."""
    if not words:
        raise OptionError("no manager given: give HOST PORT (or HOST:PORT)")
    if len(words) > 2:
        raise OptionError(f"too many arguments: {' '.join(words)} (give HOST PORT)")
    default = None
    if len(words) == 2:
        try:
            default = _port(words[1])
        except argparse.ArgumentTypeError as e:
            raise OptionError(str(e)) from None
    specs = [s.strip() for s in words[0].split(";") if s.strip()]
    if not specs:
        raise OptionError(f"no manager in {words[0]!r}")
    return [_hostport(s, default) for s in specs]


def worker_options(args: argparse.Namespace) -> WorkerOptions:
    """The options of a parsed command line; ``OptionError`` if they cannot be honoured."""
    _refusals(args)
    managers = parse_managers(list(args.manager))
    host, port = managers[0]
    connect = args.connect_timeout or args.timeout or DEFAULT_TIMEOUT
    idle = args.idle_timeout or args.timeout or DEFAULT_TIMEOUT
    if args.max_backoff < args.min_backoff:
        raise OptionError(f"--max-backoff {args.max_backoff:g} is below --min-backoff "
                          f"{args.min_backoff:g}")
    parent = args.parent_pid or (os.getppid() if args.parent_death else 0)
    return WorkerOptions(
        host=host, port=port, cores=args.cores, memory=args.memory, disk=args.disk,
        gpus=None if args.gpus is None or args.gpus < 0 else args.gpus,
        disk_percent=50.0 if args.disk_percent is None else args.disk_percent,
        workdir=args.workdir, keep_workspace=args.keep_workspace,
        connect_timeout=connect, idle_timeout=idle,
        attempt_timeout=args.attempt_timeout or min(DEFAULT_ATTEMPT_TIMEOUT, connect),
        drain_timeout=args.drain_timeout, single_shot=args.single_shot,
        wall_time=args.wall_time, min_backoff=args.min_backoff, max_backoff=args.max_backoff,
        hoist=tuple(args.hoist or ()), parent_pid=parent,
        debug=args.debug is not None and args.debug.lower() != "none",
        debug_file=args.debug_file or "", debug_rotate_max=args.debug_rotate_max,
        features=tuple(dict.fromkeys(args.feature or ())),
        password=_password(args.password),
        ssl=bool(args.ssl), ssl_ca=args.ssl_ca or "", tls_sni=args.tls_sni or "",
        transfer_ports=args.transfer_port or (0, 0),
        contact_port=args.contact_hostport[1] if args.contact_hostport else 0,
        max_transfer_procs=args.max_transfer_procs or 16, task_wrapper=args.task_wrapper,
        ignored_managers=tuple(f"{h}:{p}" for h, p in managers[1:]))


# ---------------------------------------------------------------------- resources
def _env_int(env: Mapping[str, str], name: str) -> int | None:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        return None


def count_gpus() -> int:
    """GPUs on this machine: the lines of ``nvidia-smi -L``, 0 without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10,
                             check=False, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def detect_resources(opts: WorkerOptions, workdir: str, in_use_mb: int = 0,
                     env: Mapping[str, str] | None = None) -> Resources:
    """What the worker offers: the options, else ``env`` (``$CORES``...), else the machine.

    ``in_use_mb`` is what the cache already holds at start-up: it counts as
    offered disk (TaskVine's rule). Without ``--disk`` the worker offers
    ``disk_percent`` of the free space (plus that); with it, at most the free space.
    """
    env = os.environ if env is None else env

    def pick(given: int | None, name: str) -> int:
        if given is None:
            given = _env_int(env, name)
        return given if given is not None and given > 0 else 0

    cores = pick(opts.cores, "CORES") or os.cpu_count() or 1
    memory = pick(opts.memory, "MEMORY") or (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20))
    free = shutil.disk_usage(workdir).free // (1 << 20)
    disk_given = pick(opts.disk, "DISK")
    if disk_given:
        disk = min(disk_given, free + in_use_mb)
    else:
        disk = int(free * opts.disk_percent / 100) + in_use_mb
    gpus = opts.gpus
    if gpus is None:
        gpus = _env_int(env, "GPUS")
    if gpus is None or gpus < 0:
        gpus = count_gpus()
    return Resources(cores, memory, disk, gpus)
