"""Small Dask graphs as one task: the fast path of ``DaskVine.get``.

A ``compute()`` of tens of trivial tasks costs far more in per-task round trips
(submit, dispatch, a forked run, a completion, the manager's bookkeeping for
each) than in the work. When a graph is small -- at most :data:`SMALL_TASKS`
tasks whose kinds (dask key prefixes, as ``dask.utils.key_split`` names them)
ran before on this manager, each at most :data:`SMALL_TASK_SECONDS` in its
latest run and at most :data:`SMALL_SECONDS` all together (on the usual path a
task's wall time, which includes its start-up, so the estimate errs high) --
the whole culled graph goes to one worker as one task, which evaluates it in
dependency order (depth-first from the requested keys, not in ``dask.order``'s order
as dask's sync scheduler does), and returns the requested
values with how long each kind of node took: as a flat plan of calls
(:mod:`vinework.dask.plan`), or, for a graph the plan cannot express, as dask's
own nodes (:func:`run_graph`). A kind
never seen, or seen to be slow, sends the graph down the usual path, one task
per node, so a graph of a few heavy tasks keeps its parallelism.

Literal-only requests (every requested key is a ``DataNode``, or an alias of
one) are answered here without any task, with the objects themselves.

This module imports Dask; :mod:`vinework.dask.executor` loads it on first use.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import time
import types
from collections.abc import Mapping
from typing import Any, Protocol

import cloudpickle
from dask._task_spec import (
    Alias,
    DataNode,
    GraphNode,
    Task,
    _execute_subgraph,
    fuse_linear_task_spec,
)
from dask.utils import key_split

from ..task import PythonTask
from ..task import Task as VineTask
from .errors import DaskVineTaskError
from .graph import Key, flatten_keys, modules_of_graph, normalize_graph, rebuild_result
from .payload import CannotEncode, _by_value
from .plan import Unplannable, compile_plan, dependency_order, note_key, run_plan

__all__ = ["SMALL_SECONDS", "SMALL_TASKS", "SMALL_TASK_SECONDS", "SmallGraph", "run_graph"]

SMALL_TASKS = 64  # at most this many tasks (after fusion) for one-task runs
SMALL_TASK_SECONDS = 0.02  # each kind's latest run at most this long
SMALL_SECONDS = 0.25  # and all the tasks together at most this long, by those times
WAIT_SECONDS = 5

_run_ids = itertools.count(1)


class SmallManager(Protocol):
    """What the fast path needs of its manager (``DaskVine`` is one)."""

    def submit(self, t: VineTask) -> int: ...
    def wait_for_tag(self, tag: str, timeout: Any = ...) -> VineTask | None: ...
    def cancel_by_task_id(self, task_id: int) -> bool: ...
    def _hoist_for_dask(self, tops: list[str]) -> None: ...
    def _keep_private(self, tag: str, private: bool = True) -> None: ...


def _cull(full: Mapping[Key, GraphNode], targets: list[Key]) -> dict[Key, GraphNode]:
    """What the targets need, in the graph's order (as DaskGraph culls)."""
    needed: set[Key] = set()
    work = list(targets)
    while work:
        k = work.pop()
        if k in needed:
            continue
        if k not in full:
            raise KeyError(f"requested key {k!r} is not in the graph")
        needed.add(k)
        for d in full[k].dependencies:
            if d not in full:
                raise ValueError(f"key {k!r} depends on {d!r}, which is not in the graph")
            work.append(d)
    if len(needed) == len(full):
        return dict(full)
    return {k: v for k, v in full.items() if k in needed}


def _check_acyclic(nodes: Mapping[Key, GraphNode]) -> None:
    """Raise ValueError, naming keys on it, if the graph has a cycle (before fusing it:
    dask's fusion does not expect one)."""
    indegree = {k: len(n.dependencies) for k, n in nodes.items()}
    dependents: dict[Key, list[Key]] = {}
    for k, n in nodes.items():
        for d in n.dependencies:
            dependents.setdefault(d, []).append(k)
    ready = [k for k, n in indegree.items() if n == 0]
    visited = 0
    while ready:
        k = ready.pop()
        visited += 1
        for c in dependents.get(k, ()):
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    if visited != len(nodes):
        stuck = sorted(repr(k) for k, n in indegree.items() if n > 0)[:5]
        raise ValueError(f"the graph has a cycle (through {', '.join(stuck)})")


def _literal(nodes: Mapping[Key, GraphNode], key: Key) -> tuple[bool, object]:
    """(True, value) when ``key`` is a literal or an alias chain ending in one."""
    seen: set[Key] = set()
    node = nodes[key]
    while isinstance(node, Alias) and key not in seen:
        seen.add(key)
        key = node.target
        node = nodes[key]
    if isinstance(node, DataNode):
        return True, node.value
    return False, None


