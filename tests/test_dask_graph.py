"""Tests for vinework.dask.graph: pure bookkeeping of Dask graphs."""

from __future__ import annotations

import operator
from collections import deque
from typing import Any

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask._task_spec import Alias, DataNode, Dict, List, Task, TaskRef
from dask.local import get_sync

from vinework.dask.graph import (
    KIND_ALIAS,
    KIND_DATA,
    KIND_TASK,
    DaskGraph,
    execute_node,
    flatten_keys,
    modules_of_graph,
    normalize_graph,
    rebuild_result,
)


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def const(x: Any) -> Any:
    return x


def run(graph: DaskGraph, prune_depth: int = 0, ship: bool = True) -> tuple[Any, dict]:
    """Execute a DaskGraph in-process purely through its public API.

    Pruned results are deleted from the store, so a premature prune makes a
    later task fail with KeyError.
    """
    store: dict[Any, Any] = dict(graph.local_data())
    queue = deque(graph.ready_keys())
    while queue:
        key = queue.popleft()
        node, deps = graph.task_payload(key)
        if ship:
            node = cloudpickle.loads(cloudpickle.dumps(node))
        store[key] = execute_node(node, {d: store[d] for d in deps})
        queue.extend(graph.mark_done(key))
        for p in graph.prunable_after(key, prune_depth):
            del store[p]
    assert graph.done()
    assert graph.succeeded()
    assert graph.remaining() == 0
    return graph.result(store.__getitem__), store


def make_capture_get(records: list, **graph_kwargs: Any):
    """A custom dask scheduler running the in-process loop above."""

    def get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        records.append((dsk, keys))
        graph = DaskGraph(dsk, keys, **graph_kwargs)
        result, _ = run(graph, prune_depth=1)
        return result

    return get


def diamond() -> dict:
    return {"a": 1, "b": (inc, "a"), "c": (double, "a"), "d": (operator.add, "b", "c")}


def chain_graph() -> dict:
    return {"a": (const, 1), "b": (inc, "a"), "c": (inc, "b"), "d": (inc, "c")}


def task_diamond() -> dict:
    return {
        "a": (const, 1),
        "b": (inc, "a"),
        "c": (double, "a"),
        "d": (operator.add, "b", "c"),
    }


# -- graph forms -------------------------------------------------------------


def test_legacy_diamond() -> None:
    g = DaskGraph(diamond(), ["d"])
    assert g.kind("a") == KIND_DATA and g.kind("d") == KIND_TASK
    assert g.dependencies("d") == {"b", "c"}
    assert g.dependents("a") == {"b", "c"}
    assert g.targets == ["d"]
    assert g.is_target("d") and not g.is_target("b")
    assert g.ready_keys() == sorted(["b", "c"], key=g.priority)  # 'a' is data: done
    assert g.state("a") == "done" and g.state("b") == "ready" and g.state("d") == "waiting"
    assert g.remaining() == 3
    result, _ = run(g)
    assert result == [get_sync(diamond(), "d")] == [4]


def test_legacy_nested_args_tuple_keys_and_nested_keys() -> None:
    dsk = {
        ("x", 0): 1,
        ("x", 1): (inc, ("x", 0)),
        "s": (sum, [("x", 0), ("x", 1), (inc, ("x", 1))]),
        "pair": (tuple, [("x", 1), "s"]),
        "al": ("x", 1),  # alias written as a bare key
        "unused": (inc, "s"),
    }
    keys: Any = [["s", "pair"], [("x", 1), "al"]]
    g = DaskGraph(dsk, keys)
    assert "unused" not in g  # culled
    assert g.kind("al") == KIND_ALIAS and g.storage_key("al") == ("x", 1)
    assert g.targets == ["s", "pair", ("x", 1), "al"]
    result, _ = run(g)
    expected = get_sync(dsk, keys)
    assert result == [list(r) for r in expected] == [[6, (2, 6)], [2, 2]]
    computed: dict[Any, Any] = {"s": 6, "pair": (2, 6), ("x", 1): 2}
    assert g.result(computed.__getitem__, container=tuple) == expected


