"""Pure graph bookkeeping for running Dask graphs on vinework (DaskVine).

This is the part of a Dask scheduler ``get(dsk, keys, **kwargs)`` that involves
no I/O, sockets, threads or clocks: materializing what Dask hands to ``get``,
tracking which keys are ready, done, failed or prunable, producing picklable
payloads that a worker evaluates, and packing the values into the shape of
``keys``.

What dask 2026.8 hands to a custom ``get``: ``dask.compute``, ``.compute()``,
``dask.persist`` and ``.persist()`` pass an optimized graph *expression* with a
flat list of keys -- ``dask._expr._HLGExprSequence`` for array, bag and delayed
collections, ``dask._expr._ExprSequence`` for dataframes. Its
``__dask_graph__()`` is a dict of ``dask._task_spec`` nodes that may still hold
legacy ``(func, *args)`` tuples (dataframe tree reductions, or any graph
computed with ``optimize_graph=False``). Calling ``get`` by hand with
``collection.__dask_graph__()`` passes a ``HighLevelGraph`` and possibly nested
keys; hand-written graphs are legacy tuple dicts. :func:`normalize_graph`
accepts all of these.

Each key of a :class:`DaskGraph` is of one kind:

* ``"task"`` -- a ``Task`` (including nested containers and fused subgraphs),
  run remotely: :meth:`DaskGraph.task_payload` gives the node to ship and
  :func:`execute_node` evaluates it on the worker.
* ``"data"`` -- a ``DataNode`` literal, already held by the manager. It is done
  from the start and never becomes a task; the executor uploads the value
  (:meth:`DaskGraph.local_data`) for the tasks reading it. With
  ``data_as_tasks=True`` literals are shipped as tasks instead.
* ``"alias"`` -- an ``Alias``: its value is its target's, so it needs neither a
  task nor storage. :meth:`DaskGraph.storage_key` follows alias chains to the
  task or data key holding the value, payloads read storage keys directly,
  and an alias is done/failed/ready exactly when its storage key is. Aliases
  never appear in ready lists, :meth:`DaskGraph.mark_done` or
  :meth:`DaskGraph.prunable_after`.

The graph is culled to what the requested keys need; scheduling is tracked
over storage keys (tasks and data).
"""

from __future__ import annotations

import copy
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from itertools import islice
from types import MethodType
from typing import Any, cast

from dask._task_spec import (
    Alias,
    DataNode,
    GraphNode,
    Task,
    TaskRef,
    convert_legacy_graph,
    fuse_linear_task_spec,
)
from dask.typing import Key
from dask.utils import ensure_dict

__all__ = [
    "KIND_ALIAS", "KIND_DATA", "KIND_TASK", "DaskGraph", "Key", "execute_node",
    "flatten_keys", "modules_of_graph", "normalize_graph", "rebuild_result",
]  # fmt: skip

KIND_TASK = "task"
KIND_DATA = "data"
KIND_ALIAS = "alias"

_SKIP_MODULES = frozenset({"builtins", "__main__", "__mp_main__", *sys.stdlib_module_names})
_MAX_SCAN = 10_000  # elements of one plain container inspected by modules_of_graph


def normalize_graph(dsk: Any) -> dict[Key, GraphNode]:
    """Materialize any graph form Dask hands to a scheduler as task-spec nodes.

    Args:
        dsk: A dict of task-spec nodes, a legacy tuple graph, a mix of both, a
            ``HighLevelGraph`` or other ``Mapping``, or an object with
            ``__dask_graph__`` (graph expressions such as ``_HLGExprSequence``
            and ``_ExprSequence``, or a Dask collection).

    Returns:
        A new dict of key -> ``GraphNode`` (legacy tasks become ``Task``, key
        references ``Alias``, literals ``DataNode``); the input is untouched.

    Raises:
        TypeError: If ``dsk`` is not a graph.
    """
    if isinstance(dsk, Mapping):
        raw: Mapping[Any, Any] = ensure_dict(dsk)
    elif hasattr(dsk, "__dask_graph__"):
        try:
            graph = dsk.__dask_graph__()
        except NotImplementedError:
            # An expression that was never lowered (dask.compute always lowers
            # via .optimize()); note lowering may rename its output keys.
            lower = getattr(dsk, "lower_completely", None)
            if lower is None:
                raise
            graph = lower().__dask_graph__()
        if graph is None:
            raise TypeError(f"{type(dsk).__name__} object has no task graph")
        raw = ensure_dict(graph)
    else:
        raise TypeError(f"cannot interpret {type(dsk).__name__} object as a dask graph")
    return _keyed_as_stored(convert_legacy_graph(raw))


