"""A small Dask graph compiled to a flat plan of calls, for the one-task fast path.

:mod:`vinework.dask.small` runs a small graph as one task. Shipping dask's own node
objects costs twice: every ``Task`` is rebuilt by a Python ``__setstate__`` when the
worker unpickles it, and evaluating it goes through ``Task.__call__``, which checks
its inputs and builds a dict of them for every nested argument; a fused subgraph
(``_execute_subgraph``) is a graph within the graph, evaluated on its own. For tens
of trivial nodes that is most of the worker's time.

:func:`compile_plan` turns the culled graph, on the manager, into plain data: a list
of *groups*, one per top-level node in dependency order, each a list of *steps*
writing one numbered slot. Fused subgraphs are flattened into their group (their
inner keys get slots of their own, so they never collide with outer ones); an alias
is only a second name for a slot. A step's expression is a constant, a slot
reference, or a call ``(func, args, dynamic args, kwargs, dynamic kwargs)`` whose
dynamic arguments are expressions themselves (dask's nested tasks and containers).
:func:`run_plan`, on the worker, fills the slots in order, frees each slot after its
last reader (as dask's schedulers drop a value once nothing needs it) and returns
the requested values with each kind's time, as :func:`~vinework.dask.small.run_graph`
does. What the plan cannot express (a node type it does not know) raises
:class:`Unplannable` and the graph is shipped as dask nodes instead.

The values are dask's own: every call is the node's function on the same arguments.
Only the order among independent nodes may differ from dask's (as on the old path).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

from dask._task_spec import Alias, DataNode, GraphNode, Task, TaskRef, _execute_subgraph
from dask.utils import key_split

from .graph import Key

__all__ = ["Plan", "Unplannable", "compile_plan", "dependency_order", "note_key", "run_plan"]

_TASK_CALL = Task.__call__

# An expression: ("c", value) a constant; an int, a slot; ("t", func, args, dynamic,
# kwargs, kwdynamic) a call, ``dynamic`` listing (position, expression) to fill in
# ``args`` and ``kwdynamic`` (name, expression) to fill in ``kwargs`` (None: no kwargs).
Expr = Any
# A step: (slot it writes, its expression, slots to free after it)
Step = tuple[int, Expr, tuple[int, ...]]
# A plan: ([(top-level key, kind, steps), ...], slots of the targets, number of slots)
Plan = tuple[list[tuple[Key, str, list[Step]]], list[int], int]


class Unplannable(Exception):
    """The graph holds something the plan cannot express (ship dask's nodes instead)."""


def dependency_order(nodes: Mapping[Key, GraphNode], targets: list[Key],
                     given: Collection[Key] = ()) -> list[Key]:
    """What the targets need, each key after its dependencies (iterative depth-first);
    keys in ``given`` (or not in ``nodes``) are taken as known and not expanded."""
    order: list[Key] = []
    state: dict[Key, int] = {}  # 1: on the stack, 2: ordered
    for root in targets:
        if root in given:
            continue
        stack: list[tuple[Key, bool]] = [(root, False)]
        while stack:
            k, expanded = stack.pop()
            if expanded:
                state[k] = 2
                order.append(k)
                continue
            if k in state:
                continue
            state[k] = 1
            stack.append((k, True))
            stack.extend((d, False) for d in nodes[k].dependencies
                         if d not in state and d in nodes and d not in given)
    return order


_NODE_OR_REF = (GraphNode, TaskRef)


class _Compiler:
    """Compiles nodes into one flat list of steps, noting each slot's last reader."""

    def __init__(self) -> None:
        self.slots = 0
        self.steps: list[tuple[int, Expr]] = []
        self.last: dict[int, int] = {}  # slot -> index of the last step reading it

    def new_slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def expr(self, a: Any, scope: Mapping[Key, int]) -> Expr:
        """The expression of one argument of a task (as ``Task.__call__`` reads it), read
        by the next step appended."""
        if type(a) is TaskRef:
            return self.read(a.key, scope)
        if type(a) is Alias:
            return self.read(a.target, scope)
        if type(a) is DataNode:
            return ("c", a.value)
        if isinstance(a, Task) and type(a).__call__ is _TASK_CALL:
            return self.call(a, scope)
        if isinstance(a, _NODE_OR_REF):
            raise Unplannable(f"a {type(a).__name__} node")
        return ("c", a)

    def read(self, key: Key, scope: Mapping[Key, int]) -> int:
        slot = self.slot_of(key, scope)
        self.last[slot] = len(self.steps)
        return slot

    @staticmethod
    def slot_of(key: Key, scope: Mapping[Key, int]) -> int:
        try:
            return scope[key]
        except (KeyError, TypeError):
            raise Unplannable(f"a reference to {key!r}, which is not computed before it") from None

    def call(self, t: Task, scope: Mapping[Key, int]) -> Expr:
        args: Any = t.args  # a list once an argument is filled in
        dynamic = []
        for i, a in enumerate(t.args):
            if isinstance(a, _NODE_OR_REF):
                e = self.expr(a, scope)
                if type(args) is tuple:
                    args = list(args)
                if type(e) is tuple and e[0] == "c":
                    args[i] = e[1]
                else:
                    args[i] = None
                    dynamic.append((i, e))
        kwargs: dict[str, Any] | None = None
        kwdynamic = []
        if t.kwargs:
            kwargs = {}
            for name, a in t.kwargs.items():
                e = self.expr(a, scope) if isinstance(a, _NODE_OR_REF) else ("c", a)
                if type(e) is tuple and e[0] == "c":
                    kwargs[name] = e[1]
                else:  # filled in at run time, in its place: the keywords keep their order
                    kwargs[name] = None
                    kwdynamic.append((name, e))
        return ("t", t.func, tuple(args), tuple(dynamic), kwargs, tuple(kwdynamic))

    def node(self, key: Key, node: GraphNode, scope: dict[Key, int]) -> None:
        """Compile one node into steps; ``scope[key]`` is then its value's slot."""
        if type(node) is Task and node.func is _execute_subgraph and len(node.args) >= 3:
            inner, outkey, inkeys = node.args[:3]
            dependencies = node.args[3:]
            if not isinstance(inner, Mapping) or len(inkeys) != len(dependencies):
                raise Unplannable("a fused subgraph of an unexpected form")
            own: dict[Key, int] = {}  # the subgraph's keys are its own (dask evaluates
            for k, d in zip(inkeys, dependencies, strict=True):  # it as a graph apart)
                if type(d) is TaskRef:  # only a second name: its readers note the reads
                    own[k] = self.slot_of(d.key, scope)
                    continue
                e = self.expr(d, scope)
                own[k] = self.new_slot()
                self.steps.append((own[k], e))
            if outkey not in own and outkey not in inner:
                raise Unplannable(f"a fused subgraph without its output {outkey!r}")
            for k in dependency_order(inner, [outkey], given=own):
                self.node(k, inner[k], own)
            scope[key] = own[outkey]
            return
        if type(node) is Alias:
            scope[key] = self.slot_of(node.target, scope)
            return
        e = self.expr(node, scope)
        slot = scope[key] = self.new_slot()
        self.steps.append((slot, e))


def compile_plan(nodes: Mapping[Key, GraphNode], targets: list[Key]) -> Plan:
    """The plan of what ``targets`` need of ``nodes`` (a culled, acyclic graph).

    Raises :class:`Unplannable` for what it cannot express."""
    if not targets:
        return [], [], 0
    c = _Compiler()
    scope: dict[Key, int] = {}
    starts: list[tuple[Key, int]] = []
    for k in dependency_order(nodes, targets):
        starts.append((k, len(c.steps)))
        c.node(k, nodes[k], scope)
    outs = [scope[t] for t in targets]
    keep = set(outs)
    free: dict[int, list[int]] = {}
    for slot, at in c.last.items():
        if slot not in keep:
            free.setdefault(at, []).append(slot)
    steps = c.steps
    for i, (slot, _) in enumerate(steps):
        if slot not in c.last and slot not in keep:  # read by nothing: gone at once
            free.setdefault(i, []).append(slot)
    planned = [(slot, e, tuple(free[i]) if i in free else ())
               for i, (slot, e) in enumerate(steps)]
    ends = [at for _, at in starts[1:]] + [len(steps)]
    groups = [(k, key_split(k), planned[at:end]) for (k, at), end in zip(starts, ends,
                                                                          strict=True)]
    return groups, outs, c.slots


def _value(e: Expr, env: list[Any]) -> Any:
    if type(e) is int:
        return env[e]
    if e[0] == "c":
        return e[1]
    _, func, args, dynamic, kwargs, kwdynamic = e
    if dynamic:
        args = list(args)
        for i, d in dynamic:
            args[i] = env[d] if type(d) is int else _value(d, env)
    if kwargs is None:
        return func(*args)
    if kwdynamic:
        kwargs = dict(kwargs)
        for name, d in kwdynamic:
            kwargs[name] = env[d] if type(d) is int else _value(d, env)
    return func(*args, **kwargs)


def note_key(e: BaseException, key: Key) -> None:
    """Add a note naming the dask key that raised ``e`` (not when its notes cannot take
    one: the exception itself matters more)."""
    try:
        e.add_note(f"dask key {key!r} raised it (the graph ran as one task)")
    except TypeError:
        pass


def run_plan(groups: list[tuple[Key, str, list[Step]]], outs: list[int], slots: int,
             targets: list[Key]) -> tuple[dict[Key, object], dict[str, float]]:
    """Worker side: fill the plan's slots in order; return the targets' values and, per
    kind of top-level node, the longest one took (seconds). A node that raises
    re-raises its own exception, with a note naming its dask key."""
    env: list[Any] = [None] * slots
    times: dict[str, float] = {}
    clock = time.perf_counter
    for key, kind, steps in groups:
        start = clock()
        try:
            for slot, expr, free in steps:
                env[slot] = _value(expr, env)
                for s in free:
                    env[s] = None
        except Exception as e:
            note_key(e, key)
            raise
        took = clock() - start
        if took > times.get(kind, -1.0):
            times[kind] = took
    return {t: env[s] for t, s in zip(targets, outs, strict=True)}, times
