"""DaskVine on real worker processes: results match dask's sync scheduler.

One DaskVine (port 0) with two 2-core workers serves the whole module; the
worker-loss test adds a third worker and kills it by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest

from tests.conftest import poll_until, stop_process
from vinework.dask import DaskVine

# workers cannot import this test module: ship its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")


def _start_worker(m: DaskVine, workdir: Path, cores: int = 2) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "vinework", "worker", "localhost", str(m.port),
         "--cores", str(cores), "--memory", "2000", "--disk", "4000",
         "--workdir", str(workdir), "--timeout", "30"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def dv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaskVine, Path]]:
    base = tmp_path_factory.mktemp("daskvine")
    m = DaskVine(port=0, run_info_path=str(base / "run-info"), shutdown=True)
    procs = [_start_worker(m, base / f"w{i}") for i in range(2)]
    try:
        poll_until(lambda: m.workers_connected == 2, 30, "2 workers")
        yield m, base
    finally:
        m.close()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
            stop_process(p)


@pytest.fixture
def m(dv: tuple[DaskVine, Path]) -> DaskVine:
    return dv[0]


def _sync(x: Any) -> Any:
    return dask.compute(x, scheduler="sync")[0]


def test_seed_usage_config_and_keyword(m: DaskVine) -> None:
    x = da.arange(1000, chunks=100)
    y = (x * 2 + 1).sum()
    with dask.config.set(scheduler=m.get):
        assert y.compute() == _sync(y)
    assert y.compute(scheduler=m.get, worker_transfers=False) == _sync(y)


def test_array_ops(m: DaskVine) -> None:
    rng = da.random.default_rng(42)
    x = rng.random((120, 80), chunks=(30, 40))
    exprs = {
        "elementwise": np.sin(x) + x**2,
        "sum": x.sum(axis=0),
        "mean": x.mean(),
        "matmul": x @ x.T,
        "rechunk": x.rechunk((60, 20)) + 1,
    }
    got = dask.compute(exprs, scheduler=m.get)[0]
    want = _sync(exprs)
    for name in exprs:
        np.testing.assert_allclose(got[name], want[name], err_msg=name)


def test_bag_ops(m: DaskVine) -> None:
    b = db.from_sequence(range(100), npartitions=7)
    exprs = (
        b.map(lambda v: v * 3).filter(lambda v: v % 2 == 0),
        b.fold(lambda a, v: a + v, lambda a, c: a + c, initial=0),
        b.foldby(lambda v: v % 5, lambda a, v: a + v, 0),
        b.groupby(lambda v: v % 3, shuffle="tasks"),  # disk: see test_disk_shuffle_...
    )
    got = dask.compute(*exprs, scheduler=m.get)
    want = dask.compute(*exprs, scheduler="sync")
    assert list(got[0]) == list(want[0])
    assert got[1] == want[1]
    assert sorted(got[2]) == sorted(want[2])
    assert sorted((k, sorted(v)) for k, v in got[3]) == sorted((k, sorted(v)) for k, v in want[3])


def test_dataframe_groupby_and_merge(m: DaskVine) -> None:
    left = pd.DataFrame({"k": np.arange(200) % 7, "v": np.arange(200.0)})
    right = pd.DataFrame({"k": np.arange(7), "w": np.arange(7) * 10})
    a = dd.from_pandas(left, npartitions=4)
    b = dd.from_pandas(right, npartitions=2)
    agg = a.groupby("k").v.agg(["sum", "mean", "count"])
    merged = a.merge(b, on="k")
    with dask.config.set({"dataframe.shuffle.method": "tasks"}):  # what a cluster needs
        got_agg, got_merged = dask.compute(agg, merged, scheduler=m.get)
    want_agg, want_merged = dask.compute(agg, merged, scheduler="sync")
    pd.testing.assert_frame_equal(got_agg.sort_index(), want_agg.sort_index())
    cols = ["k", "v", "w"]
    pd.testing.assert_frame_equal(
        got_merged.sort_values(cols).reset_index(drop=True),
        want_merged.sort_values(cols).reset_index(drop=True),
    )


def _plus_one(v: int) -> int:
    return v + 1


def test_delayed_nested_and_tuple_keys(m: DaskVine) -> None:
    @dask.delayed
    def inc(v: int) -> int:
        return v + 1

    @dask.delayed
    def combine(d: dict[str, Any]) -> int:
        return sum(d["xs"]) + d["y"][0]

    xs = [inc(i) for i in range(5)]
    out = combine({"xs": xs, "y": [inc(10), "z"]})
    structure = {"a": [xs[0], (xs[1], {"b": out})]}
    assert dask.compute(structure, scheduler=m.get) == dask.compute(structure, scheduler="sync")
    # a hand-written graph with tuple keys and nested key lists
    dsk = {("x", 0): 1, ("x", 1): (_plus_one, ("x", 0)), "s": (sum, [("x", 0), ("x", 1)])}
    assert m.get(dsk, [["s"], ("x", 1)]) == [[3], 2]


def test_persist_and_compute_many(m: DaskVine) -> None:
    x = da.ones((50, 50), chunks=10)
    b = db.from_sequence(range(10), npartitions=3).map(lambda v: v * v)
    (xp,) = dask.persist(x + 1, scheduler=m.get)
    np.testing.assert_array_equal(xp.compute(scheduler="sync"), np.full((50, 50), 2.0))
    s, total, lst = dask.compute(x.sum(), b.sum(), b, scheduler=m.get)
    assert s == 2500 and total == 285 and list(lst) == [v * v for v in range(10)]


class Boom(ValueError):
    pass


def _explode(v: int) -> int:
    raise Boom(f"bad value {v}")


def test_task_exception_is_raised(m: DaskVine) -> None:
    # raised after its retries (TaskVine's retries=5; counted in test_dask_options)
    x = dask.delayed(_explode)(dask.delayed(abs)(-3))
    with pytest.raises(Boom, match="bad value 3") as info:
        x.compute(scheduler=m.get)
    assert "_explode" in info.value.remote_traceback  # type: ignore[attr-defined]


def test_disk_shuffle_without_a_shared_directory_runs_as_one_task(
        dv: tuple[DaskVine, Path]) -> None:
    """Dask's default shuffle without a distributed client is "disk", in a partd store in
    the temporary directory of the task that makes it: the graph runs as one task (with a
    warning saying how to get one task per node), and one task per node is refused."""
    m, base = dv
    b = db.from_sequence(range(20), npartitions=3)
    left = dd.from_pandas(pd.DataFrame({"k": np.arange(20) % 3, "v": 1.0}), npartitions=2)
    with dask.config.set({"dataframe.shuffle.method": "disk"}):
        bag_groups = b.groupby(lambda v: v % 3)
        before = m.stats.tasks_submitted
        with pytest.warns(UserWarning, match="disk shuffle.*one task on one worker.*'tasks'"):
            got = bag_groups.compute(scheduler=m.get)
        assert m.stats.tasks_submitted == before + 1
        assert sorted((k, sorted(v)) for k, v in got) == [
            (r, list(range(r, 20, 3))) for r in range(3)]
        merged = left.merge(left, on="k")
        with pytest.warns(UserWarning, match="disk shuffle"):
            assert len(merged.compute(scheduler=m.get)) == len(merged.compute(scheduler="sync"))
        with pytest.raises(ValueError, match="disk shuffle.*one task per node.*'tasks'"):
            bag_groups.compute(scheduler=m.get, small_graph=False)
        with pytest.raises(ValueError, match="disk shuffle"):
            bag_groups.compute(scheduler=m.get, prune_depth=1)
    # in a directory every worker sees (here: the same machine), the disk shuffle works
    shared = base / "shared-tmp"
    shared.mkdir(exist_ok=True)
    with dask.config.set({"dataframe.shuffle.method": "disk", "temporary_directory": str(shared)}):
        got = b.groupby(lambda v: v % 3).compute(scheduler=m.get)
    assert sorted((k, sorted(v)) for k, v in got) == [
        (r, list(range(r, 20, 3))) for r in range(3)]


def _chunk(i: int) -> Any:
    return np.random.default_rng(i).random(1_000_000)  # 8 MB


def _total(chunks: list[Any]) -> float:
    return float(sum(c.sum() for c in chunks))


def test_worker_transfers_keep_intermediates_on_workers(m: DaskVine) -> None:
    y = dask.delayed(_total)([dask.delayed(_chunk)(i) for i in range(8)])
    before = m.stats.bytes_received
    r1 = y.compute(scheduler=m.get, worker_transfers=True)
    mid = m.stats.bytes_received
    r2 = y.compute(scheduler=m.get, worker_transfers=False)
    after = m.stats.bytes_received
    assert r1 == pytest.approx(r2)
    lazy, eager = mid - before, after - mid
    assert eager > 60_000_000, eager
    assert lazy < eager / 100, (lazy, eager)


def test_unknown_keyword_and_function_calls(m: DaskVine) -> None:
    x = da.ones(10, chunks=5).sum()
    # dask forwards compute()'s extra keywords to the scheduler: ignored, one warning
    with pytest.warns(UserWarning, match="no_such_option, other_option") as caught:
        assert x.compute(scheduler=m.get, no_such_option=1, other_option=2) == 10
    assert len([w for w in caught if "ignores keyword" in str(w.message)]) == 1
    with pytest.raises(NotImplementedError, match="lib_command"):
        x.compute(scheduler=m.get, task_mode="function-calls", lib_command="serve")
    # TaskVine options accepted as documented no-ops / aliases
    with pytest.warns(DeprecationWarning):
        assert x.compute(scheduler=m.get, lazy_transfers=True, resources_mode="fixed",
                         low_memory_mode=True, scheduling_mode="LIFO", submit_per_cycle=2,
                         max_pending=3, progress_disable=True) == 10


def _slow_inc(v: float) -> float:
    time.sleep(0.2)
    return v + 1


def test_survives_worker_loss(dv: tuple[DaskVine, Path]) -> None:
    m, base = dv
    p = _start_worker(m, base / "victim")
    try:
        poll_until(lambda: m.workers_connected == 3, 30, "the third worker")
        layer = [dask.delayed(_slow_inc)(float(i)) for i in range(24)]
        layer2 = [dask.delayed(_slow_inc)(v) for v in layer]
        total = dask.delayed(sum)(layer2)

        def kill_soon() -> None:
            time.sleep(1.0)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_soon)
        killer.start()
        try:
            assert total.compute(scheduler=m.get) == sum(range(24)) + 48
        finally:
            killer.join()
        assert p.poll() is not None  # the worker really died mid-compute
    finally:
        stop_process(p)