def _keyed_as_stored(nodes: dict[Key, GraphNode]) -> dict[Key, GraphNode]:
    """``nodes`` with every node under the key it is stored under (the same dict when
    each already has it, else a new one). Dask's schedulers go by the graph's keys, but
    its fusion goes by each node's own ``.key``, and dask-expr stores some nodes under
    another key (``ddf.loc[a:b]`` stores ``Alias(x)`` under ``loc-..``): fused as they
    are, such graphs lose the node or break."""
    wrong = [k for k, node in nodes.items() if node.key != k]
    if not wrong:
        return nodes
    out = dict(nodes)
    for k in wrong:
        node = nodes[k]
        if type(node) is Alias:
            out[k] = Alias(k, node.target)
        elif type(node) is DataNode:
            out[k] = DataNode(k, node.value)
        else:
            renamed = node.substitute({}, key=k)
            if renamed.key != k:  # dask's containers (List, Dict, ...) keep key None
                renamed = copy.copy(node)
                renamed.key = k
            out[k] = renamed
    return out


def flatten_keys(keys: Any) -> list[Key]:
    """Flatten a key or nested list of keys, depth first; tuple keys stay intact."""
    if not isinstance(keys, list):
        return [keys]
    out: list[Key] = []
    for k in keys:
        out.extend(flatten_keys(k))
    return out


def rebuild_result(
    keys: Any,
    values: Mapping[Key, object],
    container: Callable[[Iterable[Any]], Any] = list,
) -> Any:
    """Pack values into the nesting of ``keys``, as a scheduler ``get`` returns.

    Args:
        keys: A key or nested list of keys, as passed to ``get``.
        values: The value of every key in ``keys``.
        container: Type of each nested list: ``list`` (like distributed) or
            ``tuple`` (like dask's local schedulers); dask accepts both.

    """
    if isinstance(keys, list):
        return container(rebuild_result(k, values, container) for k in keys)
    return values[keys]


def execute_node(node: GraphNode | TaskRef, dep_values: Mapping[Key, object]) -> object:
    """Compute the value of a payload node (``node(dep_values)``); run on the worker.

    Args:
        node: A node from :meth:`DaskGraph.task_payload`, e.g. cloudpickled.
        dep_values: At least the value of every dependency key of ``node``.

    Raises:
        RuntimeError: If a dependency value is missing (raised by dask).
        TypeError: If ``node`` is not a task-spec node.
    """
    if isinstance(node, GraphNode):
        return node(dep_values)
    if isinstance(node, TaskRef):
        return dep_values[node.key]
    raise TypeError(f"not a dask task-spec node: {type(node).__name__}")


