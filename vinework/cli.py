"""The vinework commands: worker, demo, status, factory, plot; and TaskVine's vine_worker,
vine_status and vine_factory.

``vinework worker HOST PORT [...]`` runs a worker, ``vinework demo`` a small DAG
on local workers; ``vine_worker [options] HOST PORT`` is TaskVine's worker
command line, run by vinework.

``vinework worker`` and ``vine_worker`` take the same arguments: TaskVine's
options with TaskVine's meanings, plus vinework's own (``--drain-timeout``,
``--parent-pid``, ``--hoist``, ``--attempt-timeout``); see
``vinework.worker.options`` for what each does and which are refused. Options
and the manager address may come in any order, as with TaskVine's getopt.

A bad argument, or an option vinework cannot honour, is reported as one line
on stderr with exit code 2 (argparse's convention), never a usage dump or a
traceback.
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


def _usable_workdir(path: str) -> str | None:
    """Why ``path`` cannot hold the worker's cache and sandboxes, or None if it can."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return f"--workdir {path}: {e.strerror or e}"
    return None


WORKER_HELP = """\
Connect to the manager at HOST PORT, run its tasks, keep and serve its files.
A worker without a manager retries (backing off from --min-backoff to
--max-backoff) until --connect-timeout passes. When a manager's connection
ends without a Shutdown, the worker kills its tasks, drops that manager's
files (cache levels task and workflow), keeps the worker and forever ones, and
waits for the next manager. The first SIGTERM while connected drains the
worker (the manager moves its work elsewhere, then says Shutdown; at most
--drain-timeout seconds); so do --idle-timeout and --wall-time. SIGINT or a
second signal stops it at once."""


def worker_parser(prog: str) -> argparse.ArgumentParser:
    """The parser of ``vinework worker`` / ``vine_worker`` (named ``prog`` in messages)."""
    from .worker.options import add_worker_arguments

    p = _Parser(prog=prog, description=WORKER_HELP,
                usage=f"{prog} [options] HOST PORT  (or HOST:PORT, or \"h1:p1;h2:p2\")")
    add_worker_arguments(p)
    return p


def run_worker_command(argv: list[str], prog: str) -> int:
    """Parse a worker command line and run the worker; 2 on a bad or refused argument."""
    from .worker.options import OptionError, normalize_argv, worker_options

    args = worker_parser(prog).parse_intermixed_args(normalize_argv(argv))
    try:
        opts = worker_options(args)
    except OptionError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if opts.workdir is not None:
        why = _usable_workdir(opts.workdir)
        if why is not None:
            print(f"{prog}: error: {why}", file=sys.stderr)
            return 2
    from .worker.main import run_worker

    return run_worker(opts)


def vine_worker_main(argv: list[str] | None = None) -> int:
    """``vine_worker [options] HOST PORT``: TaskVine's worker command, run by vinework."""
    return run_worker_command(sys.argv[1:] if argv is None else list(argv), "vine_worker")


def vine_status_main(argv: list[str] | None = None) -> int:
    """``vine_status HOST:PORT``: what a running manager is doing (TaskVine's command)."""
    from .observe.status_cli import main as status_main

    return status_main(sys.argv[1:] if argv is None else list(argv), "vine_status")


def vine_factory_main(argv: list[str] | None = None) -> int:
    """``vine_factory``: a factory that keeps workers alive apart from the manager."""
    from .factory.cli import main as factory_main

    return factory_main(sys.argv[1:] if argv is None else list(argv), "vine_factory")


# subcommands parsed by their own modules: name -> (module, help)
_DELEGATED = {
    "status": ("vinework.observe.status_cli", "show what a running manager is doing"),
    "factory": ("vinework.factory.cli", "keep workers alive through a batch system"),
    "plot": ("vinework.observe.plot", "draw PNG plots of a run from its log directory"),
}


def _delegate(name: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(_DELEGATED[name][0])
    return int(module.main(argv, f"vinework {name}") or 0)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vinework", description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    # "vinework worker" is parsed by worker_parser (options and arguments in any order);
    # it is listed here for --help
    sub.add_parser("worker", help="run a worker that connects to a manager (vinework worker "
                   "--help lists its options)", add_help=False)
    for name, (_module, text) in _DELEGATED.items():
        sub.add_parser(name, help=f"{text} (vinework {name} --help)", add_help=False)
    d = sub.add_parser("demo", help="run a small DAG on local workers and show where bytes went")
    d.add_argument("--workers", type=int, default=2)
    d.set_defaults(fn=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "worker":
        return run_worker_command(argv[1:], "vinework worker")
    if argv and argv[0] in _DELEGATED:
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
