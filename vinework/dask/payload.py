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
  a lambda, a closure, a module registered by value) is cloudpickled once per
  run, and a node refers to it by its index in the payload's own *function
  table*: the bytes of the functions that node calls, the same bytes objects
  in every payload that calls them. Workers unpickle each function once per
  process (:func:`run_encoded` caches them by content). A graph of thousands
  of distinct lambdas (``[delayed(lambda i: ...)(i) for i in ...]``) thus costs
  one pickle per lambda, not a table of all of them in every payload.
* Everything else in a node is pickled with the plain C pickler. A
  ``reducer_override`` hook sees every object that is not a plain builtin
  container or scalar; if one would need cloudpickle (a by-value function or
  class hidden in a literal argument), or the node holds a GraphNode kind this
  module does not know (fused subgraphs, aliases inside arguments), encoding
  gives up and the caller falls back to cloudpickling the node.

The payload is ``pickle.dumps((run_encoded, (blobs, encoded, dep_keys), {}))``,
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
        self._blobs: dict[int, tuple[Any, bytes]] = {}  # id(function) -> (it, its pickle)
        self._by_value_cache: dict[int, tuple[Any, bool]] = {}  # id -> (obj kept alive, verdict)

    @property
    def table_size(self) -> int:
        """Number of distinct by-value functions pickled in this run."""
        return len(self._blobs)

    def _is_by_value(self, obj: Any) -> bool:
        hit = self._by_value_cache.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        verdict = _by_value(obj)
        self._by_value_cache[id(obj)] = (obj, verdict)
        return verdict

    def _func(self, func: Any, used: dict[int, int], table: list[Any]) -> Any:
        """The function itself, or its index in this node's table if it is pickled by
        value (``used``: id -> index, ``table``: the functions, for this node)."""
        if not isinstance(func, _PLAIN_CALLABLES) or not self._is_by_value(func):
            return func
        i = used.get(id(func))
        if i is None:
            i = used[id(func)] = len(table)
            table.append(func)
        return i

    def _encode(self, obj: Any, used: dict[int, int], table: list[Any]) -> Any:
        t = type(obj)
        if t is TaskRef:
            return (REF, obj.key)
        if t in _TASK_TYPES:
            args = tuple(self._encode(a, used, table) for a in obj.args)
            kwargs = {k: self._encode(v, used, table) for k, v in obj.kwargs.items()} \
                if obj.kwargs else None
            return (CALL, self._func(obj.func, used, table), args, kwargs)
        if t is DataNode:
            return (LIT, obj.value)
        if t is Alias:  # a key reference inside arguments (legacy graphs): its target's value
            return (REF, obj.target)
        if isinstance(obj, (TaskRef, Task, DataNode)) or hasattr(obj, "dependencies"):
            raise CannotEncode(f"unsupported node type {t.__name__}")
        return (LIT, obj)

    def encode(self, node: Any) -> tuple[Any, list[Any]]:
        """The plain-tuple form of a payload node (see the module docstring) and its
        function table (the by-value functions it calls, by index).

        Raises:
            CannotEncode: If the node needs the general path.
        """
        if type(node) not in _TASK_TYPES:
            raise CannotEncode(f"unsupported node type {type(node).__name__}")
        table: list[Any] = []
        return self._encode(node, {}, table), table

    def _blob(self, func: Any) -> bytes:
        hit = self._blobs.get(id(func))
        if hit is None or hit[0] is not func:
            hit = self._blobs[id(func)] = (func, cloudpickle.dumps(func))
        return hit[1]

    def payload(self, node: Any, dep_keys: list[Any]) -> bytes:
        """A PythonTask payload computing ``node`` from input files ``d0``, ``d1``, ...

        ``dep_keys[i]`` is the key whose pickled value the task finds in ``d{i}``.

        Raises:
            CannotEncode: If the node needs the general path.
        """
        enc, table = self.encode(node)
        blobs = tuple(self._blob(f) for f in table)
        buf = io.BytesIO()
        _Pickler(buf, self._is_by_value).dump((self._run_fn, (blobs, enc, dep_keys), {}))
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


_functions: dict[bytes, Any] = {}  # worker side: by-value functions already unpickled
_FUNCTIONS_MAX = 1024


def _function(blob: bytes) -> Any:
    fn = _functions.get(blob)
    if fn is None:
        if len(_functions) >= _FUNCTIONS_MAX:
            _functions.clear()
        fn = _functions[blob] = cloudpickle.loads(blob)
    return fn


def run_encoded(blobs: tuple[bytes, ...], enc: Any, dep_keys: list[Any]) -> Any:
    """Worker side: load the inputs ``d0``, ``d1``, ... and evaluate the encoded node
    (``blobs``: the pickles of the by-value functions it calls, by index)."""
    table = [_function(b) for b in blobs]
    values: dict[Any, object] = {}
    for i, k in enumerate(dep_keys):
        with open(f"d{i}", "rb") as f:
            values[k] = cloudpickle.load(f)
    return evaluate(enc, values, table)
