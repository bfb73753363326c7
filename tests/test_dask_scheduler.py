"""DaskVine as a Dask scheduler, on real worker processes: dask's scheduler contract (extra
keywords, literal-only keys, linear chains fused, every collection through
``dask.config.set(scheduler=m.get)``), isolation of runs, small graphs as one task,
the bytes that cross the manager's link, and checkpointing and pruning seen on the
workers and at the manager.

One DaskVine (port 0) with two 2-core workers serves the module.
"""

from __future__ import annotations

import contextlib
import os
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
from dask import delayed

import vinework as vine
from tests.conftest import poll_until, stop_process
from vinework.dask import DaskVine

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def dv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaskVine, list[Path]]]:
    base = tmp_path_factory.mktemp("dasksched")
    m = DaskVine(port=0, shutdown=True)
    dirs = [base / f"w{i}" for i in range(2)]
    procs = []
    for d in dirs:
        d.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vinework", "worker", "localhost", str(m.port),
             "--cores", "2", "--memory", "2000", "--disk", "4000", "--workdir", str(d),
             "--timeout", "30"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
    try:
        poll_until(lambda: m.workers_connected == 2, 30, "2 workers")
        yield m, dirs
    finally:
        m.close()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
            stop_process(p)


@pytest.fixture
def m(dv: tuple[DaskVine, list[Path]]) -> DaskVine:
    return dv[0]


def _sync(x: Any) -> Any:
    return dask.compute(x, scheduler="sync")[0]


class Opaque:
    """A literal dask should not look into (``delayed(obj, traverse=False)``)."""

    def __init__(self) -> None:
        self.items = [1, 2, 3]


def test_literal_only_keys_are_the_objects_themselves(m: DaskVine) -> None:
    obj = Opaque()
    before = m.stats.tasks_submitted
    assert delayed(obj, traverse=False).compute(scheduler=m.get) is obj
    assert m.get({"a": obj, "b": "a"}, ["a", ["b"]]) == [obj, [obj]]
    assert m.get({"a": obj}, ["a"])[0] is obj
    assert m.stats.tasks_submitted == before  # answered at the manager: no task at all


def _squares(n: int) -> Any:
    return (i * i for i in range(n))


def _plus_one(part: list[int]) -> Any:
    return (v + 1 for v in part)


def test_linear_chains_run_in_one_task_so_generators_work(m: DaskVine) -> None:
    x = delayed(sum)(delayed(_squares)(10))
    before = m.stats.tasks_submitted
    assert x.compute(scheduler=m.get, small_graph=False) == 285
    assert m.stats.tasks_submitted - before == 1  # the chain is one task
    with pytest.raises(TypeError, match="generator"):  # unfused, the generator must travel
        x.compute(scheduler=m.get, fuse=False, small_graph=False, retries=1)
    b = db.from_sequence(range(10), npartitions=2).map_partitions(_plus_one) \
        .map_partitions(sum)
    (want,) = dask.compute(b, scheduler="sync", optimize_graph=False)
    before = m.stats.tasks_submitted
    (got,) = dask.compute(b, scheduler=m.get, optimize_graph=False, small_graph=False)
    assert got == want == [15, 40]
    # per partition from_sequence -> map_partitions -> map_partitions fused into one task,
    # then the one that gathers both (unfused: 2 x 3 + 1)
    assert m.stats.tasks_submitted - before == 3


def _boom(v: float) -> float:
    if v > 2:
        raise ZeroDivisionError(f"no {v}")
    return v


