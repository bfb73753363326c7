"""The small-graph path's pieces, in this process: evaluating dask's fused subgraphs in
dependency order (without dask.order), as a plan or as dask's nodes, gives dask's own
values, and the payload takes the plain C pickler only when nothing in it must be
pickled by value."""

from __future__ import annotations

import pickle
import sys
import types
from typing import Any

import pytest

pytest.importorskip("dask")

import cloudpickle  # noqa: E402
import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402
from dask._task_spec import Task, _execute_subgraph  # noqa: E402

from vinework.dask.plan import run_plan  # noqa: E402
from vinework.dask.small import SmallGraph, _plain_payload, _subgraph, run_graph  # noqa: E402
from vinework.pickling import loads_call  # noqa: E402


def _captured(collection: Any) -> tuple[Any, Any]:
    """The graph and keys dask hands a scheduler for ``collection.compute()``."""
    got: list[tuple[Any, Any]] = []

    def capture(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        got.append((dsk, keys))
        return dask.get(dsk, keys)

    collection.compute(scheduler=capture)
    return got[0]


def _worker_side(sg: SmallGraph, as_nodes: bool = False
                 ) -> tuple[dict[Any, object], dict[str, float]]:
    """Ship the graph as the task would (its payload) and run it as the worker does
    (``as_nodes``: as dask's nodes, the path of a graph that has no plan)."""
    call = (run_graph, (sg.nodes, sg.targets), {}) if as_nodes else sg.call(sg.targets)
    payload = _plain_payload(call)
    if payload is None:
        payload = cloudpickle.dumps(call)
    fn, args, kwargs = loads_call(payload)
    assert fn is call[0]
    return fn(*args, **kwargs)  # type: ignore[no-any-return]


@pytest.mark.parametrize("make", [
    lambda: (da.ones(100, chunks=10) + 3).sum(),
    lambda: ((da.arange(60, chunks=7) * 2 - 1) ** 2).mean(),
    lambda: (da.ones((20, 20), chunks=5) @ da.arange(20, chunks=5)).std(),
    lambda: db.from_sequence(range(40), npartitions=6).map(lambda x: x * 3)
    .filter(lambda x: x % 2).sum(),
])
@pytest.mark.parametrize("as_nodes", [False, True], ids=["plan", "nodes"])
def test_fused_subgraphs_give_dasks_values(make: Any, as_nodes: bool) -> None:
    collection = make()
    expected = collection.compute(scheduler="sync")
    dsk, keys = _captured(collection)
    sg = SmallGraph(dsk, keys, fuse=True)
    values, took = _worker_side(sg, as_nodes)
    (key,) = sg.targets
    assert values[key] == pytest.approx(expected)
    assert took and all(t >= 0 for t in took.values())


@pytest.mark.parametrize("as_nodes", [False, True], ids=["plan", "nodes"])
def test_the_array_graph_has_fused_subgraphs_and_they_skip_dask_order(as_nodes: bool) -> None:
    dsk, keys = _captured((da.ones(100, chunks=10) + 1).sum())
    sg = SmallGraph(dsk, keys, fuse=True)
    fused = [n for n in sg.nodes.values()
             if type(n) is Task and n.func is _execute_subgraph]
    assert fused, "dask's optimization should leave fused blockwise subgraphs here"
    calls: list[int] = []
    import dask.order

    real = dask.order.order

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    dask.order.order = counting  # type: ignore[assignment]
    try:
        values, _ = _worker_side(sg, as_nodes)
    finally:
        dask.order.order = real  # type: ignore[assignment]
    assert values[sg.targets[0]] == 200
    assert calls == []  # dask's execute_graph would order every subgraph


def test_subgraph_drops_inputs_after_their_last_reader_and_checks_arity() -> None:
    inner = {"b": Task("b", lambda a: a + 1, _ref("a")),
             "c": Task("c", lambda a, b: a * b, _ref("a"), _ref("b"))}
    assert _subgraph(inner, "c", ["a"], 4) == 20
    with pytest.raises(ValueError):
        _subgraph(inner, "c", ["a"], 4, 5)


def _ref(key: str) -> Any:
    from dask._task_spec import TaskRef

    return TaskRef(key)


def test_plain_payload_only_when_nothing_is_by_value() -> None:
    dsk, keys = _captured((da.ones(10, chunks=5) + 1).sum())
    sg = SmallGraph(dsk, keys, fuse=True)
    data = _plain_payload(sg.call(sg.targets))
    assert data is not None
    assert loads_call(data)[0] is run_plan

    def local(x: int) -> int:  # a local function: only cloudpickle can ship it
        return x + 1

    nodes = {"x": Task("x", local, 1)}
    assert _plain_payload((run_graph, (nodes, ["x"]), {})) is None
    assert _plain_payload(SmallGraph(nodes, ["x"], fuse=True).call(["x"])) is None

    main = types.ModuleType("__main__")  # a function of __main__ pickles by name plainly
    exec("def twice(x):\n    return 2 * x\n", main.__dict__)
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = main
    try:
        nodes = {"y": Task("y", main.twice, 3)}
        assert b"__main__" in pickle.dumps(nodes)  # the plain pickle names it...
        assert _plain_payload((run_graph, (nodes, ["y"]), {})) is None  # ...so by value
        assert _plain_payload(SmallGraph(nodes, ["y"], fuse=True).call(["y"])) is None
    finally:
        sys.modules["__main__"] = saved


def test_plain_payload_refuses_a_module_registered_by_value(tmp_path: Any) -> None:
    (tmp_path / "vw_by_value_mod.py").write_text("def inc(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import vw_by_value_mod  # type: ignore[import-not-found]

        nodes = {"z": Task("z", vw_by_value_mod.inc, 1)}
        call = SmallGraph(nodes, ["z"], fuse=True).call(["z"])
        assert _plain_payload(call) is not None
        cloudpickle.register_pickle_by_value(vw_by_value_mod)
        try:
            assert _plain_payload(call) is None
        finally:
            cloudpickle.unregister_pickle_by_value(vw_by_value_mod)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("vw_by_value_mod", None)