def _evaluate(nodes: Mapping[Key, GraphNode], targets: list[Key], values: dict[Key, object],
              times: dict[str, float] | None) -> dict[Key, object]:
    """Evaluate what ``targets`` need in dependency order, on top of ``values`` (inputs
    given by the caller); drop each value after its last reader. ``times`` (when given)
    gets each kind's longest run (seconds)."""
    order = dependency_order(nodes, targets, given=values)  # (inputs shadow inner keys)
    readers: dict[Key, int] = {}
    for k in order:
        for d in nodes[k].dependencies:
            readers[d] = readers.get(d, 0) + 1
    keep = set(targets)
    clock = time.perf_counter
    for k in order:
        node = nodes[k]
        if type(node) is Task and node.func is _execute_subgraph:
            # dask's fused subgraph: its inner graph in dependency order too, not through
            # dask's execute_graph (which runs dask.order on every call: half the time of
            # a small graph); the values are the same, only the order among
            # independent nodes may differ
            node.func = _subgraph
        start = clock()
        try:
            values[k] = node(values)
        except Exception as e:
            if times is not None:
                note_key(e, k)
            raise
        if times is not None:
            took = clock() - start
            kind = key_split(k)
            if took > times.get(kind, -1.0):
                times[kind] = took
        for d in node.dependencies:
            readers[d] -= 1
            if readers[d] == 0 and d not in keep:
                del values[d]
    return values


def _subgraph(inner: Mapping[Key, GraphNode], outkey: Key, inkeys: list[Key],
              *dependencies: object) -> object:
    """What dask's ``_execute_subgraph`` computes: ``outkey`` of the inner graph, with
    ``inkeys`` given (in dependency order, see :func:`_evaluate`)."""
    values: dict[Key, object] = dict(zip(inkeys, dependencies, strict=True))
    return _evaluate(inner, [outkey], values, None)[outkey]


def run_graph(nodes: dict[Key, GraphNode], targets: list[Key]) -> tuple[dict[Key, object],
                                                                         dict[str, float]]:
    """Worker side: evaluate ``nodes`` in dependency order; return the targets' values
    and, per kind of node (``key_split`` of its key), the longest one took (seconds).

    A value is dropped once its last reader ran. A node that raises re-raises its own
    exception, with a note naming its key. (``nodes`` are this call's own unpickled
    copy: fused subgraph nodes are pointed at :func:`_subgraph`.)
    """
    times: dict[str, float] = {}
    values = _evaluate(nodes, targets, {}, times)
    return {t: values[t] for t in targets}, times


def _instance_by_value(cls: type) -> bool:
    """Whether cloudpickle would pickle the class of an instance by value: a class of
    ``__main__``, a local class, or one of a module registered by value. (A class of
    an extension module is pickled by reference even where cloudpickle's lookup of it
    fails, as for numpy's function dispatchers.)"""
    module = getattr(cls, "__module__", None)
    if module in (None, "__main__", "__mp_main__") or "<locals>" in cls.__qualname__:
        return True
    registered = getattr(getattr(cloudpickle, "cloudpickle", None), "_PICKLE_BY_VALUE_MODULES",
                         ())
    return isinstance(module, str) and module.split(".", 1)[0] in registered


