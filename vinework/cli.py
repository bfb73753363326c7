"""The ``vinework`` command: ``vinework worker HOST PORT [...]`` and ``vinework demo``."""

from __future__ import annotations

import argparse
import sys


def _worker(args: argparse.Namespace) -> int:
    from .worker.main import WorkerOptions, run_worker

    opts = WorkerOptions(
        host=args.host, port=args.port, cores=args.cores, memory=args.memory, disk=args.disk,
        gpus=args.gpus or 0, workdir=args.workdir, timeout=args.timeout,
        single_shot=args.single_shot, hoist=tuple(args.hoist or ()),
    )
    return run_worker(opts)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vinework", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a worker that connects to a manager")
    w.add_argument("host")
    w.add_argument("port", type=int)
    w.add_argument("--cores", type=int, help="cores to offer (default: all)")
    w.add_argument("--memory", type=int, help="memory to offer, MB (default: all)")
    w.add_argument("--disk", type=int, help="disk to offer, MB (default: free space)")
    w.add_argument("--gpus", type=int, default=0)
    w.add_argument("--workdir", help="directory for the cache and sandboxes")
    w.add_argument("--timeout", type=float, default=900.0,
                   help="give up after this many seconds without a manager")
    w.add_argument("--single-shot", action="store_true",
                   help="exit after the first manager disconnects")
    w.add_argument("--hoist", action="append", help="module to pre-import for PythonTasks")
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
