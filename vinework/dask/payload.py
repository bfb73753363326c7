"""Cheap per-task payloads for Dask nodes: encode once per node, pickle functions once per run.

Theory of operation. Cloudpickling a ``dask._task_spec.Task`` per task costs
about 100 us on the manager (Task reduces through Python-level
``__getstate__``; a function defined in ``__main__`` is pickled by value again
for every task) and makes every payload carry the function's code. Instead:

* :class:`PayloadEncoder` rewrites a node into nested plain tuples that the C
  pickler handles without calling back into Python: ``(REF, key)`` for a
  ``TaskRef`` (or an ``Alias`` inside arguments, as legacy graphs make for
  keys in lists), ``(LIT, value)`` for a literal or ``DataNode``, ``(CALL, func,
  args, kwargs)`` for a ``Task`` (``List``/``Tuple``/``Set``/``Dict`` are
  Tasks too: their func builds the container). The node's evaluation is
  exactly ``Task.__call__``'s: ``func(*evaluated_args, **evaluated_kwargs)``.
* A function that cloudpickle would pickle by value (defined in ``__main__``,
  a lambda, a closure, a module registered by value) is put in the run's
  *function table* and the node refers to it by index. The table is
  cloudpickled once (again only when a new function joins it) and the same
  bytes object travels inside every payload; workers unpickle it once per
  process (:func:`run_encoded` caches it by content).
* Everything else in a node is pickled with the plain C pickler. A
  ``reducer_override`` hook sees every object that is not a plain builtin
  container or scalar; if one would need cloudpickle (a by-value function or
  class hidden in a literal argument), or the node holds a GraphNode kind this
  module does not know (fused subgraphs, aliases inside arguments), encoding
  gives up and the caller falls back to cloudpickling the node.

The payload is ``pickle.dumps((run_encoded, (table, encoded, dep_keys), {}))``,
the ``(fn, args, kwargs)`` triple a PythonTask's payload holds; the worker's
``cloudpickle.loads`` reads it. This module is pure: no I/O beyond reading the
task's input files in :func:`run_encoded`, on the worker.
"""

from __future__ import annotations

import io
import pickle
import types
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle
from dask._task_spec import Alias, DataNode, Dict, List, Set, Task, TaskRef, Tuple

__all__ = ["CALL", "LIT", "REF", "CannotEncode", "PayloadEncoder", "evaluate", "run_encoded"]

REF, LIT, CALL = 0, 1, 2
_TASK_TYPES = frozenset({Task, List, Tuple, Set, Dict})
_PLAIN_CALLABLES = (types.FunctionType, types.BuiltinFunctionType, type)


class CannotEncode(Exception):
    """This node needs the general path (cloudpickle of the whole node)."""


def _by_value(obj: Any) -> bool:
    """Whether cloudpickle would pickle this function or class by value."""
    if not isinstance(obj, (types.FunctionType, type)):
        return False  # builtins and other callables: by reference or their own reduce
    check = getattr(getattr(cloudpickle, "cloudpickle", None), "_should_pickle_by_reference", None)
    if check is not None:
        try:
            return not check(obj)
        except Exception:
            return True
    module = getattr(obj, "__module__", None)
    return module in (None, "__main__", "__mp_main__") or "<" in getattr(obj, "__qualname__", "<")


class _Pickler(pickle.Pickler):
    """The C pickler, refusing anything that only cloudpickle can pickle correctly."""

    def __init__(self, file: io.BytesIO, by_value: Callable[[Any], bool]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._by_value = by_value

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _PLAIN_CALLABLES):
            if self._by_value(obj):
                raise CannotEncode(f"{obj!r} must be pickled by value")
        elif self._by_value(type(obj)):
            raise CannotEncode(f"an instance of {type(obj)!r}, a class pickled by value")
        return NotImplemented