def test_task_spec_graph() -> None:
    dsk = {
        "data": DataNode("data", [1, 2, 3]),
        "t": Task("t", sum, TaskRef("data")),
        "al": Alias("al", "t"),
        "al2": Alias("al2", "al"),
        "nested": Task(
            "nested",
            const,
            List(TaskRef("al2"), Dict(k=TaskRef("t"), lit=5)),
        ),
        "kw": Task("kw", dict, a=TaskRef("al"), b=List(TaskRef("data"))),
    }
    g = DaskGraph(dsk, ["nested", "kw", "al2"])
    assert g.storage_key("al2") == "t"
    assert g.is_target("t")  # storage of a requested alias
    assert g.state("al2") == "ready"  # "t" only reads data
    node, deps = g.task_payload("nested")
    assert deps == ["t"]  # alias references rewritten to the storage key
    assert execute_node(node, {"t": 6}) == [6, {"k": 6, "lit": 5}]
    result, _ = run(g)
    assert result == [[6, {"k": 6, "lit": 5}], {"a": 6, "b": [[1, 2, 3]]}, 6]
    assert g.state("al2") == "done"


def test_alias_only_target_and_data_only_graph() -> None:
    g = DaskGraph({"x": DataNode("x", 7), "y": Alias("y", "x")}, "y")
    assert g.done() and g.succeeded() and g.ready_keys() == []
    assert g.result(lambda k: pytest.fail("no fetch needed")) == 7


def test_data_as_tasks() -> None:
    g = DaskGraph(diamond(), ["d"], data_as_tasks=True)
    assert g.kind("a") == KIND_TASK and g.local_data() == {}
    assert g.ready_keys() == ["a"]
    result, _ = run(g)
    assert result == [4]


def test_dask_array_hlg_with_nested_keys() -> None:
    x = da.ones((40, 40), chunks=10) + da.arange(40, chunks=10)
    keys = x.__dask_keys__()
    assert isinstance(keys[0], list)  # nested per dimension
    g = DaskGraph(x.__dask_graph__(), keys)  # a HighLevelGraph
    result, _ = run(g)
    assert np.array_equal(np.block(result), x.compute(scheduler="sync"))


def test_dask_array_expression_is_accepted() -> None:
    x = (da.ones((100, 100), chunks=10) + 1).sum()
    records: list = []
    (value,) = dask.compute(x, scheduler=make_capture_get(records))
    assert value == dask.compute(x, scheduler="sync")[0] == 20000.0
    ((dsk, keys),) = records
    assert not isinstance(dsk, dict) and not hasattr(dsk, "items")  # an expression
    assert type(dsk).__name__ == "_HLGExprSequence"
    graph = normalize_graph(dsk)
    assert all(k in graph for k in keys)
    assert set(modules_of_graph(dsk)) >= {"dask", "numpy"}
    # unoptimized graph (contains legacy tuples) works too
    (value2,) = dask.compute(x, scheduler=make_capture_get([]), optimize_graph=False)
    assert value2 == 20000.0


def test_dask_array_prune_depths_keep_results_correct() -> None:
    x = (da.ones((60, 60), chunks=10) + da.arange(60, chunks=10)).sum(axis=0)
    expected = x.compute(scheduler="sync")
    for depth in (0, 1, 2, 3):
        g = DaskGraph(x.__dask_graph__(), x.__dask_keys__())
        result, store = run(g, prune_depth=depth)
        assert np.array_equal(np.concatenate(result), expected)
        if depth == 1:  # everything except the targets was freed
            assert set(store) == {g.storage_key(t) for t in g.targets}
        if depth == 0:
            assert len(store) == len(g.local_data()) + sum(g.kind(k) == KIND_TASK for k in g.nodes)


def test_dask_bag() -> None:
    b = db.from_sequence(range(20), npartitions=4).map(lambda v: v * 3).filter(lambda v: v % 2)
    records: list = []
    assert b.compute(scheduler=make_capture_get(records)) == b.compute(scheduler="sync")
    total = b.sum()
    assert total.compute(scheduler=make_capture_get(records)) == total.compute(scheduler="sync")
    assert all(not isinstance(dsk, dict) for dsk, _ in records)


def test_dask_delayed_nested_args_and_tuple_keys() -> None:
    @dask.delayed
    def combine(items: list, extra: dict | None = None) -> Any:
        return (items, extra)

    x = dask.delayed(inc)(1, dask_key_name=("inc", 0))
    y = dask.delayed(double)(x, dask_key_name=("double", 0))
    z = combine([x, {"k": y, "lit": 3}], extra={"z": [x, (y, 2)]}, dask_key_name=("comb", 1))
    # directly from the HLG, with tuple keys
    g = DaskGraph(z.__dask_graph__(), z.__dask_keys__())
    assert g.targets == [("comb", 1)]
    assert g.dependencies(("comb", 1)) == {("inc", 0), ("double", 0)}
    result, _ = run(g)
    assert result == [z.compute(scheduler="sync")]
    # through dask.compute with several outputs in nested python structures
    records: list = []
    out = dask.compute([x, {"q": z}], y, scheduler=make_capture_get(records))
    assert out == dask.compute([x, {"q": z}], y, scheduler="sync")


