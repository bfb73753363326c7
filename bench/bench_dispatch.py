"""Dispatch throughput: 1,000 trivial command tasks and 1,000 trivial PythonTasks (warm
executors, then forked children), one 2-core worker.

Bars from the issues (TaskVine built on this machine kind): 474 command tasks/s and
42 PythonTasks/s. Run: ``python bench/bench_dispatch.py [N]``.
"""

from __future__ import annotations

import sys
import tempfile
import time

from common import drain, local_workers

import vinework as vine

TASKVINE_COMMAND_RATE = 474.0
TASKVINE_PYTHON_RATE = 42.0


def trivial(x: int) -> int:
    return x + 1


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as tmp, vine.Manager(port=0, run_info_path=tmp) as m:
        with local_workers(m, 1, cores=2):
            # warm up the worker (first fork server start)
            for i in range(20):
                t = vine.PythonTask(trivial, i)
                t.set_cores(1)
                m.submit(t)
            drain(m, 20)
            start = time.perf_counter()
            for _ in range(n):
                t = vine.Task("true")
                t.set_cores(1)
                m.submit(t)
            drain(m, n)
            cmd_rate = n / (time.perf_counter() - start)
            start = time.perf_counter()
            for i in range(n):
                t = vine.PythonTask(trivial, i)
                t.set_cores(1)
                m.submit(t)
            done = drain(m, n)
            py_rate = n / (time.perf_counter() - start)
            assert sorted(t.output for t in done) == list(range(1, n + 1))
            start = time.perf_counter()
            for i in range(n):
                t = vine.PythonTask(trivial, i)
                t.set_cores(1)
                t.set_exec_mode("fork")
                m.submit(t)
            drain(m, n)
            fork_rate = n / (time.perf_counter() - start)
    print(f"command tasks:  {cmd_rate:8.0f} tasks/s   TaskVine {TASKVINE_COMMAND_RATE:.0f}/s   "
          f"ratio {cmd_rate / TASKVINE_COMMAND_RATE:.2f}x (goal >= 2x)")
    print(f"python tasks:   {py_rate:8.0f} tasks/s   TaskVine {TASKVINE_PYTHON_RATE:.0f}/s   "
          f"ratio {py_rate / TASKVINE_PYTHON_RATE:.2f}x (goal >= 10x)")
    print(f"python, forked: {fork_rate:8.0f} tasks/s   TaskVine {TASKVINE_PYTHON_RATE:.0f}/s   "
          f"ratio {fork_rate / TASKVINE_PYTHON_RATE:.2f}x (a fresh child per call)")


if __name__ == "__main__":
    main()