@pytest.mark.parametrize("small", [False, True])
def test_every_collection_through_config(m: DaskVine, small: bool) -> None:
    arr = (da.arange(200, chunks=20).reshape(10, 20).T @ da.ones((10, 3), chunks=5)).sum(axis=0)
    bag = db.from_sequence(range(30), npartitions=3).map(lambda v: v * 3).filter(
        lambda v: v % 2).frequencies()
    df = dd.from_pandas(pd.DataFrame({"k": [i % 3 for i in range(60)], "v": range(60)}),
                        npartitions=4)
    frame = df.groupby("k").v.sum()
    dl = delayed(sum)([delayed(lambda v: v * v)(i) for i in range(6)])
    rows = df.loc[5:20]  # dask-expr stores an Alias under a key that is not its own
    want = [_sync(c) for c in (arr, bag, frame, dl, rows, rows.v.sum())]
    with dask.config.set(scheduler=m.get):  # (dask warns when mixing dataframes in)
        got = [*dask.compute(arr, bag, small_graph=small), frame.compute(small_graph=small),
               dl.compute(small_graph=small), rows.compute(small_graph=small),
               rows.v.sum().compute(small_graph=small)]
    np.testing.assert_array_equal(got[0], want[0])
    assert sorted(got[1]) == sorted(want[1])
    pd.testing.assert_series_equal(got[2], want[2])
    assert got[3] == want[3]
    pd.testing.assert_frame_equal(got[4], want[4])
    assert len(got[4]) == 16 and got[5] == want[5] == sum(range(5, 21))
    bad = delayed(sum)([delayed(_boom)(float(i)) for i in range(4)])
    with dask.config.set(scheduler=m.get), pytest.raises(ZeroDivisionError, match="no 3.0"):
        bad.compute(small_graph=small, retries=1)


def test_small_graph_is_one_task_and_slow_kinds_are_not(m: DaskVine) -> None:
    def graph(i: int) -> Any:
        return (da.ones(100, chunks=10) + i).sum()

    # a one-task run learns what each kind of node costs (measured inside the task, so
    # not inflated by the machine's load, as the usual path's per-task wall times are)
    assert graph(0).compute(scheduler=m.get, small_graph=True) == 100
    before = m.stats.tasks_submitted
    for i in range(2, 5):
        assert graph(i).compute(scheduler=m.get) == 100 * (1 + i)
    assert m.stats.tasks_submitted - before == 3  # known quick kinds: one task per compute
    before = m.stats.tasks_submitted
    assert graph(9).compute(scheduler=m.get, small_graph=False) == 1000
    assert m.stats.tasks_submitted - before > 5  # the usual path: a task per node

    def slow_layer() -> Any:
        return delayed(sum)([delayed(_nap)(i) for i in range(6)])

    for _ in range(2):  # 50 ms per task: above the small-graph limit, never one task
        before = m.stats.tasks_submitted
        assert slow_layer().compute(scheduler=m.get) == 15
        assert m.stats.tasks_submitted - before == 7


def _nap(i: int) -> int:
    time.sleep(0.05)
    return i


def _slow(v: int, delay: float) -> int:
    time.sleep(delay)
    return v + 1


def _layers(seed: int, width: int, depth: int, delay: float) -> Any:
    level = [delayed(_slow)(seed + i, delay) for i in range(width)]
    for _ in range(depth - 1):
        level = [delayed(_slow)(v, delay) for v in level]
        level = [delayed(lambda a, b: a + b)(level[i], level[(i + 1) % width])
                 for i in range(width)]
    return delayed(sum)(level)


@pytest.mark.parametrize("small", [False, True])
def test_users_tasks_finishing_during_a_run_stay_the_users(m: DaskVine, small: bool) -> None:
    mine = vine.PythonTask(_slow, 41, 0.3)
    m.submit(mine)
    x = _layers(0, 4, 3, 0.1)
    assert x.compute(scheduler=m.get, small_graph=small) == _sync(x)
    got = m.wait(30)
    assert got is mine and got.output == 42
    assert m.wait(0) is None  # nothing of the run was left behind