def test_dask_dataframe_mixed_legacy_and_data_nodes() -> None:
    dd = pytest.importorskip("dask.dataframe")
    pdf = pd.DataFrame({"a": range(40), "b": list("abcd") * 10})
    df = dd.from_pandas(pdf, npartitions=4)
    records: list = []
    res = df.groupby("b").a.sum().compute(scheduler=make_capture_get(records))
    pd.testing.assert_series_equal(res, df.groupby("b").a.sum().compute(scheduler="sync"))
    filt = df[df.a > 7]
    pd.testing.assert_frame_equal(
        filt.compute(scheduler=make_capture_get(records)), filt.compute(scheduler="sync")
    )
    assert {type(d).__name__ for d, _ in records} == {"_ExprSequence"}
    g = DaskGraph(*records[0])
    assert any(g.kind(k) == KIND_DATA for k in g.nodes)  # from_pandas partitions
    assert set(modules_of_graph(g)) >= {"dask", "pandas"}


def test_persist() -> None:
    x = da.ones((20, 20), chunks=10) + 1
    b = db.from_sequence(range(6), npartitions=2).map(inc)
    records: list = []
    px, pb = dask.persist(x, b, scheduler=make_capture_get(records))
    ((dsk, keys),) = records
    assert type(dsk).__name__ == "_HLGExprSequence" and isinstance(keys, list)
    assert np.array_equal(px.compute(scheduler="sync"), x.compute(scheduler="sync"))
    assert pb.compute(scheduler="sync") == [1, 2, 3, 4, 5, 6]


# -- pruning -----------------------------------------------------------------


def test_prune_chain() -> None:
    g = DaskGraph(chain_graph(), ["d"])
    assert g.mark_done("a") == ["b"]
    assert g.prunable_after("a", 1) == []
    g.mark_done("b")
    assert g.prunable_after("b", 1) == ["a"]
    assert g.prunable_after("b", 2) == []
    g.mark_done("c")
    assert g.prunable_after("c", 1) == ["b"]
    assert g.prunable_after("c", 2) == []  # 'a' already returned at depth 1
    g.mark_done("d")
    assert g.prunable_after("d", 1) == ["c"]
    assert g.prunable_after("d", 0) == []

    g2 = DaskGraph(chain_graph(), ["d"])
    for key, expected in (("a", []), ("b", []), ("c", ["a"]), ("d", ["b", "c"])):
        g2.mark_done(key)
        assert sorted(g2.prunable_after(key, 2)) == expected


def test_prune_diamond_and_targets_protected() -> None:
    g = DaskGraph(task_diamond(), ["d"])
    g.mark_done("a")
    g.mark_done("b")
    assert g.prunable_after("b", 1) == []  # 'c' still needs 'a'
    g.mark_done("c")
    assert g.prunable_after("c", 1) == ["a"]
    g.mark_done("d")
    assert sorted(g.prunable_after("d", 1)) == ["b", "c"]

    g = DaskGraph(task_diamond(), ["d", "b"])
    pruned = []
    for key in ("a", "b", "c", "d"):
        g.mark_done(key)
        pruned += g.prunable_after(key, 1)
    assert pruned == ["a", "c"]

    # data keys are pruned too (drop the uploaded copy), aliases never
    dsk = {**diamond(), "e": Alias("e", "d"), "f": (inc, "e")}
    g = DaskGraph(normalize_graph(dsk), ["f"])
    seen = []
    for key in ("b", "c", "d", "f"):
        g.mark_done(key)
        seen += g.prunable_after(key, 1)
    assert sorted(seen) == ["a", "b", "c", "d"]
    assert seen[0] == "a"


def test_prune_depth_counts_levels_not_keys() -> None:
    # a feeds b and d; b -> c -> d. Depth 2 from 'a' covers b, c and d.
    dsk = {"a": (const, 1), "b": (inc, "a"), "c": (inc, "b"), "d": (operator.add, "a", "c")}
    g = DaskGraph(dsk, ["d"])
    g.mark_done("a")
    g.mark_done("b")
    assert g.prunable_after("b", 2) == []
    g.mark_done("c")
    assert g.prunable_after("c", 2) == []
    g.mark_done("d")
    assert sorted(g.prunable_after("d", 2)) == ["a", "b", "c"]