class _GraphPickler(pickle.Pickler):
    """The C pickler for a small graph, refusing what only cloudpickle pickles right."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)):
            if _by_value(obj):
                raise CannotEncode(f"{obj!r} must be pickled by value")
        elif _instance_by_value(type(obj)):
            raise CannotEncode(f"an instance of {type(obj)!r}, a class pickled by value")
        return NotImplemented


def _may_name_by_value(data: bytes) -> bool:
    """Whether a plain pickle may refer by name to something cloudpickle would pickle by
    value: a module name of ``__main__`` or of a module registered by value appears in
    it (every global reference spells its module's name at least once; a false alarm
    only costs the slower, exact check)."""
    if b"__main__" in data or b"__mp_main__" in data:
        return True
    registered = getattr(getattr(cloudpickle, "cloudpickle", None), "_PICKLE_BY_VALUE_MODULES",
                         ())
    return any(name.encode() in data for name in registered)


def _plain_payload(call: tuple[Any, tuple[Any, ...], dict[str, Any]]) -> bytes | None:
    """The PythonTask payload ``call`` (``(function, args, kwargs)``) by the C pickler, or
    None (then the task cloudpickles it) when something must be pickled by value.

    The plain C pickler first (~20x faster than a pickler with a Python hook called for
    every object): a local or unimportable function or class makes it raise, and one
    of ``__main__`` or of a module registered by value leaves its module's name in the
    bytes; only then the exact check, object by object (:class:`_GraphPickler`)."""
    try:
        data = pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return None
    if not _may_name_by_value(data):
        return data
    buf = io.BytesIO()
    try:
        _GraphPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(call)
    except (CannotEncode, pickle.PicklingError, TypeError, AttributeError):
        return None
    return buf.getvalue()


class SmallGraph:
    """A ``get`` looked at before the usual path: literal-only, small, or neither."""

    def __init__(self, dsk: Any, keys: Any, *, fuse: bool) -> None:
        self.keys = keys
        self.targets: list[Key] = list(dict.fromkeys(flatten_keys(keys)))
        self.full = normalize_graph(dsk)
        nodes = _cull(self.full, self.targets)
        _check_acyclic(nodes)
        if fuse:
            nodes = fuse_linear_task_spec(nodes, self.targets)
        self.nodes: dict[Key, GraphNode] = nodes
        self.n_tasks = sum(1 for n in nodes.values() if isinstance(n, Task))
        self.literals: dict[Key, object] = {}
        for t in self.targets:
            is_literal, value = _literal(nodes, t)
            if is_literal:
                self.literals[t] = value

    def literal_only(self) -> bool:
        """Whether every requested key is a literal (no task needed)."""
        return len(self.literals) == len(self.targets)

    def literal_result(self) -> Any:
        """The requested literals themselves, in the shape of the keys."""
        return rebuild_result(self.keys, self.literals)

    def estimate(self, times: Mapping[str, float]) -> float | None:
        """Seconds the tasks took before (None: a kind never seen or slower than
        :data:`SMALL_TASK_SECONDS`, or more than :data:`SMALL_TASKS` tasks)."""
        if self.n_tasks > SMALL_TASKS:
            return None
        total = 0.0
        for k, node in self.nodes.items():
            if isinstance(node, Task):
                took = times.get(key_split(k))
                if took is None or took > SMALL_TASK_SECONDS:
                    return None
                total += took
        return total

    def is_small(self, times: Mapping[str, float]) -> bool:
        """Whether to run it as one task (see :meth:`estimate` and :data:`SMALL_SECONDS`)."""
        est = self.estimate(times)
        return est is not None and est <= SMALL_SECONDS

    def call(self, ship: list[Key]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        """The one task's call, ``(function, args, kwargs)``, computing ``ship``: the
        graph's plan (:mod:`vinework.dask.plan`), or its nodes when it has none."""
        try:
            return run_plan, (*compile_plan(self.nodes, ship), ship), {}
        except Unplannable:
            return run_graph, (self.nodes, ship), {}

    def run(self, m: SmallManager, *, times: dict[str, float], retries: int,
            resources: Mapping[str, int], env_vars: Mapping[str, Any],
            extra_files: Mapping[Any, str], extra_modules: list[str], verbose: bool,
            scan_modules: bool = True) -> Any:
        """Run the graph as one task on a worker and return what ``get`` returns.

        ``scan_modules=False`` hoists only ``extra_modules``: a graph chosen by
        :meth:`is_small` is made of kinds that ran here before, whose modules their
        runs hoisted (a module missed is imported by the task, once per warm process).

        Retried up to ``retries`` attempts, as each task of the usual path is; the
        exception of the last attempt is raised (its own type, with the remote
        traceback), or :class:`DaskVineTaskError` when it raised nothing.
        """
        scanned = modules_of_graph(self.nodes) if scan_modules else []
        m._hoist_for_dask([*scanned, *extra_modules, "vinework.dask.small"])  # (and .plan)
        ship = [t for t in self.targets if t not in self.literals]
        tag = f"dask-graph-{os.getpid()}-{next(_run_ids)}"
        call = self.call(ship)
        payload = _plain_payload(call)
        m._keep_private(tag)  # a plain wait() in another thread does not take it
        try:
            attempt = 0
            while True:
                attempt += 1
                t = PythonTask(call[0], *call[1])
                t.payload = payload
                for f, name in extra_files.items():
                    t.add_input(f, name)
                t.set_cores(int(resources.get("cores", 1)))
                for res in ("memory", "disk", "gpus"):
                    if res in resources:
                        getattr(t, f"set_{res}")(int(resources[res]))
                for name, value in env_vars.items():
                    t.set_env_var(name, value(m, t) if callable(value) else value)
                t.set_category("dask-graph")
                t.set_tag(tag)
                tid = m.submit(t)
                try:
                    done = None
                    while done is None:
                        done = m.wait_for_tag(tag, WAIT_SECONDS)
                except BaseException:
                    m.cancel_by_task_id(tid)
                    m.wait_for_tag(tag, WAIT_SECONDS)
                    raise
                if verbose:
                    print(f"dask graph of {self.n_tasks} task(s) ran on {done.hostname}: "
                          f"{done.result}")
                if done.successful():
                    values, took = done.output
                    times.update(took)  # the latest run of each kind decides the next time
                    return rebuild_result(self.keys, {**self.literals, **values})
                if attempt >= retries:
                    out = done._output
                    if isinstance(out, BaseException):
                        raise out
                    raise DaskVineTaskError(
                        f"the dask graph (run as one task) failed permanently after {attempt} "
                        f"attempt(s): {done.result}"
                        + (f" ({done.error_message})" if done.error_message else ""))
        finally:
            m._keep_private(tag, False)