def _top_module(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    top = name.split(".", 1)[0]
    return None if top in _SKIP_MODULES else top


def modules_of_graph(graph: Any) -> list[str]:
    """Top-level modules a worker should import to run a graph's payloads.

    Collects the modules of every function called by the graph (looking into
    nested tasks, fused subgraphs, ``functools.partial`` and bound methods) and
    of the types of the literal values it carries (needed to unpickle them).
    The standard library, ``builtins`` and ``__main__`` are left out; ``dask``
    is always included since payloads are dask task-spec objects.

    Args:
        graph: A :class:`DaskGraph` or anything :func:`normalize_graph` takes.

    Returns:
        Sorted top-level module names, e.g. ``["dask", "numpy", "pandas"]``.
    """
    if isinstance(graph, DaskGraph):
        nodes: Mapping[Key, GraphNode] = graph.nodes
    else:
        nodes = normalize_graph(graph)
    found: set[str] = {"dask"}
    seen: set[int] = set()
    stack: list[object] = list(nodes.values())

    def add(name: object) -> None:
        if (top := _top_module(name)) is not None:
            found.add(top)

    while stack:
        obj = stack.pop()
        if isinstance(obj, (str, bytes, int, float, complex, bool, type(None))):
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (Alias, TaskRef)):
            continue
        if isinstance(obj, DataNode):
            stack.append(obj.value)
        elif isinstance(obj, Task):
            stack.append(obj.func)
            stack.extend(obj.args)
            stack.extend(obj.kwargs.values())
        elif isinstance(obj, partial):
            stack.append(obj.func)
            stack.extend(obj.args)
            stack.extend(obj.keywords.values())
        elif isinstance(obj, MethodType):
            stack.append(obj.__func__)
            stack.append(obj.__self__)
        elif isinstance(obj, dict):
            stack.extend(islice(obj.values(), _MAX_SCAN))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(islice(obj, _MAX_SCAN))
        elif isinstance(obj, type):
            add(obj.__module__)
        elif callable(obj) and isinstance(getattr(obj, "__module__", None), str):
            add(obj.__module__)  # functions, builtins, numpy ufuncs
            add(type(obj).__module__)
        else:
            add(type(obj).__module__)
    return sorted(found)


def _makes_private_partd(node: GraphNode) -> bool:
    """Whether a node builds a partd store with no directory given (bag's
    ``partd.File()``, dataframe's ``maybe_buffered_partd`` without ``tempdir``)."""
    stack: list[object] = [node]
    while stack:
        obj = stack.pop()
        if not isinstance(obj, Task):
            continue
        func = obj.func
        if type(func).__name__ == "maybe_buffered_partd" and getattr(func, "tempdir", 0) is None:
            return True
        if str(getattr(func, "__module__", "") or "").startswith("partd") \
                and getattr(func, "__name__", "") == "File" and not obj.args and not obj.kwargs:
            return True
        stack.extend(obj.args)
        stack.extend(obj.kwargs.values())
    return False


def _is_normalized(graph: Any) -> bool:
    return isinstance(graph, dict) and all(isinstance(v, GraphNode) for v in graph.values())


def _within(start: Key, depth: int, adjacency: Mapping[Key, Iterable[Key]]) -> set[Key]:
    """Keys at distance 1..depth from ``start`` following ``adjacency``."""
    found: set[Key] = set()
    frontier = [start]
    for _ in range(depth):
        nxt = []
        for k in frontier:
            for n in adjacency[k]:
                if n not in found and n != start:
                    found.add(n)
                    nxt.append(n)
        if not nxt:
            break
        frontier = nxt
    return found


