"""Tests for vinework.dask.payload: cheap per-task payloads, same values as the node."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
from dask._task_spec import Alias, DataNode, Dict, List, Set, Task, TaskRef, Tuple

from vinework.dask.graph import DaskGraph, execute_node
from vinework.dask.payload import CannotEncode, PayloadEncoder, evaluate


def run_payload(payload: bytes, values: dict[Any, object], where: Path,
                monkeypatch: pytest.MonkeyPatch, dep_keys: list[Any]) -> Any:
    """Do what the worker does: unpickle (fn, args, kwargs), inputs d0.. in the cwd, call."""
    for i, k in enumerate(dep_keys):
        (where / f"d{i}").write_bytes(cloudpickle.dumps(values[k]))
    monkeypatch.chdir(where)
    fn, args, kwargs = cloudpickle.loads(payload)
    return fn(*args, **kwargs)


def test_nodes_of_every_container_kind_evaluate_like_dask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = TaskRef("a"), TaskRef("b")
    nodes = [
        Task("t1", operator.add, a, 1),
        Task("t2", sorted, List(b, a, 0)),
        Task("t3", len, Set(a, b)),
        Task("t4", tuple, Tuple(a, b)),
        Task("t5", dict, Dict({"x": a, "y": (1, 2)})),
        Task("t6", max, a, b, key=operator.neg),
        Task("t7", operator.add, Task("inner", operator.mul, a, 3), DataNode(None, 10)),
        Task("t8", list, [1, 2, 3]),
        Task("t9", sum, List(Alias("a"), Alias("b"))),  # as legacy graphs make for keys in lists
    ]
    values = {"a": 4, "b": 7}
    enc = PayloadEncoder()
    for node in nodes:
        deps = sorted(node.dependencies)
        want = execute_node(node, values)
        e, table = enc.encode(node)
        assert table == [] and evaluate(e, values, table) == want
        assert run_payload(enc.payload(node, deps), values, tmp_path, monkeypatch, deps) == want
    assert enc.table_size == 0  # all importable: nothing pickled by value


def test_by_value_functions_go_to_the_table_once(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    offset = 100
    def local_inc(v: int) -> int:  # a closure: cloudpickle pickles it by value
        return v + offset

    enc = PayloadEncoder()
    payloads = [enc.payload(Task(("inc", i), local_inc, i), []) for i in range(50)]
    assert enc.table_size == 1
    assert len({len(p) for p in payloads}) <= 2  # the function is not re-pickled into each
    assert run_payload(payloads[7], {}, tmp_path, monkeypatch, []) == 107
    lam = lambda v: v * 2  # noqa: E731
    p = enc.payload(Task("x", lam, TaskRef("a")), ["a"])
    assert enc.table_size == 2
    assert run_payload(p, {"a": 21}, tmp_path, monkeypatch, ["a"]) == 42


def test_a_payload_carries_only_the_functions_its_node_calls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph of distinct lambdas (``[delayed(lambda i: ...)(i) for ...]``): every
    payload carried a table of all the run's functions so far (time and memory grew with
    the square of the graph)."""
    enc = PayloadEncoder()
    lambdas = [(lambda v, k=k: v + k) for k in range(1500)]
    payloads = [enc.payload(Task(("f", k), f, 1), []) for k, f in enumerate(lambdas)]
    assert enc.table_size == 1500
    assert max(len(p) for p in payloads) < 2 * min(len(p) for p in payloads)
    assert run_payload(payloads[1234], {}, tmp_path, monkeypatch, []) == 1235


def test_what_only_cloudpickle_can_carry_is_refused() -> None:
    class Local:
        pass

    enc = PayloadEncoder()
    with pytest.raises(CannotEncode):
        enc.payload(Task("x", id, Local()), [])  # an instance of a by-value class
    with pytest.raises(CannotEncode):
        enc.payload(Task("x", map, lambda v: v, [1]), [])  # a by-value function in the args
    with pytest.raises(CannotEncode):
        enc.encode(Alias("x", "y"))
    with pytest.raises(CannotEncode):
        enc.encode(DataNode("x", 1))


def test_real_collections_compute_the_same_through_payloads() -> None:
    x = da.arange(40, chunks=7)
    y = (x * 2 + x[::-1]).sum()
    z = dask.delayed(lambda a, b: a - b)(dask.delayed(sum)([1, 2, 3]), 4)  # noqa: PLC3002
    enc = PayloadEncoder()
    for obj in (y, z):
        (opt,) = dask.optimize(obj)
        g = DaskGraph(opt.__dask_graph__(), opt.__dask_keys__())
        values: dict[Any, object] = dict(g.local_data())
        for k in sorted(g.nodes, key=g.priority):
            if g.kind(k) != "task":
                continue
            node, deps = g.task_payload(k)
            try:
                e, table = enc.encode(node)
            except CannotEncode:
                values[k] = execute_node(node, values)
                continue
            values[k] = evaluate(e, values, table)
        got = g.result(values.__getitem__)
        want = obj.compute(scheduler="sync")
        assert np.allclose(got[0] if isinstance(got, list) else got, want)
