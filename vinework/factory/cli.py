"""``vinework factory`` / ``vine_factory``: a factory that runs apart from the manager.

TaskVine's vine_factory options: ``-T/--batch-type``, the manager as ``HOST PORT``
(or ``--manager-host``/``--manager-port``), ``-w/--min-workers`` (5),
``-W/--max-workers`` (100), ``--workers-per-cycle`` (5), ``-t/--timeout`` (300 s),
``--cores``, ``--memory``, ``--disk``, ``--gpus``, ``-P/--password``,
``-S/--scratch-dir``, ``-B/--batch-options``, ``-E/--extra-options``, ``--env``,
``--ssl``, ``--condor-requirements``, ``--k8s-image``, ``--tasks-per-worker``,
``--factory-timeout``. ``-M/--manager-name`` and ``--catalog`` are refused (no
catalog server here). Demand comes from the manager's status port (the
``vinework status`` query): its waiting and running tasks, one core each for the
waiting ones (a status answer does not carry their resources) and the cores
committed to the running ones.

It runs until SIGTERM or SIGINT, then cancels every job it submitted; exit 0.
A bad argument is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from typing import Any, NoReturn

from .base import BATCH_TYPES, FactoryBase


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser(prog: str) -> argparse.ArgumentParser:
    """The parser of ``vinework factory`` / ``vine_factory``."""
    p = _Parser(prog=prog, description="Keep vinework workers alive for a manager through "
                "a batch system.", usage=f"{prog} -T TYPE [options] HOST PORT")
    p.add_argument("manager", nargs="*", metavar="HOST PORT")
    p.add_argument("-T", "--batch-type", required=True, choices=sorted(BATCH_TYPES))
    p.add_argument("--manager-host")
    p.add_argument("--manager-port", type=int)
    p.add_argument("-M", "--manager-name", help="refused: vinework has no catalog server")
    p.add_argument("--catalog", help="refused: vinework has no catalog server")
    p.add_argument("-w", "--min-workers", type=int, default=5)
    p.add_argument("-W", "--max-workers", type=int, default=100)
    p.add_argument("--workers-per-cycle", type=int, default=5)
    p.add_argument("-t", "--timeout", type=float, default=300.0,
                   help="workers leave after this many idle seconds (default 300)")
    p.add_argument("--tasks-per-worker", type=int)
    p.add_argument("--factory-timeout", type=float,
                   help="exit after this many seconds without reaching the manager")
    for r in ("cores", "memory", "disk", "gpus"):
        p.add_argument(f"--{r}", type=int)
    p.add_argument("-P", "--password", help="password file the workers use")
    p.add_argument("--ssl", action="store_true")
    p.add_argument("-S", "--scratch-dir")
    p.add_argument("-B", "--batch-options", default="")
    p.add_argument("-E", "--extra-options", default="")
    p.add_argument("--env", action="append", default=[], metavar="VAR=VALUE")
    p.add_argument("--condor-requirements", action="append", default=[])
    p.add_argument("--k8s-image")
    p.add_argument("-d", "--debug", action="store_true")
    return p


def _address(args: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[str, int]:
    words: list[str] = list(args.manager)
    if args.manager_host or args.manager_port:
        if words:
            p.error("give the manager as HOST PORT or with --manager-host/--manager-port")
        if not (args.manager_host and args.manager_port):
            p.error("--manager-host and --manager-port go together")
        return str(args.manager_host), int(args.manager_port)
    if len(words) == 1 and ":" in words[0]:
        words = words[0].rsplit(":", 1)
    if len(words) != 2 or not words[1].isdigit():
        p.error("the manager: HOST PORT (or HOST:PORT)")
    port = int(words[1])
    if not 0 < port < 65536:
        p.error(f"port {port} is outside 1-65535")
    return words[0], port


def remote_demand(host: str, port: int, password: bytes | None,
                  tls: Any) -> tuple[int, int]:
    """(tasks waiting or running, cores they need) from the manager's status port."""
    from ..observe.status_cli import query
    snap = query(host, port, "all", password=password, tls=tls)
    tasks = snap.get("tasks", {})
    waiting, running = int(tasks.get("waiting", 0)), int(tasks.get("running", 0))
    committed = int(snap.get("stats", {}).get("committed_cores", 0))
    return waiting + running, waiting + max(committed, running)


def main(argv: list[str], prog: str = "vinework factory") -> int:
    """Run a factory until SIGTERM/SIGINT; 2 on a bad argument, 1 on a failed start."""
    p = parser(prog)
    args = p.parse_intermixed_args(argv)
    if args.manager_name or args.catalog:
        p.error("-M/--manager-name and --catalog need a catalog server, which vinework "
                "does not have: give the manager as HOST PORT")
    host, port = _address(args, p)
    env = {}
    for e in args.env:
        k, sep, v = e.partition("=")
        if not sep or not k:
            p.error(f"--env {e!r} is not VAR=VALUE")
        env[k] = v
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING,
                        format=f"{prog}: %(message)s")
    password: bytes | None = None
    if args.password:
        try:
            with open(args.password, "rb") as fh:
                password = fh.read().strip()
        except OSError as e:
            p.error(f"--password {args.password}: {e.strerror}")
    tls = None
    if args.ssl:
        import ssl
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    try:
        f = FactoryBase(batch_type=args.batch_type, manager_host_port=f"{host}:{port}")
        f.min_workers, f.max_workers = args.min_workers, args.max_workers
        f.workers_per_cycle, f.timeout = args.workers_per_cycle, args.timeout
        for name in ("cores", "memory", "disk", "gpus", "tasks_per_worker", "scratch_dir",
                     "password", "k8s_image"):
            v = getattr(args, name)
            if v is not None:
                setattr(f, name, v)
        f.ssl = args.ssl
        f.batch_options = args.batch_options or None
        f.extra_options = args.extra_options or None
        f.env = env
        if args.condor_requirements:
            f.condor_requirements = args.condor_requirements
    except (ValueError, TypeError, AttributeError) as e:
        p.error(str(e))
    stop = threading.Event()
    last_seen = [time.monotonic()]

    def demand() -> tuple[int, int]:
        try:
            d = remote_demand(host, port, password, tls)
        except Exception as e:  # the manager is not up (yet): keep min_workers
            logging.getLogger("vinework.factory").info("manager status: %s", e)
            if args.factory_timeout and time.monotonic() - last_seen[0] > args.factory_timeout:
                stop.set()
            return 0, 0
        last_seen[0] = time.monotonic()
        return d

    f.demand_fn = demand
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        f.start()
    except Exception as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    try:
        while not stop.wait(0.5):
            pass
    finally:
        f.stop()
    return 0
