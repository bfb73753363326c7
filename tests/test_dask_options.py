"""DaskVine.get's TaskVine options, on a real manager with one 1-core worker.

With one 1-core worker tasks run one at a time, so the order in which they
append their names to a log file is the order they were dispatched: that is
how the priority modes are observed. The pure priority policy and the option
checks that need no worker are tested first.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

from tests.conftest import poll_until, stop_process
from vinework.dask import DaskGraph, DaskVine
from vinework.dask.priority import UNKNOWN_CATEGORY_PRIORITY, TaskPriorities

# workers cannot import this test module: ship its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------- pure


def test_priorities_of_each_mode() -> None:
    def ps(mode: str, **kw: Any) -> list[float]:
        pr = TaskPriorities(mode)
        return [pr.priority(**kw) for _ in range(3)]

    fifo, lifo = ps("FIFO"), ps("LIFO")
    assert fifo == sorted(fifo, reverse=True) and lifo == sorted(lifo)  # first / last first
    assert TaskPriorities("largest-input-first").priority(input_bytes=7) == 7
    assert TaskPriorities("depth-first").priority(depth=3) > TaskPriorities(
        "depth-first").priority(depth=1)
    assert TaskPriorities("breadth-first").priority(depth=1) > TaskPriorities(
        "breadth-first").priority(depth=3)
    r = ps("random")
    assert len(set(r)) == 3 and all(0 <= p < 1 for p in r)

    for mode, slow_first in (("longest-category-first", True), ("shortest-category-first", False)):
        pr = TaskPriorities(mode)
        assert pr.priority(category="slow") == UNKNOWN_CATEGORY_PRIORITY  # unknown runs first
        pr.task_finished("slow", 2.0)
        pr.task_finished("slow", 4.0)
        pr.task_finished("fast", 0.1)
        assert pr.mean_time("slow") == 3.0
        assert (pr.priority(category="slow") > pr.priority(category="fast")) is slow_first
        assert pr.priority(category="new") == UNKNOWN_CATEGORY_PRIORITY


def test_unknown_priority_mode_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="largest-input-first.*FIFO.*LIFO"):
        TaskPriorities("fifo")


def test_importing_vinework_dask_does_not_import_dask() -> None:
    code = (
        "import sys, vinework, vinework.dask, vinework.dask_executor\n"
        "from vinework.dask import DaskVine, DaskVineTaskError\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'dask' or m.startswith('dask.'))))"
    )
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert json.loads(out) == []


def test_daskvine_without_dask_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['dask'] = None  # as if dask were not installed\n"
        "import vinework\n"
        "from vinework.dask import DaskVine\n"
        "try:\n"
        "    DaskVine(port=0)\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "ImportError:" in out and "pip install vinework[dask]" in out, out


# ---------------------------------------------------------------------- workers


def _start_worker(m: DaskVine, workdir: Path, cores: int) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "vinework", "worker", "localhost", str(m.port),
         "--cores", str(cores), "--memory", "2000", "--disk", "4000",
         "--workdir", str(workdir), "--timeout", "30"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskVine]:
    base = tmp_path_factory.mktemp("daskvine-options")
    dv = DaskVine(port=0, run_info_path=str(base / "run-info"), shutdown=True)
    p = _start_worker(dv, base / "w", cores=1)
    try:
        poll_until(lambda: dv.workers_connected == 1, 30, "the worker")
        yield dv
    finally:
        dv.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
        stop_process(p)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "order.log"


def rec(log: str, name: str, *deps: Any) -> str:
    """Append ``name`` to the log (the dispatch order, with one 1-core worker)."""
    with open(log, "a") as f:
        f.write(name + "\n")
    return name


def blob(log: str, name: str, size: int, *deps: Any) -> bytes:
    rec(log, name)
    return b"x" * size


def join(*values: Any) -> int:
    return len(values)


def slow_fn(log: str, name: str, *deps: Any) -> str:
    time.sleep(0.15)  # a task that takes time: its category's mean wall time is long
    return rec(log, name)


def fast_fn(log: str, name: str, *deps: Any) -> str:
    return rec(log, name)


def order(log: Path) -> list[str]:
    return log.read_text().split()


def test_fifo_and_lifo(m: DaskVine, log: Path) -> None:
    names = [f"t{i}" for i in range(5)]
    dsk: dict[Any, Any] = {("t", i): (rec, str(log), n) for i, n in enumerate(names)}
    dsk["all"] = (join, *[("t", i) for i in range(5)])
    ready = [f"t{k[1]}" for k in DaskGraph(dsk, "all").ready_keys()]  # the order they are ready

    assert m.get(dsk, "all", task_priority_mode="FIFO") == 5
    assert order(log) == ready
    log.unlink()
    assert m.get(dsk, "all", task_priority_mode="LIFO") == 5
    assert order(log) == ready[::-1]


def _chains(log: Path) -> dict[Any, Any]:
    dsk: dict[Any, Any] = {}
    for c in "abc":
        dsk[("s", c)] = (rec, str(log), f"s{c}")
        dsk[("t", c)] = (rec, str(log), f"t{c}", ("s", c))
        dsk[("u", c)] = (rec, str(log), f"u{c}", ("t", c))
    return dsk


def test_depth_first_and_breadth_first(m: DaskVine, log: Path) -> None:
    dsk = _chains(log)
    targets = [("u", c) for c in "abc"]
    # breadth first: every source, then every second level, then the third
    m.get(dsk, targets, task_priority_mode="breadth-first", fuse=False)
    assert [n[0] for n in order(log)] == list("sssttt" "uuu")
    log.unlink()
    # depth first: each chain to its end before the next source starts (one task
    # submitted at a time, so a task that just became ready competes with the rest)
    m.get(dsk, targets, task_priority_mode="depth-first", max_pending=1,
          fuse=False)  # chains unfused: the order of their links is what is checked
    got = order(log)
    assert [n[0] for n in got] == list("stu" "stu" "stu")
    assert all(len({n[1] for n in got[i:i + 3]}) == 1 for i in (0, 3, 6)), got


def test_largest_input_first(m: DaskVine, log: Path) -> None:
    def graph(sizes: dict[str, int]) -> dict[Any, Any]:
        dsk: dict[Any, Any] = {"root": (rec, str(log), "r")}
        for n, size in sizes.items():
            dsk[("m", n)] = (blob, str(log), f"m{n}", size, "root")
        dsk["gate"] = (join, *[("m", n) for n in sizes])  # the c's become ready together
        for n in sizes:
            dsk[("c", n)] = (rec, str(log), f"c{n}", ("m", n), "gate")
        dsk["out"] = (join, *[("c", n) for n in sizes])
        return dsk

    # give the biggest input to the consumer that would be ready last (FIFO), so the
    # order largest-input-first picks differs from the order they became ready
    g = DaskGraph(graph({n: 1 for n in "123"}), "out")
    fifo = sorted("123", key=lambda n: g.priority(("c", n)))
    sizes = dict(zip(fifo, (1_000, 50_000, 300_000), strict=True))
    assert m.get(graph(sizes), "out") == 3  # largest-input-first is the default
    got = [n for n in order(log) if n.startswith("c")]
    assert got == [f"c{n}" for n in sorted(sizes, key=sizes.__getitem__, reverse=True)]


@pytest.mark.parametrize("mode", ["longest-category-first", "shortest-category-first"])
def test_category_modes(m: DaskVine, log: Path, mode: str) -> None:
    dsk: dict[Any, Any] = {
        ("s", 0): (slow_fn, str(log), "s0"),
        ("f", 0): (fast_fn, str(log), "f0"),
        "gate": (join, ("s", 0), ("f", 0)),  # the categories' times are known once it is done
    }
    for i in (1, 2):
        dsk[("s", i)] = (slow_fn, str(log), f"s{i}", "gate")
        dsk[("f", i)] = (fast_fn, str(log), f"f{i}", "gate")
    dsk["out"] = (join, ("s", 1), ("s", 2), ("f", 1), ("f", 2))
    assert m.get(dsk, "out", task_priority_mode=mode) == 4
    after = [n[0] for n in order(log)[2:]]
    assert after == (list("ssff") if mode == "longest-category-first" else list("ffss"))


def test_random_priority_mode(m: DaskVine, log: Path) -> None:
    dsk: dict[Any, Any] = {("t", i): (rec, str(log), f"t{i}") for i in range(6)}
    dsk["all"] = (join, *dsk)
    assert m.get(dsk, "all", task_priority_mode="random") == 6
    assert sorted(order(log)) == [f"t{i}" for i in range(6)]


class Flaky(RuntimeError):
    pass


def flaky(attempts_dir: str, failures: int) -> str:
    """Fail on the first ``failures`` calls (counted by files in attempts_dir)."""
    n = len(os.listdir(attempts_dir))
    Path(attempts_dir, f"attempt-{n}").touch()
    if n < failures:
        raise Flaky(f"call {n + 1} fails")
    return f"ok after {n + 1}"


def test_retries_rerun_a_failing_function(m: DaskVine, tmp_path: Path) -> None:
    d = tmp_path / "attempts"
    d.mkdir()
    dsk = {"x": (flaky, str(d), 2), "y": (operator.add, "x", "!")}
    assert m.get(dsk, "y", retries=3) == "ok after 3!"
    assert len(os.listdir(d)) == 3


def test_retries_exhausted_raise_the_task_exception(m: DaskVine, tmp_path: Path) -> None:
    d = tmp_path / "attempts"
    d.mkdir()
    with pytest.raises(Flaky, match="call 2 fails") as info:
        m.get({"x": (flaky, str(d), 99)}, "x", retries=2)
    assert len(os.listdir(d)) == 2
    assert "flaky" in info.value.remote_traceback  # type: ignore[attr-defined]
    assert any("failed permanently" in n for n in getattr(info.value, "__notes__", []))
    d2 = tmp_path / "default"
    d2.mkdir()
    dsk = {"x": (flaky, str(d2), 99), ("y", 0): (slow_fn, str(tmp_path / "log"), "y")}
    with pytest.raises(Flaky):
        m.get(dsk, ["x", ("y", 0)])
    assert len(os.listdir(d2)) == 5  # TaskVine's default: 5 attempts
    assert m.empty()  # whatever was left of that get was cancelled and collected


def test_the_users_own_tasks_are_left_for_the_user(m: DaskVine) -> None:
    import vinework as vine

    mine = vine.PythonTask(operator.add, 20, 22)
    m.submit(mine)
    assert m.get({"x": (operator.mul, 6, 7)}, "x") == 42
    t = m.wait(30)
    assert t is mine and t.output == 42


def test_checkpoint_fn_gets_taskvines_dag(m: DaskVine) -> None:
    dsk = {
        "a": (operator.add, 1, 1), "b": (operator.mul, "a", 10), "c": (operator.add, "a", "b"),
        "d": (operator.neg, "c"), "z": 5, "f": (operator.add, "z", "d"), "al": "b",
        "g": (operator.neg, "al"), "e": (operator.add, "d", "al"),
    }
    seen: dict[Any, tuple[int, set[Any], set[Any]]] = {}

    def checkpoint(dag: Any, key: Any) -> bool:
        seen[key] = (dag.depth_of(key), set(dag.get_dependencies(key)),
                     set(dag.get_needed_by(key)))
        return key == "c" and keep[0]  # bring c back to the manager

    sent = []
    keep = [False]
    for keep[0] in (False, True):
        before = m.stats.bytes_sent
        assert m.get(dsk, ["f", "g", "e"], checkpoint_fn=checkpoint,
                     fuse=False) == [-17, -20, -2]
        sent.append(m.stats.bytes_sent - before)
    # kept at the manager, c is uploaded again for d (a temp would have stayed put)
    assert sent[1] > sent[0], sent
    assert seen == {  # asked for each intermediate task, before submitting it
        "a": (0, set(), {"b", "c"}),
        "b": (1, {"a"}, {"c", "al"}),
        "c": (1, {"a", "b"}, {"d"}),
        "d": (2, {"c"}, {"f", "e"}),
    }


def test_every_taskvine_option_is_accepted(m: DaskVine, tmp_path: Path) -> None:
    calls: list[tuple[str, Any]] = []
    wrapped: list[Any] = []
    dsk = {("x", i): (operator.mul, i, 2) for i in range(4)}
    dsk["s"] = (join, *dsk)  # type: ignore[assignment]
    with pytest.warns(DeprecationWarning, match="lazy_transfers"):
        r = m.get(
            dsk, "s", environment=None, extra_files={m.declare_buffer(b"hi"): "extra.txt"},
            worker_transfers=True, env_vars={"A": "1", "B": lambda mgr, t: "2"},
            checkpoint_fn=lambda dag, key: False, resources={"cores": 1, "memory": 100},
            resources_mode="fixed", submit_per_cycle=2, max_pending=3, retries=2,
            verbose=False, lib_extra_functions=[join], lib_resources={"cores": 1, "slots": 1},
            lib_command="true", lib_modules=[np], task_mode="tasks",
            task_priority_mode="FIFO", scheduling_mode="files", env_per_task=False,
            progress_disable=True, reconstruct=True, merge_size=3, progress_label="dask",
            wrapper=None, wrapper_proc=print, prune_depth=1, hoisting_modules=["json"],
            import_modules=math, lazy_transfers=True, low_memory_mode=True,
            init_command="true",
        )
    assert r == 4
    assert m.status("manager")[0]["framework"] == "dask"  # set by every get
    assert {"numpy", "json", "math"} <= m._dask_hoisted
    # the wrapper runs each task; its first result goes to wrapper_proc at the manager
    r = m(dsk, [("x", 3)], wrapper=lambda key, fn, *a: (key, fn(*a)), wrapper_proc=wrapped.append)
    assert r == [6] and wrapped == [("x", 3)]
    # the manager-wide settings TaskVine's get makes, when the manager has them
    real_set_scheduler = m.set_scheduler

    def set_scheduler(mode: str) -> None:
        calls.append(("scheduler", mode))
        real_set_scheduler(mode)

    m.set_property = lambda k, v: calls.append(("property", (k, v)))  # type: ignore[attr-defined]
    m.set_scheduler = set_scheduler  # type: ignore[method-assign]
    try:
        assert m.get(dsk, "s", scheduling_mode="worst") == 4
        assert m.get(dsk, "s") == 4
        assert m.get(dsk, "s") == 4  # the scheduler is already "files": not set again
    finally:
        del m.set_property, m.set_scheduler  # type: ignore[attr-defined]
    assert calls == [("property", ("framework", "dask")), ("scheduler", "worst"),
                     ("property", ("framework", "dask")), ("scheduler", "files"),
                     ("property", ("framework", "dask"))]


def test_option_errors(m: DaskVine) -> None:
    dsk = {"x": (operator.add, 1, 2)}
    # as dask's own schedulers: a keyword get does not use is ignored, with a warning
    with pytest.warns(UserWarning, match="ignores keyword.*no_such_option"):
        assert m.get(dsk, "x", no_such_option=1) == 3
    with pytest.warns(UserWarning, match="no_such_option"):
        assert m(dsk, "x", no_such_option=1) == 3
    with pytest.raises(ValueError, match="task_priority_mode 'fifo'.*largest-input-first"):
        m.get(dsk, "x", task_priority_mode="fifo")
    with pytest.raises(ValueError, match="scheduling_mode 'fast'.*files, time, rand, worst, disk"):
        m.get(dsk, "x", scheduling_mode="fast")
    with pytest.raises(ValueError, match="task_mode"):
        m.get(dsk, "x", task_mode="threads")
    with pytest.raises(NotImplementedError, match="environment"):
        m.get(dsk, "x", environment="env.tar.gz")
    with pytest.raises(NotImplementedError, match="env_per_task"):
        m.get(dsk, "x", env_per_task=True)
    with pytest.raises(ValueError, match="retries"):
        m.get(dsk, "x", retries=-1)
    # the old meaning of scheduling_mode: a priority mode, with a warning
    with pytest.warns(DeprecationWarning, match="task_priority_mode"):
        assert m.get(dsk, "x", scheduling_mode="LIFO") == 3
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="conflicting"):
        m.get(dsk, "x", scheduling_mode="LIFO", task_priority_mode="FIFO")

