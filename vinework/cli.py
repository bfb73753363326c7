"""The ``vinework`` command: ``vinework worker HOST PORT [...]`` and ``vinework demo``.

A bad argument is reported as one line on stderr with exit code 2 (argparse's
convention), never a usage dump or a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``vinework worker: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def _amount(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative (0 or unset means: detect)")
    return n


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not s > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return s


def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"{pid} is not a process id")
    return pid


def _usable_workdir(path: str) -> str | None:
    """Why ``path`` cannot hold the worker's cache and sandboxes, or None if it can."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return f"--workdir {path}: {e.strerror or e}"
    return None


def _worker(args: argparse.Namespace) -> int:
    from .worker.main import WorkerOptions, run_worker

    if args.workdir is not None:
        why = _usable_workdir(args.workdir)
        if why is not None:
            print(f"vinework worker: error: {why}", file=sys.stderr)
            return 2
    opts = WorkerOptions(
        host=args.host, port=args.port, cores=args.cores, memory=args.memory, disk=args.disk,
        gpus=args.gpus, workdir=args.workdir, timeout=args.timeout,
        connect_timeout=args.connect_timeout if args.connect_timeout is not None
        else min(30.0, args.timeout),
        drain_timeout=args.drain_timeout, single_shot=args.single_shot,
        hoist=tuple(args.hoist or ()), parent_pid=args.parent_pid or 0, debug=args.debug,
    )
    return run_worker(opts)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(workers=args.workers)


WORKER_HELP = """\
Connect to the manager at HOST:PORT, run its tasks, keep and serve its files.
A worker without a manager retries until --timeout passes. The first SIGTERM
while connected drains the worker (the manager moves its work elsewhere, then
says Shutdown; at most --drain-timeout seconds); SIGINT or a second signal
stops it at once."""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vinework", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a worker that connects to a manager",
                       description=WORKER_HELP)
    w.add_argument("host")
    w.add_argument("port", type=_port)
    w.add_argument("--cores", type=_amount, help="cores to offer (0 or unset: all)")
    w.add_argument("--memory", type=_amount, help="memory to offer, MB (0 or unset: all)")
    w.add_argument("--disk", type=_amount, help="disk to offer, MB (0 or unset: free space)")
    w.add_argument("--gpus", type=_amount, default=0, help="gpus to offer (default 0)")
    w.add_argument("--workdir", help="directory for the cache and sandboxes (kept at exit; "
                   "default: a fresh directory under $TMPDIR, removed at exit)")
    w.add_argument("--timeout", type=_seconds, default=900.0,
                   help="give up after this many seconds without a manager: never "
                   "connected, or since the last disconnection (default 900)")
    w.add_argument("--connect-timeout", type=_seconds, default=None,
                   help="longest one connection attempt may take, handshake included, "
                   "before it is abandoned and retried (default: 30, or --timeout if smaller)")
    w.add_argument("--drain-timeout", type=_seconds, default=20.0,
                   help="after the first SIGTERM, exit after this many seconds even if the "
                   "manager has not said Shutdown (default 20)")
    w.add_argument("--parent-pid", type=_pid, default=None,
                   help="stop at once when this process exits (used by Factory)")
    w.add_argument("--single-shot", action="store_true",
                   help="exit after the first manager disconnects")
    w.add_argument("--hoist", action="append", help="module to pre-import for PythonTasks")
    w.add_argument("--debug", action="store_true", help="also log every task started and done")
    w.set_defaults(fn=_worker)
    d = sub.add_parser("demo", help="run a small DAG on local workers and show where bytes went")
    d.add_argument("--workers", type=int, default=2)
    d.set_defaults(fn=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