@pytest.mark.parametrize("small", [False, True])
def test_a_plain_wait_in_another_thread_takes_none_of_a_runs_tasks(m: DaskVine,
                                                                   small: bool) -> None:
    """The other direction: the user's thread collects its own tasks with ``m.wait()``
    while a compute runs; it took the run's tasks, and the compute never finished. With
    only the run's tasks left, a plain wait returns None and empty() is True."""
    x = _layers(0, 4, 3, 0.1)
    want = _sync(x)
    mine = [vine.PythonTask(_slow, i, 0.2) for i in range(3)]
    for t in mine:
        m.submit(t)
    got: list[vine.Task] = []
    started = threading.Event()

    def user() -> None:
        started.set()
        deadline = time.monotonic() + 60
        while len(got) < len(mine) and time.monotonic() < deadline:
            t = m.wait(1)
            if t is not None:
                got.append(t)
        # nothing of the user's is left: a plain wait (no timeout) returns at once and
        # empty() holds, though the run's tasks may still be in flight
        during.append((m.wait(), m.empty()))

    result: list[Any] = []
    during: list[tuple[Any, bool]] = []
    th = threading.Thread(target=user)
    th.start()
    started.wait(10)
    result.append(x.compute(scheduler=m.get, small_graph=small))
    th.join(60)
    assert result == [want]
    assert sorted(t.id for t in got) == sorted(t.id for t in mine)
    assert sorted(t.output for t in got) == [1, 2, 3]
    assert during == [(None, True)]


@pytest.mark.parametrize("small", [False, True])
def test_two_threads_on_one_daskvine_get_their_own_results(m: DaskVine, small: bool) -> None:
    graphs = [_layers(100 * j, 4, 3, 0.05) for j in range(2)]
    want = [_sync(g) for g in graphs]
    got: list[Any] = [None, None]
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=30)

    def run(j: int) -> None:
        try:
            start.wait()
            got[j] = graphs[j].compute(scheduler=m.get, small_graph=small)
        except BaseException as e:  # noqa: BLE001  (re-raised below, in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(j,)) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert got == want and want[0] != want[1]