# -- failures and errors -----------------------------------------------------


def test_failure_propagation() -> None:
    g = DaskGraph(task_diamond(), ["d"])
    assert g.ready_keys() == ["a"]
    g.mark_done("a")
    assert g.mark_failed("b") == ["b", "d"]
    assert g.state("d") == "failed"
    assert g.failed_keys() == sorted(["b", "d"], key=g.priority)
    assert g.ready_keys() == ["c"]
    assert not g.done() and g.remaining() == 1
    assert g.mark_done("c") == []  # 'd' cannot run any more
    assert g.done() and not g.succeeded()
    assert g.mark_failed("d") == []  # already failed
    with pytest.raises(ValueError):
        g.mark_done("d")
    with pytest.raises(ValueError):
        g.mark_failed("a")  # already done
    assert g.prunable_after("c", 1) == []  # 'a' still has a failed dependent


def test_errors() -> None:
    g = DaskGraph(task_diamond(), ["d"])
    with pytest.raises(ValueError, match="not ready"):
        g.mark_done("d")
    with pytest.raises(KeyError):
        g.mark_done("nope")
    with pytest.raises(ValueError, match="not done"):
        g.prunable_after("b", 1)
    g.mark_done("a")
    assert g.mark_done("a") == []  # duplicate completion is harmless
    with pytest.raises(KeyError):
        DaskGraph(task_diamond(), ["zzz"])
    with pytest.raises(ValueError, match="not in the graph"):
        DaskGraph({"x": Task("x", inc, TaskRef("missing"))}, ["x"])
    with pytest.raises(ValueError, match="cycle"):
        DaskGraph({"x": (inc, "y"), "y": (inc, "x")}, ["x"])
    with pytest.raises(ValueError, match="alias"):
        DaskGraph({"x": Alias("x", "y"), "y": Alias("y", "x")}, ["x"])
    g = DaskGraph({**diamond(), "e": "d"}, ["e"])
    with pytest.raises(ValueError, match="alias"):
        g.mark_done("e")
    with pytest.raises(ValueError):
        g.task_payload("a")  # data, not a task
    with pytest.raises(TypeError):
        normalize_graph(42)
    with pytest.raises(TypeError):
        execute_node("not a node", {})  # type: ignore[arg-type]


# -- helpers -----------------------------------------------------------------


def test_flatten_and_rebuild() -> None:
    keys = [[("x", 0, 0), ("x", 0, 1)], [("x", 1, 0), "s"]]
    assert flatten_keys(keys) == [("x", 0, 0), ("x", 0, 1), ("x", 1, 0), "s"]
    assert flatten_keys(("x", 0)) == [("x", 0)]
    values = {k: i for i, k in enumerate(flatten_keys(keys))}
    assert rebuild_result(keys, values) == [[0, 1], [2, 3]]
    assert rebuild_result(keys, values, container=tuple) == ((0, 1), (2, 3))
    assert rebuild_result(("x", 1, 0), values) == 2


def test_normalize_graph_forms() -> None:
    legacy = normalize_graph(diamond())
    assert isinstance(legacy["a"], DataNode) and isinstance(legacy["d"], Task)
    x = da.ones((20, 20), chunks=10) + 1
    from_hlg = normalize_graph(x.__dask_graph__())
    from_collection = normalize_graph(x)
    assert set(from_hlg) == set(from_collection) == set(x.__dask_graph__().keys())
    assert set(flatten_keys(x.__dask_keys__())) <= set(from_hlg)
    original = diamond()
    normalize_graph(original)
    assert original == diamond()  # input untouched


def test_modules_of_graph() -> None:
    def local_fn(v: Any) -> Any:
        return v

    dsk = {
        "arr": np.arange(3),
        "df": (pd.DataFrame, {"a": [1, 2]}),
        "f": (local_fn, "arr"),
        "op": (operator.add, 1, 2),
    }
    mods = modules_of_graph(dsk)
    assert {"dask", "numpy", "pandas"} <= set(mods)
    assert "operator" not in mods and "builtins" not in mods
    assert mods == sorted(mods)
    # inc/double live in this test module, which a worker must import too
    assert set(modules_of_graph(DaskGraph(diamond(), ["d"]))) == {"dask", __name__.split(".")[0]}
    assert modules_of_graph({"x": (operator.add, 1, 2)}) == ["dask"]