class DaskGraph:
    """Scheduling state of one Dask graph computation; pure and single-threaded.

    Executor loop: submit :meth:`ready_keys`; on success :meth:`mark_done` and
    submit what it returns, then delete what :meth:`prunable_after` names; on
    permanent failure :meth:`mark_failed`; stop when :meth:`done`; return
    :meth:`result`.

    It is also the ``dag`` that ``DaskVine.get(checkpoint_fn=...)`` hands to
    ``checkpoint_fn(dag, key)``, so it answers TaskVine's ``DaskVineDag`` queries:
    :meth:`depth_of`, :meth:`get_dependencies`, :meth:`get_needed_by` (and the
    older :meth:`get_children`).

    Attributes:
        keys: The requested keys, with their original nesting.
        targets: The requested keys flattened, without duplicates.
        nodes: The culled graph: every key the targets need, and its node.
    """

    def __init__(
        self,
        graph: Any,
        keys: Any,
        *,
        data_as_tasks: bool = False,
        use_dask_order: bool = True,
        fuse: bool = False,
    ) -> None:
        """Build the bookkeeping for computing ``keys`` from ``graph``.

        Args:
            graph: Any form accepted by :func:`normalize_graph` (a dict of
                task-spec nodes is used as is).
            keys: The requested key or nested list of keys.
            data_as_tasks: If True, ``DataNode`` literals are remote tasks
                instead of manager-side data (see the module docstring).
            use_dask_order: If True, order ready keys by ``dask.order.order``
                (memory-friendly); otherwise by position in the graph.
            fuse: If True, fuse each linear chain of the culled graph into one
                task with dask's ``fuse_linear_task_spec`` (what dask's own
                optimizer does): a chain's intermediates are then computed and
                consumed inside one task. The requested keys keep their names
                (a fused chain ending in one is reached through an alias).

        Raises:
            KeyError: If a requested key is not in the graph.
            ValueError: If a needed dependency is missing, or on a cycle.
        """
        full = _keyed_as_stored(graph) if _is_normalized(graph) else normalize_graph(graph)
        self.keys: Any = keys
        self.targets: list[Key] = list(dict.fromkeys(flatten_keys(keys)))
        self._target_set: frozenset[Key] = frozenset(self.targets)
        for t in self.targets:
            if t not in full:
                raise KeyError(f"requested key {t!r} is not in the graph")

        needed: set[Key] = set()
        work = list(self.targets)
        while work:
            k = work.pop()
            if k in needed:
                continue
            needed.add(k)
            for d in full[k].dependencies:
                if d not in full:
                    raise ValueError(f"key {k!r} depends on {d!r}, which is not in the graph")
                work.append(d)
        self.nodes: dict[Key, GraphNode] = {k: v for k, v in full.items() if k in needed}
        if fuse:
            self.nodes = fuse_linear_task_spec(self.nodes, self.targets)

        self._deps: dict[Key, frozenset[Key]] = {}
        self._dependents: dict[Key, set[Key]] = {k: set() for k in self.nodes}
        self._kind: dict[Key, str] = {}
        for k, node in self.nodes.items():
            self._deps[k] = frozenset(node.dependencies)
            for d in self._deps[k]:
                self._dependents[d].add(k)
            if isinstance(node, Alias):
                self._kind[k] = KIND_ALIAS
            elif isinstance(node, DataNode) and not data_as_tasks:
                self._kind[k] = KIND_DATA
            else:
                self._kind[k] = KIND_TASK

        self._storage: dict[Key, Key] = {k: self._resolve(k) for k in self.nodes}

        # The "effective" graph over storage keys: what payloads really read.
        self._edeps: dict[Key, frozenset[Key]] = {}
        self._edependents: dict[Key, set[Key]] = {}
        for k, kind in self._kind.items():
            if kind != KIND_ALIAS:
                self._edeps[k] = frozenset(self._storage[d] for d in self._deps[k])
                self._edependents.setdefault(k, set())
                for d in self._edeps[k]:
                    self._edependents.setdefault(d, set()).add(k)
        self._protected: frozenset[Key] = frozenset(self._storage[t] for t in self.targets)
        self._check_acyclic()

        if use_dask_order:
            from dask.order import order

            self._priority: dict[Key, int] = {k: int(v) for k, v in order(self.nodes).items()}
        else:
            self._priority = {k: i for i, k in enumerate(self.nodes)}

        self._data_keys = [k for k, kind in self._kind.items() if kind == KIND_DATA]
        self._done: set[Key] = set(self._data_keys)
        self._failed: set[Key] = set()
        self._pruned: set[Key] = set()
        self._missing: dict[Key, int] = {
            k: sum(1 for d in ds if d not in self._done) for k, ds in self._edeps.items()
        }
        self._ready: dict[Key, None] = {
            k: None for k, n in self._missing.items() if n == 0 and k not in self._done
        }
        # prune depth -> storage key -> number of not-done dependents within depth
        self._prune_pending: dict[int, dict[Key, int]] = {}
        self._depth: dict[Key, int] | None = None  # computed on first use (depth_of)

    # -- structure ---------------------------------------------------------

    def _resolve(self, key: Key) -> Key:
        seen = {key}
        while self._kind[key] == KIND_ALIAS:
            node = self.nodes[key]
            assert isinstance(node, Alias)
            key = node.target
            if key in seen:
                raise ValueError(f"alias cycle through {key!r}")
            seen.add(key)
        return key

    def _check_acyclic(self) -> None:
        indegree = {k: len(ds) for k, ds in self._edeps.items()}
        queue = deque(k for k, n in indegree.items() if n == 0)
        visited = 0
        while queue:
            k = queue.popleft()
            visited += 1
            for d in self._edependents[k]:
                indegree[d] -= 1
                if indegree[d] == 0:
                    queue.append(d)
        if visited != len(indegree):
            stuck = sorted((repr(k) for k, n in indegree.items() if n > 0))[:5]
            raise ValueError(f"the graph has a cycle (through {', '.join(stuck)})")

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, key: object) -> bool:
        return key in self.nodes

    def _sorted(self, keys: Iterable[Key]) -> list[Key]:
        return sorted(keys, key=self._priority.__getitem__)

    def kind(self, key: Key) -> str:
        """Return ``"task"``, ``"data"`` or ``"alias"`` for a key."""
        return self._kind[key]

    def dependencies(self, key: Key) -> frozenset[Key]:
        """Keys that ``key``'s node reads, as written in the graph (may be aliases)."""
        return self._deps[key]

    def dependents(self, key: Key) -> frozenset[Key]:
        """Keys whose nodes read ``key``, as written in the graph."""
        return frozenset(self._dependents[key])

    # -- TaskVine's DaskVineDag queries (what a checkpoint_fn may ask) -------

    def get_dependencies(self, key: Key) -> frozenset[Key]:
        """TaskVine's name: the keys ``key`` depends on (see :meth:`dependencies`)."""
        return self._deps[key]

    def get_needed_by(self, key: Key) -> frozenset[Key]:
        """TaskVine's name: the keys that depend on ``key`` (see :meth:`dependents`)."""
        return frozenset(self._dependents[key])

    def get_children(self, key: Key) -> frozenset[Key]:
        """Older TaskVine name for :meth:`get_dependencies` (its graph was drawn upside
        down: a node's children are what it reads); kept so its examples run."""
        return self._deps[key]

    def depth_of(self, key: Key) -> int:
        """TaskVine's depth of a key: 0 for a key that depends on nothing (a source, or
        literal data); otherwise one more than the *smallest* depth among its
        dependencies, i.e. the length of the shortest path from a source, as
        TaskVine's ``DaskVineDag`` computes it ("the shallowest level the key is
        found"). On a chain that is the position in the chain; a key joining a long and
        a short branch is one deeper than the short one. An alias has its target's
        depth (TaskVine leaves an alias without one).

        Raises:
            KeyError: If ``key`` is not in the (culled) graph.
        """
        if self._depth is None:
            self._depth = self._compute_depths()
        return self._depth[key]

    def _compute_depths(self) -> dict[Key, int]:
        depth: dict[Key, int] = {}
        indegree = {k: len(ds) for k, ds in self._edeps.items()}
        queue = deque(k for k, n in indegree.items() if n == 0)
        while queue:
            k = queue.popleft()
            ds = self._edeps[k]
            depth[k] = 1 + min(depth[d] for d in ds) if ds else 0
            for c in self._edependents[k]:
                indegree[c] -= 1
                if indegree[c] == 0:
                    queue.append(c)
        for k, kind in self._kind.items():
            if kind == KIND_ALIAS:
                depth[k] = depth[self._storage[k]]
        return depth

    def input_keys(self, key: Key) -> frozenset[Key]:
        """The task or data keys whose values ``key``'s payload reads (aliases followed).

        Raises:
            KeyError: If ``key`` is an alias or not in the graph.
        """
        return self._edeps[key]

    def private_disk_shuffles(self) -> list[Key]:
        """Keys that make the store of a Dask "disk" shuffle (a partd directory) in
        the temporary directory of the task that runs them.

        Each task's temporary directory is private to it (its sandbox, as in
        TaskVine), so the tasks writing and reading that shuffle would not share
        it and the shuffle would come out empty. A shuffle placed in Dask's
        ``temporary_directory`` (set when the graph was built) is not listed.
        """
        found = []
        for k, node in self.nodes.items():
            name = k if isinstance(k, str) else k[0] if isinstance(k, tuple) and k else None
            if isinstance(name, str) and "partd" in name and _makes_private_partd(node):
                found.append(k)
        return found

    def storage_key(self, key: Key) -> Key:
        """The task or data key whose value ``key`` has (itself unless an alias)."""
        return self._storage[key]

    def priority(self, key: Key) -> int:
        """Scheduling priority of ``key``; lower runs first."""
        return self._priority[key]

    def is_target(self, key: Key) -> bool:
        """Whether ``key`` is requested or the storage key of a requested alias."""
        return key in self._protected or key in self._target_set

    def local_data(self) -> dict[Key, object]:
        """Values of the ``"data"`` keys, which the manager already holds."""
        return {k: cast(DataNode, self.nodes[k]).value for k in self._data_keys}

    # -- state -------------------------------------------------------------

    def state(self, key: Key) -> str:
        """Return ``"done"``, ``"failed"``, ``"ready"`` or ``"waiting"`` for a key."""
        s = self._storage[key]
        if s in self._done:
            return "done"
        if s in self._failed:
            return "failed"
        return "ready" if s in self._ready else "waiting"

    def ready_keys(self) -> list[Key]:
        """Task keys with all inputs available that are not done or failed.

        Initially the roots. Running keys stay listed until marked done or
        failed, so after the first call use what :meth:`mark_done` returns.
        """
        return self._sorted(self._ready)

    def remaining(self) -> int:
        """Number of task and data keys that are neither done nor failed."""
        return len(self._edeps) - len(self._done) - len(self._failed)

    def done(self) -> bool:
        """True when nothing is left to run (everything is done or failed)."""
        return self.remaining() == 0

    def succeeded(self) -> bool:
        """True when every requested key has a value."""
        return self._protected <= self._done

    def failed_keys(self) -> list[Key]:
        """Keys marked failed, directly or because a dependency failed."""
        return self._sorted(self._failed)

    def mark_done(self, key: Key) -> list[Key]:
        """Record that the ready task ``key`` produced its value (again: no-op).

        Returns:
            Task keys that became ready, by priority.

        Raises:
            KeyError: If ``key`` is not in the graph.
            ValueError: If ``key`` is an alias, failed, or not ready.
        """
        if key not in self.nodes:
            raise KeyError(key)
        if self._kind[key] == KIND_ALIAS:
            raise ValueError(f"{key!r} is an alias; mark its storage key instead")
        if key in self._done:
            return []
        if key in self._failed:
            raise ValueError(f"{key!r} already failed")
        if key not in self._ready:
            raise ValueError(f"{key!r} is not ready: some of its dependencies are not done")
        del self._ready[key]
        self._done.add(key)
        became_ready = []
        for d in self._edependents[key]:
            self._missing[d] -= 1
            if self._missing[d] == 0 and d not in self._failed:
                self._ready[d] = None
                became_ready.append(d)
        for depth, pending in self._prune_pending.items():
            for p in _within(key, depth, self._edeps):
                pending[p] -= 1
        return self._sorted(became_ready)

    def mark_failed(self, key: Key) -> list[Key]:
        """Record that task ``key`` failed permanently, with everything downstream.

        Returns:
            The keys newly marked failed: ``key`` (unless it already failed)
            and its transitive dependents.

        Raises:
            KeyError: If ``key`` is not in the graph.
            ValueError: If ``key`` is an alias or already done.
        """
        if key not in self.nodes:
            raise KeyError(key)
        if self._kind[key] == KIND_ALIAS:
            raise ValueError(f"{key!r} is an alias; mark its storage key instead")
        if key in self._done:
            raise ValueError(f"{key!r} is already done")
        newly: list[Key] = []
        work = deque([key])
        while work:
            k = work.popleft()
            if k in self._failed or k in self._done:
                continue
            self._failed.add(k)
            self._ready.pop(k, None)
            newly.append(k)
            work.extend(self._edependents[k])
        return newly

    def prunable_after(self, key: Key, prune_depth: int) -> list[Key]:
        """Results that may be deleted now that ``key`` is done.

        TaskVine DaskVine ``prune_depth`` semantics: 0 never prunes; with depth
        ``d`` a result is pruned once every key within ``d`` hops downstream
        (dependents, their dependents, ...) is done. Depth 1 frees memory
        soonest; larger depths keep inputs longer so a lost result can be
        recomputed from them. Requested keys (and storage of requested
        aliases) are never pruned; each key is returned once; keys with a
        failed dependent never are. Call after every :meth:`mark_done` with
        the same depth. ``"data"`` keys may be returned (drop the upload).

        Args:
            key: A task key that was just marked done.
            prune_depth: How many levels of dependents must be done first.

        Returns:
            Storage keys upstream of ``key`` that can be deleted, by priority.

        Raises:
            KeyError: If ``key`` is not in the graph.
            ValueError: If ``key`` is not done.
        """
        if key not in self.nodes:
            raise KeyError(key)
        key = self._storage[key]
        if key not in self._done:
            raise ValueError(f"{key!r} is not done")
        if prune_depth <= 0:
            return []
        pending = self._prune_pending.get(prune_depth)
        if pending is None:
            pending = {
                k: sum(1 for x in _within(k, prune_depth, self._edependents) if x not in self._done)
                for k in self._edeps
            }
            self._prune_pending[prune_depth] = pending
        out = [
            p
            for p in _within(key, prune_depth, self._edeps)
            if pending[p] == 0
            and p in self._done
            and p not in self._protected
            and p not in self._pruned
        ]
        self._pruned.update(out)
        return self._sorted(out)

    # -- payloads and results ----------------------------------------------

    def task_payload(self, key: Key) -> tuple[GraphNode, list[Key]]:
        """The node to run remotely for ``key`` and the keys whose values it reads.

        Alias references in the node are rewritten to their storage keys, so
        ``dep_keys`` (by priority) are task or data keys and
        ``execute_node(node, {d: value_of_d for d in dep_keys})`` computes
        ``key``. The node is picklable with cloudpickle.

        Raises:
            ValueError: If ``key`` is not a task key.
        """
        if self._kind[key] != KIND_TASK:
            raise ValueError(f"{key!r} is a {self._kind[key]} key, not a task")
        node = self.nodes[key]
        subs: dict[Key, Key | GraphNode] = {
            d: self._storage[d] for d in self._deps[key] if self._storage[d] != d
        }
        if subs:
            node = node.substitute(subs)
        return node, self._sorted(self._edeps[key])

    def value_of(self, key: Key, fetch: Callable[[Key], object]) -> object:
        """The value of any key: local data directly, otherwise ``fetch(storage_key)``.

        Args:
            key: Any key of the graph (aliases are followed).
            fetch: Returns the computed value of a task key.
        """
        s = self._storage[key]
        if self._kind[s] == KIND_DATA:
            return cast(DataNode, self.nodes[s]).value
        return fetch(s)

    def result(
        self,
        fetch: Callable[[Key], object],
        container: Callable[[Iterable[Any]], Any] = list,
    ) -> Any:
        """What ``get`` returns: target values in the nesting of :attr:`keys`.

        Args:
            fetch: Returns the computed value of a task key; called once per
                distinct storage key of the targets.
            container: Passed to :func:`rebuild_result`.
        """
        cache: dict[Key, object] = {}

        def cached(k: Key) -> object:
            if k not in cache:
                cache[k] = fetch(k)
            return cache[k]

        values = {t: self.value_of(t, cached) for t in self.targets}
        return rebuild_result(self.keys, values, container)