def test_threads_computing_equal_values_at_once_lose_nothing(m: DaskVine) -> None:
    """The same array graph from three threads, every value through the manager: equal
    values are buffers of one name (cumsum's zero blocks too), declared and undeclared
    by the three runs at once; none may lose another's input or file."""
    x = da.from_array(np.arange(900.0).reshape(30, 30), chunks=10)
    graph = ((x @ x.T).sum(axis=1), x.cumsum(axis=0)[::7])
    want = dask.compute(*graph, scheduler="sync")
    for _ in range(2):
        got: list[Any] = [None] * 3
        start = threading.Barrier(3, timeout=30)

        def run(j: int, got: list[Any] = got, start: threading.Barrier = start) -> None:
            try:
                start.wait()
                got[j] = dask.compute(*graph, scheduler=m.get, small_graph=False,
                                      worker_transfers=False)
            except BaseException as e:  # noqa: BLE001  (checked below, in the test's thread)
                got[j] = e

        threads = [threading.Thread(target=run, args=(j,)) for j in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        for out in got:
            assert isinstance(out, tuple), out
            assert all(np.array_equal(a, b) for a, b in zip(out, want, strict=True))


def _blob(i: int, n: int) -> bytes:
    return np.random.default_rng(i).bytes(n)


def _mix(a: bytes, b: bytes) -> int:
    return len(a) + len(b)


def test_intermediates_cross_the_manager_only_without_worker_transfers(m: DaskVine) -> None:
    n = 300_000
    parts = [delayed(_blob)(i, n) for i in range(4)]
    total = delayed(sum)([delayed(_mix)(parts[i], parts[(i + 1) % 4]) for i in range(4)])
    moved = {}
    for wt in (False, True):
        s0 = m.stats
        assert total.compute(scheduler=m.get, worker_transfers=wt, small_graph=False) == 8 * n
        s1 = m.stats
        moved[wt] = {k: getattr(s1, k) - getattr(s0, k) for k in (
            "bytes_received", "bytes_received_inline", "bytes_received_files", "bytes_sent",
            "bytes_peer")}
        assert moved[wt]["bytes_received"] == \
            moved[wt]["bytes_received_inline"] + moved[wt]["bytes_received_files"]
    print("worker_transfers=False:", moved[False], "\nworker_transfers=True:", moved[True])
    # without: each 300 kB intermediate comes back (inside its completion message) and is
    # uploaded again to the tasks reading it
    assert moved[False]["bytes_received"] >= 4 * n
    assert moved[False]["bytes_sent"] >= 4 * n
    # with: only the small results come back, nothing is uploaded; the blobs go peer to peer
    # when a reader runs on the other worker
    assert moved[True]["bytes_received"] < 10_000
    assert moved[True]["bytes_sent"] < 10_000


def _cache_entries(dirs: list[Path]) -> int:
    return len(_cache_names(dirs))


def _cache_names(dirs: list[Path]) -> set[tuple[str, str]]:
    return {(d.name, n) for d in dirs if (d / "cache").is_dir() for n in os.listdir(d / "cache")}


def test_checkpoint_brings_values_back_and_prune_deletes_them_during_the_run(
        dv: tuple[DaskVine, list[Path]]) -> None:
    m, dirs = dv
    before = _cache_names(dirs)
    n = 200_000
    a = [delayed(_blob)(i, n) for i in range(4)]
    b = [delayed(lambda x, y: x[: n // 2] + y[: n // 2])(a[i], a[(i + 1) % 4]) for i in range(4)]
    c = [delayed(_mix)(b[i], b[(i + 1) % 4]) for i in range(4)]
    total = delayed(sum)(c)
    a_keys = {x.key for x in a}
    b_keys = {x.key for x in b}
    c_keys = {x.key for x in c}

    # checkpoint: the b values (200 kB each) come back to the manager; the a values do not
    received = {}
    for chosen in (set(), b_keys):
        asked: list[Any] = []
        s0 = m.stats.bytes_received

        def pick(dag: Any, key: Any, chosen: set[Any] = chosen, asked: list[Any] = asked) -> bool:
            asked.append(key)
            return key in chosen

        assert total.compute(scheduler=m.get, checkpoint_fn=pick) == 4 * 2 * n
        received[bool(chosen)] = m.stats.bytes_received - s0
        assert set(asked) == a_keys | b_keys | c_keys  # asked for every intermediate
    assert received[True] - received[False] >= 4 * n, received
    assert received[False] < 10_000, received

    # prune_depth=1: when a c task is submitted, every b it needs is done, so the a values
    # (read only by b tasks) are already deleted -- at the manager and on the workers
    seen: dict[int, list[tuple[int, int]]] = {}
    for depth in (0, 1):
        seen[depth] = []
        # every run undeclares what it made at its end: let the workers finish deleting
        # the earlier runs' files, so that the count below is this run's alone
        poll_until(lambda: _cache_names(dirs) <= before, 20, "earlier runs' files deleted")
        p0 = m.stats.files_pruned
        entries0 = _cache_entries(dirs)

        def watch(dag: Any, key: Any, depth: int = depth, p0: int = p0,
                  entries0: int = entries0) -> bool:
            if key in c_keys:
                seen[depth].append((m.stats.files_pruned - p0, _cache_entries(dirs) - entries0))
            return False

        assert total.compute(scheduler=m.get, checkpoint_fn=watch, prune_depth=depth) == 8 * n
    assert all(pruned == 0 for pruned, _ in seen[0]), seen
    # the last c task is submitted after all four b's: by then all four a's are pruned
    assert max(pruned for pruned, _ in seen[1]) >= 4, seen
    # and, by the time the last layer is asked about, the workers' caches hold fewer
    # entries than without pruning (earlier looks race the workers' deletions)
    assert seen[1][-1][1] < seen[0][-1][1], seen


def _inc(v: int) -> int:
    return v + 1


@pytest.mark.parametrize("small", [None, True])
def test_bad_graphs_raise_clear_errors(m: DaskVine, small: bool | None) -> None:
    before = m.stats.tasks_submitted
    with pytest.raises(ValueError, match="cycle"):
        m.get({"a": (_inc, "b"), "b": (_inc, "a")}, "a", small_graph=small)
    with pytest.raises(KeyError, match="requested key 'zz'"):
        m.get({"a": 1}, "zz", small_graph=small)
    with pytest.raises(TypeError, match="cannot interpret str"):
        m.get("not a graph", "a", small_graph=small)
    assert m.stats.tasks_submitted == before


class CodeError(Exception):
    """An exception whose ``__init__`` takes other arguments than its ``.args`` holds."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"{code}: {why}")
        self.code = code


def _raise_code(v: int) -> None:
    raise CodeError(v, "refused")


def _exit(v: int) -> None:
    sys.exit(v)


class Halt(BaseException):
    """A BaseException that is not an Exception (as KeyboardInterrupt is)."""


def _halt(v: int) -> None:
    raise Halt(f"halt {v}")


@pytest.mark.parametrize("mode", [{"small_graph": True}, {"small_graph": False},
                                  {"task_mode": "function-calls"}],
                         ids=["small", "tasks", "function-calls"])
def test_exceptions_come_back_as_their_own_type(m: DaskVine, mode: dict[str, Any]) -> None:
    """As under dask's sync scheduler: an exception whose ``__init__`` does not take its
    ``.args`` keeps its type, message and attributes, ``sys.exit`` is SystemExit and a
    BaseException of the user's is itself (in a library too, which stays up)."""
    with pytest.raises(CodeError) as info:
        delayed(_raise_code)(delayed(abs)(-4)).compute(scheduler=m.get, retries=1, **mode)
    assert str(info.value) == "4: refused" and info.value.code == 4
    with pytest.raises(SystemExit) as ended:
        delayed(_exit)(delayed(abs)(-3)).compute(scheduler=m.get, retries=1, **mode)
    assert ended.value.code == 3
    with pytest.raises(Halt, match="halt 5"):
        delayed(_halt)(delayed(abs)(-5)).compute(scheduler=m.get, retries=1, **mode)
    assert delayed(_inc)(1).compute(scheduler=m.get, **mode) == 2  # and on it goes


def _die(v: int) -> None:
    os._exit(v)


def test_a_task_that_fails_without_raising_is_a_daskvine_task_error(m: DaskVine) -> None:
    """A task whose process dies raises nothing of its own: after its attempts the
    compute raises DaskVineTaskError naming the key and the result (it raised the
    PythonTaskNoResult of the last attempt)."""
    from vinework.dask import DaskVineTaskError

    x = delayed(_die)(delayed(abs)(-7), dask_key_name="dies")
    with pytest.raises(DaskVineTaskError,
                       match=r"dies' failed permanently after 2 attempt\(s\): .*process died"):
        x.compute(scheduler=m.get, retries=2, small_graph=False)


def test_run_graph_evaluates_in_order_and_names_the_failing_key() -> None:
    from dask._task_spec import convert_legacy_graph

    from vinework.dask.small import run_graph

    nodes = convert_legacy_graph({"n": 5, "g": (_squares, "n"), "s": (sum, "g"),
                                  "t": (_inc, "s"), "u": "t"})
    values, took = run_graph(nodes, ["u", "s"])
    assert values == {"u": 31, "s": 30}
    assert set(took) == {"n", "g", "s", "t", "u"} and all(v >= 0 for v in took.values())
    bad = convert_legacy_graph({"x": 1, "y": (_boom, 3.0)})
    with pytest.raises(ZeroDivisionError) as info:
        run_graph(bad, ["y", "x"])
    assert any("'y'" in n for n in getattr(info.value, "__notes__", []))
