"""The small-graph path's plan (vinework/dask/plan.py): compiled from dask's graphs of
every collection, it computes dask's own values; it flattens fused subgraphs (nested
ones too) with their own keys, drops a value after its last reader, names the key
that raised, and refuses what it cannot express so the graph goes as dask's nodes."""

from __future__ import annotations

import gc
import operator
import weakref
from typing import Any

import pytest

pytest.importorskip("dask")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402
from dask._task_spec import (  # noqa: E402
    Alias,
    DataNode,
    Dict,
    GraphNode,
    List,
    Task,
    TaskRef,
    _execute_subgraph,
)

from vinework.dask.graph import rebuild_result  # noqa: E402
from vinework.dask.plan import Unplannable, compile_plan, run_plan  # noqa: E402
from vinework.dask.small import SmallGraph, run_graph  # noqa: E402


def _captured(collection: Any) -> tuple[Any, Any]:
    got: list[tuple[Any, Any]] = []

    def capture(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        got.append((dsk, keys))
        return dask.get(dsk, keys)

    dask.compute(collection, scheduler=capture)
    return got[0]


def _by_plan(dsk: Any, keys: Any) -> Any:
    sg = SmallGraph(dsk, keys, fuse=True)
    fn, args, kwargs = sg.call(sg.targets)
    assert fn is run_plan, "these graphs all have a plan"
    values, took = fn(*args, **kwargs)
    assert set(took) and all(t >= 0 for t in took.values())
    return rebuild_result(keys, values)


def _frame() -> Any:
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    df = pd.DataFrame({"k": [i % 4 for i in range(40)], "v": range(40),
                       "w": [float(i) / 3 for i in range(40)]})
    return dd.from_pandas(df, npartitions=5)


def _pairs(seq: Any) -> Any:
    return ((x % 3, x) for x in seq)  # a generator: never pickled on this path


COLLECTIONS = {
    "array sum": lambda: (da.ones(100, chunks=10) + 3).sum(),
    "array mean of squares": lambda: ((da.arange(60, chunks=7) * 2 - 1) ** 2).mean(),
    "matmul std": lambda: (da.ones((20, 20), chunks=5) @ da.arange(20, chunks=5)).std(),
    "cumsum": lambda: da.arange(30, chunks=4).cumsum(axis=0),
    "rechunk transpose": lambda: da.arange(48, chunks=5).reshape(6, 8).rechunk((4, 3)).T,
    "slices and where": lambda: da.where(da.arange(40, chunks=6) % 3 == 0, 1, -1)[5:33:2],
    "tree reduction": lambda: da.arange(200, chunks=3).sum(split_every=3),
    "bag map filter sum": lambda: db.from_sequence(range(40), npartitions=6)
    .map(lambda x: x * 3).filter(lambda x: x % 2).sum(),
    "bag generator chain": lambda: db.from_sequence(range(30), npartitions=4)
    .map_partitions(_pairs).map_partitions(lambda ps: [a * b for a, b in ps]),
    "bag frequencies": lambda: db.from_sequence("abracadabra" * 3, npartitions=3)
    .frequencies(sort=True),
    "bag fold": lambda: db.from_sequence(range(25), npartitions=5).fold(operator.add),
    "delayed containers": lambda: dask.delayed(lambda d, xs: d["a"] + sum(xs))(
        {"a": dask.delayed(operator.mul)(3, 4)},
        [dask.delayed(operator.add)(i, 1) for i in range(5)]),
    "delayed kwargs": lambda: dask.delayed(lambda x, *, scale: x * scale)(
        dask.delayed(operator.add)(1, 2), scale=dask.delayed(operator.sub)(10, 3)),
    "keyword order": lambda: dask.delayed(_keywords)(  # computed and constant, in order
        a=dask.delayed(operator.add)(1, 2), b=2, c=dask.delayed(operator.neg)(4), d=[1]),
}


def _keywords(**kwargs: Any) -> list[tuple[str, Any]]:
    return list(kwargs.items())


@pytest.mark.parametrize("name", COLLECTIONS)
def test_plans_compute_dasks_values(name: str) -> None:
    collection = COLLECTIONS[name]()
    (expected,) = dask.compute(collection, scheduler="sync")
    (got,) = dask.compute(collection, scheduler=lambda d, k, **kw: _by_plan(d, k))
    assert type(got) is type(expected)
    if hasattr(expected, "shape"):
        assert got.shape == expected.shape and (got == expected).all()
    else:
        assert got == expected


@pytest.mark.parametrize("make", [
    lambda f: f.groupby("k").v.sum(),
    lambda f: f.assign(x=f.v * 2 + f.w).x.mean(),
    lambda f: f[f.v > 10].w.max(),
], ids=["groupby-sum", "assign-mean", "filter-max"])
def test_plans_compute_dataframe_values(make: Any) -> None:
    collection = make(_frame())
    (expected,) = dask.compute(collection, scheduler="sync")
    (got,) = dask.compute(collection, scheduler=lambda d, k, **kw: _by_plan(d, k))
    if hasattr(expected, "equals"):
        assert got.equals(expected)
    else:
        assert got == expected


def _subgraph_graph() -> dict[Any, GraphNode]:
    """A graph with a fused subgraph whose inner keys shadow outer ones, a subgraph in
    a subgraph, an alias of a subgraph's output, nested tasks and containers in args
    and kwargs."""

    def boom() -> None:
        raise AssertionError("an inner node given as an input must not be evaluated")

    inner_inner = {"p": Task("p", operator.mul, TaskRef("q"), 10)}
    inner = {
        "a": Task("a", boom),  # shadowed: "a" is an input of the subgraph
        "x": Task("x", operator.add, TaskRef("a"), 100),  # the outer "x" is another node
        "n": Task("n", _execute_subgraph, inner_inner, "p", ["q"], TaskRef("x")),
        "c": Task("c", lambda n, *, extra: n + extra, TaskRef("n"),
                  extra=Task(None, operator.neg, TaskRef("x"))),
    }
    return {
        "x": DataNode("x", 5),
        "s": Task("s", _execute_subgraph, inner, "c", ["a"], TaskRef("x")),
        "al": Alias("al", "s"),
        "out": Task("out", lambda lst, d: (lst, d), List(TaskRef("al"), TaskRef("x"), 7),
                    Dict({"k": TaskRef("s"), "lit": DataNode(None, "v")})),
    }


def test_subgraphs_are_flattened_with_their_own_keys() -> None:
    dsk = _subgraph_graph()
    expected = dask.get(dsk, ["out", "al"])
    groups, outs, slots, *_ = SmallGraph(dsk, ["out", "al"], fuse=False).call(
        ["out", "al"])[1]
    values, took = run_plan(groups, outs, slots, ["out", "al"])
    assert [values["out"], values["al"]] == list(expected)
    # (5 + 100) * 10 + -(5 + 100) = 945
    assert values["al"] == 945 and values["out"] == ([945, 5, 7], {"k": 945, "lit": "v"})
    assert outs[1] == groups[1][2][-1][0], "an alias is the slot of what it names"
    assert {"s", "al", "out", "x"} <= set(took)
    assert run_graph(dict(dsk), ["out", "al"])[0] == values


class _Big:
    alive: dict[str, weakref.ref[Any]] = {}

    def __init__(self, name: str) -> None:
        _Big.alive[name] = weakref.ref(self)


def test_a_value_is_dropped_after_its_last_reader_and_a_target_is_kept() -> None:
    def seen_dead(_: Any) -> dict[str, bool]:
        gc.collect()
        return {name: r() is None for name, r in _Big.alive.items()}

    _Big.alive = {}
    dsk = {
        "big": Task("big", _Big, "big"),
        "kept": Task("kept", _Big, "kept"),
        "size": Task("size", lambda b, k: 1, TaskRef("big"), TaskRef("kept")),
        "check": Task("check", seen_dead, TaskRef("size")),
    }
    groups, outs, slots = compile_plan(dsk, ["check", "kept"])
    values, _ = run_plan(groups, outs, slots, ["check", "kept"])
    assert values["check"] == {"big": True, "kept": False}, "a value outlived its last reader"
    assert isinstance(values["kept"], _Big)


def test_the_key_that_raised_is_named() -> None:
    def bad(x: int) -> int:
        raise KeyError(f"no {x}")

    inner = {"i": Task("i", bad, TaskRef("y"))}
    dsk = {"y": DataNode("y", 3), "fused": Task("fused", _execute_subgraph, inner, "i",
                                                ["y"], TaskRef("y"))}
    plan = compile_plan(dsk, ["fused"])
    with pytest.raises(KeyError) as got:
        run_plan(*plan, ["fused"])
    assert "dask key 'fused' raised it" in "\n".join(got.value.__notes__)


def test_a_node_stored_under_another_key_takes_that_key() -> None:
    """dask-expr stores some nodes under a key that is not their own ``.key``
    (``ddf.loc[a:b]``: an Alias of a partition under ``loc-..``); dask's schedulers go by
    the graph's keys, its fusion by the node's, which lost or broke such nodes."""
    dsk = {"x": DataNode("x", 1), "y": DataNode("y", 2),
           "al": Alias("x", "x"),  # its own key is "x"; the graph's, "al"
           "out": Task("out", operator.add, TaskRef("al"), TaskRef("y")),
           "t": Task("other", operator.neg, TaskRef("out"))}
    assert dask.get(dsk, ["t"]) == (-3,)
    sg = SmallGraph(dsk, ["t"], fuse=True)
    assert all(node.key == k for k, node in sg.full.items())
    assert _by_plan(dsk, ["t"]) == [-3]
    listed = {"a": DataNode("a", 2), "l": List(TaskRef("a"), 1),  # a List's key is None
              "t": Task("t", sum, TaskRef("l"))}
    assert _by_plan(listed, ["t"]) == [3] == list(dask.get(listed, ["t"]))
    from vinework.dask.graph import DaskGraph

    as_nodes = {"x": DataNode("x", 1), "al": Alias("x", "x"),  # nodes given as they are
                "out": Task("out", operator.neg, TaskRef("al"))}
    assert DaskGraph(as_nodes, ["out"], fuse=True).targets == ["out"]
    assert as_nodes["al"].key == "x", "the caller's graph is left as it was"
    rows = _frame().loc[5:20]
    pd = pytest.importorskip("pandas")
    for collection in (rows, rows.v.sum()):
        (expected,) = dask.compute(collection, scheduler="sync")
        (got,) = dask.compute(collection, scheduler=lambda d, k, **kw: _by_plan(d, k))
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(got, expected)
        else:
            assert got == expected


def test_an_input_nothing_reads_is_freed_and_notes_that_cannot_grow_are_left() -> None:
    _Big.alive = {}
    inner = {"o": Task("o", operator.add, TaskRef("y"), 1)}
    dsk = {"y": DataNode("y", 3),
           "s": Task("s", _execute_subgraph, inner, "o", ["y", "u"], TaskRef("y"),
                     Task(None, _Big, "unread")),
           "check": Task("check", lambda v: (gc.collect(), _Big.alive["unread"]() is None)[1],
                         TaskRef("s"))}
    values, _ = run_plan(*compile_plan(dsk, ["check", "s"]), ["check", "s"])
    assert values == {"check": True, "s": 4}

    class Stubborn(Exception):
        __notes__ = ("fixed",)  # add_note refuses: the exception itself still comes

    def stubborn() -> None:
        e = Stubborn("mine")
        e.__notes__ = ("fixed",)  # type: ignore[assignment]
        raise e

    with pytest.raises(Stubborn, match="mine") as got:
        run_plan(*compile_plan({"z": Task("z", stubborn)}, ["z"]), ["z"])
    assert got.value.__notes__ == ("fixed",)


class _Odd(GraphNode):
    def __init__(self, key: Any) -> None:
        self.key = key
        self._dependencies = frozenset()

    def __call__(self, values: Any = ()) -> int:
        return 42


def test_what_a_plan_cannot_express_goes_as_dasks_nodes() -> None:
    dsk = {"odd": _Odd("odd"), "t": Task("t", operator.add, TaskRef("odd"), 1)}
    with pytest.raises(Unplannable):
        compile_plan(dsk, ["t"])
    sg = SmallGraph(dsk, ["t"], fuse=False)
    fn, args, kwargs = sg.call(["t"])
    assert fn is run_graph
    assert fn(*args, **kwargs)[0] == {"t": 43}
    unknown = {"s": Task("s", _execute_subgraph, {"i": Task("i", abs, TaskRef("z"))}, "i",
                         [], )}
    with pytest.raises(Unplannable):  # an inner reference to nothing dask would give it
        compile_plan(unknown, ["s"])