def test_order_options_give_same_result() -> None:
    x = (da.arange(30, chunks=5) ** 2).sum()
    keys = x.__dask_keys__()
    a = run(DaskGraph(x.__dask_graph__(), keys, use_dask_order=True))[0]
    b = run(DaskGraph(x.__dask_graph__(), keys, use_dask_order=False))[0]
    assert a == b == [x.compute(scheduler="sync")]


def test_fused_subgraph_reading_an_alias() -> None:
    t1 = Task("f1", operator.add, TaskRef("al"), 1)
    t2 = Task("f2", operator.mul, TaskRef("f1"), TaskRef("al"))
    dsk = {
        "src": Task("src", int, "5"),
        "al": Alias("al", "src"),
        "f2": Task.fuse(t1, t2, key="f2"),
    }
    g = DaskGraph(dsk, ["f2"])
    node, deps = g.task_payload("f2")
    assert deps == ["src"]
    assert execute_node(node, {"src": 5}) == 30
    assert run(g)[0] == [30] == list(get_sync(dsk, ["f2"]))


# -- TaskVine's DaskVineDag queries (what checkpoint_fn's dag answers) -----------

def _known_graph() -> dict[Any, Any]:
    """a -> b -> c <- a, c -> d, literal z, alias al -> b, and three targets."""
    return {
        "a": (inc, 1),
        "b": (inc, "a"),
        "c": (operator.add, "a", "b"),
        "d": (inc, "c"),
        "z": 5,
        "f": (operator.add, "z", "d"),
        "al": "b",
        "g": (inc, "al"),
        "e": (operator.add, "d", "al"),
    }


def test_dag_dependencies_and_needed_by() -> None:
    g = DaskGraph(_known_graph(), ["f", "g", "e"])
    assert g.get_dependencies("a") == frozenset()
    assert g.get_dependencies("c") == {"a", "b"}
    assert g.get_dependencies("g") == {"al"}  # as written: the alias, not its target
    assert g.get_dependencies("al") == {"b"}
    assert g.get_children("c") == g.get_dependencies("c")  # TaskVine's older name
    assert g.get_needed_by("a") == {"b", "c"}
    assert g.get_needed_by("b") == {"c", "al"}
    assert g.get_needed_by("al") == {"g", "e"}
    assert g.get_needed_by("d") == {"f", "e"}
    assert g.get_needed_by("z") == {"f"}
    assert g.get_needed_by("f") == frozenset()
    assert g.input_keys("g") == {"b"}  # what the payload reads: the alias's target


def test_dag_depth_is_taskvines_shallowest_level() -> None:
    g = DaskGraph(_known_graph(), ["f", "g", "e"])
    # sources (no dependencies, literal data) are 0; otherwise 1 + the smallest
    # depth among the dependencies; an alias has its target's depth
    want = {"a": 0, "z": 0, "b": 1, "c": 1, "al": 1, "d": 2, "f": 1, "g": 2, "e": 2}
    assert {k: g.depth_of(k) for k in want} == want
    with pytest.raises(KeyError):
        g.depth_of("nope")


def test_dag_depth_of_a_chain_is_its_position() -> None:
    dsk: dict[Any, Any] = {("x", 0): (inc, 0)}
    for i in range(1, 50):
        dsk[("x", i)] = (inc, ("x", i - 1))
    g = DaskGraph(dsk, [("x", 49)])
    assert [g.depth_of(("x", i)) for i in range(50)] == list(range(50))


def test_private_disk_shuffles() -> None:
    b = db.from_sequence(range(20), npartitions=3)
    df = dd.from_pandas(pd.DataFrame({"k": np.arange(20) % 3, "v": 1.0}), npartitions=2)

    def shuffles(x: Any) -> list[Any]:
        opt = x.optimize() if hasattr(x, "optimize") else dask.optimize(x)[0]
        return DaskGraph(opt.__dask_graph__(), opt.__dask_keys__()).private_disk_shuffles()

    with dask.config.set({"dataframe.shuffle.method": "disk"}):
        assert len(shuffles(b.groupby(inc))) == 1
        assert len(shuffles(df.merge(df, on="k"))) == 1
        with dask.config.set({"temporary_directory": "/shared/tmp"}):
            assert shuffles(b.groupby(inc)) == []
            assert shuffles(df.merge(df, on="k")) == []
    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        assert shuffles(b.groupby(inc)) == []
        assert shuffles(df.merge(df, on="k")) == []
    assert shuffles(b.map(inc).sum()) == []