class PayloadEncoder:
    """Builds PythonTask payloads for the nodes of one graph computation.

    Not thread-safe; one per ``DaskVine.get`` call.
    """

    def __init__(self, run_fn: Callable[..., Any] | None = None) -> None:
        self._run_fn = run_fn or run_encoded
        self._table: list[Any] = []
        self._index: dict[int, int] = {}  # id(function) -> index in the table
        self._table_blob = cloudpickle.dumps(self._table)
        self._by_value_cache: dict[int, tuple[Any, bool]] = {}  # id -> (obj kept alive, verdict)

    @property
    def table_size(self) -> int:
        """Number of by-value functions shipped in the table."""
        return len(self._table)

    def _is_by_value(self, obj: Any) -> bool:
        hit = self._by_value_cache.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        verdict = _by_value(obj)
        self._by_value_cache[id(obj)] = (obj, verdict)
        return verdict

    def _func(self, func: Any) -> Any:
        """The function itself, or its index in the table if it is pickled by value."""
        if not isinstance(func, _PLAIN_CALLABLES) or not self._is_by_value(func):
            return func
        i = self._index.get(id(func))
        if i is None or self._table[i] is not func:
            i = len(self._table)
            self._table.append(func)
            self._index[id(func)] = i
            self._table_blob = cloudpickle.dumps(self._table)
        return i

    def _encode(self, obj: Any) -> Any:
        t = type(obj)
        if t is TaskRef:
            return (REF, obj.key)
        if t in _TASK_TYPES:
            args = tuple(self._encode(a) for a in obj.args)
            kwargs = {k: self._encode(v) for k, v in obj.kwargs.items()} if obj.kwargs else None
            return (CALL, self._func(obj.func), args, kwargs)
        if t is DataNode:
            return (LIT, obj.value)
        if t is Alias:  # a key reference inside arguments (legacy graphs): its target's value
            return (REF, obj.target)
        if isinstance(obj, (TaskRef, Task, DataNode)) or hasattr(obj, "dependencies"):
            raise CannotEncode(f"unsupported node type {t.__name__}")
        return (LIT, obj)

    def encode(self, node: Any) -> Any:
        """The plain-tuple form of a payload node (see the module docstring).

        Raises:
            CannotEncode: If the node needs the general path.
        """
        if type(node) not in _TASK_TYPES:
            raise CannotEncode(f"unsupported node type {type(node).__name__}")
        return self._encode(node)

    def payload(self, node: Any, dep_keys: list[Any]) -> bytes:
        """A PythonTask payload computing ``node`` from input files ``d0``, ``d1``, ...

        ``dep_keys[i]`` is the key whose pickled value the task finds in ``d{i}``.

        Raises:
            CannotEncode: If the node needs the general path.
        """
        enc = self.encode(node)
        buf = io.BytesIO()
        _Pickler(buf, self._is_by_value).dump(
            (self._run_fn, (self._table_blob, enc, dep_keys), {}))
        return buf.getvalue()


def evaluate(enc: Any, values: Mapping[Any, object], table: list[Any]) -> Any:
    """Compute an encoded node; ``values`` holds the value of every referenced key."""
    tag = enc[0]
    if tag == REF:
        return values[enc[1]]
    if tag == LIT:
        return enc[1]
    _, func, args, kwargs = enc
    if type(func) is int:
        func = table[func]
    argv = [evaluate(a, values, table) for a in args]
    if kwargs:
        return func(*argv, **{k: evaluate(v, values, table) for k, v in kwargs.items()})
    return func(*argv)


_tables: dict[bytes, list[Any]] = {}  # worker side: function tables already unpickled


def run_encoded(table_blob: bytes, enc: Any, dep_keys: list[Any]) -> Any:
    """Worker side: load the inputs ``d0``, ``d1``, ... and evaluate the encoded node."""
    table = _tables.get(table_blob)
    if table is None:
        if len(_tables) > 64:
            _tables.clear()
        table = _tables[table_blob] = cloudpickle.loads(table_blob)
    values: dict[Any, object] = {}
    for i, k in enumerate(dep_keys):
        with open(f"d{i}", "rb") as f:
            values[k] = cloudpickle.load(f)
    return evaluate(enc, values, table)
