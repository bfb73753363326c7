"""Paired A/B of two checkouts of vinework: small latencies, measured in alternation.

On this kind of machine the same code's small-compute time drifts by a third within
an hour (3.2 to 4.9 ms for the same compute), more than most single changes move
it. Timing one checkout and then the other compares two moments of the machine.
Here both are alive at once: one process per checkout, each with its own manager and
a warm 2-core local worker, and the driver asks them in turn (in ABBA order) for one
round of
``--per-round`` operations, for ``--rounds`` rounds. The ratio of the two medians of
each round, taken round by round, cancels the drift both shared.

Workloads (``--workload``):

* ``small-graph``: a compute of ``(da.ones(100, chunks=10) + i).sum()`` through
  ``DaskVine.get``: one task on the small-graph path (``bench_dask_small.py``);
* ``per-task``: the same compute with ``small_graph=False`` (a task per node);
* ``python-task``: a trivial PythonTask's round trip (submit, then ``wait``).

Run: ``python bench/bench_ab.py OTHER_CHECKOUT [--workload small-graph]``. It needs
another checkout, for example ``git worktree add /tmp/base HEAD~3``. Each side runs
this script with its tree first on ``PYTHONPATH`` (its workers too) and that tree's
``bench/common.py``. The first side printed
is OTHER_CHECKOUT, the baseline. A ratio below 1 means this checkout is faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _side(workload: str, warm: int) -> None:
    """One side: its own manager and worker; answers 'N' with N timings (seconds)."""
    sys.path.insert(0, os.path.join(os.environ["VINEWORK_AB_TREE"], "bench"))
    import warnings

    from common import local_workers

    import vinework as vine

    warnings.filterwarnings("ignore", message="no password is set")
    if workload == "python-task":
        m: Any = vine.Manager(port=0)

        def once(i: int) -> float:
            t0 = time.perf_counter()
            m.submit(vine.PythonTask(abs, i))  # (a builtin: pickled by name, as a library's)
            t = m.wait(30)
            took = time.perf_counter() - t0
            assert t is not None and t.output == i, t
            return took
    else:
        import dask.array as da

        from vinework.dask import DaskVine

        m = DaskVine(port=0)
        extra = {"small_graph": False} if workload == "per-task" else {}

        def once(i: int) -> float:
            x = (da.ones(100, chunks=10) + i).sum()  # (built outside the timer)
            t0 = time.perf_counter()
            r = x.compute(scheduler=m.get, **extra)
            took = time.perf_counter() - t0
            assert r == 100 * (1 + i), r
            return took

    with local_workers(m, 1, cores=2):
        for i in range(warm):
            once(i)
        i = warm
        print(f"ready {vine.__file__}", flush=True)
        for line in sys.stdin:
            times = []
            for _ in range(int(line)):
                times.append(once(i))
                i += 1
            print(" ".join(f"{t:.7f}" for t in times), flush=True)
    m.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", help="the other checkout (the baseline)")
    ap.add_argument("--workload", default="small-graph",
                    choices=["small-graph", "per-task", "python-task"])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--warm", type=int, default=30)
    ap.add_argument("--side", help=argparse.SUPPRESS)  # (internal: run one side)
    a = ap.parse_args()
    if a.side:
        _side(a.workload, a.warm)
        return
    trees = [os.path.abspath(a.other), HERE]
    for tree in trees:
        if not os.path.isfile(os.path.join(tree, "vinework", "__init__.py")):
            sys.exit(f"{tree} is not a checkout of vinework")
    per = a.per_round
    sides = []
    logs = tempfile.mkdtemp(prefix="vinework-ab-")
    for k, tree in enumerate(trees):
        path = [tree, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = dict(os.environ, VINEWORK_AB_TREE=tree, PYTHONPATH=os.pathsep.join(path))
        err = open(os.path.join(logs, f"side-{k}.err"), "w")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__),
                              tree, "--side", "1", "--workload", a.workload,
                              "--warm", str(a.warm)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=err, text=True, env=env)
        err.close()
        assert p.stdout is not None and p.stdin is not None
        first = p.stdout.readline().split()
        if first[:1] != ["ready"]:
            sys.exit(f"the side of {tree} did not start; its stderr is in {err.name}")
        if not os.path.abspath(first[1]).startswith(tree + os.sep):
            sys.exit(f"the side of {tree} imported vinework from {first[1]}")
        sides.append(p)
    medians: list[list[float]] = [[], []]
    try:
        for r in range(a.rounds):
            # ABBA: each side goes first in every other round, so that what follows a
            # switch (caches, the other side's last work) falls on both alike
            for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                p = sides[k]
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write(f"{per}\n")
                p.stdin.flush()
                times = [float(x) for x in p.stdout.readline().split()]
                if not times:
                    sys.exit(f"the side of {trees[k]} stopped; its stderr is in {logs}")
                medians[k].append(statistics.median(times))
    finally:
        for p in sides:
            if p.stdin is not None:
                p.stdin.close()
        for p in sides:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"{a.workload}: {a.rounds} rounds of {per} (ABBA order), medians per round (ms)")
    for tree, ms in zip(trees, medians, strict=True):
        print(f"  {tree}: median {statistics.median(ms) * 1e3:.3f}  "
              + " ".join(f"{x * 1e3:.2f}" for x in ms))
    ratios = [b / a_ for a_, b in zip(medians[0], medians[1], strict=True)]
    faster = sum(r < 1 for r in ratios)
    print(f"this checkout / {trees[0]}: paired ratio median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}; faster in {faster} of {len(ratios)} "
          "rounds)")


if __name__ == "__main__":
    main()
