"""How a Python call travels to a worker: ``dumps_call`` here, ``loads_call`` there.

A PythonTask's payload is the pickle of ``(fn, args, kwargs)``. Pickling a
function defined in a script (``__main__``) by value costs about 100 us with
cloudpickle on this kind of machine, which is most of what a small task costs
the manager; a workflow submits the same function thousands of times. So the
function is pickled on its own, once, and its bytes are reused for as long as
nothing it depends on can have changed:

* the cache holds, per function object (weakly), the bytes and a fingerprint:
  its code, defaults, closure cell contents and the global values its code
  (and the code nested in it) names, compared by identity;
* a function is cached only if every value in that fingerprint is *stable*:
  immutable atoms (numbers, strings, bytes, None, tuples and frozensets of
  those), modules, and functions or classes that are pickled by reference
  (importable, not from ``__main__``). A function that reads a mutable global
  (a list, a dict, an object), or another function defined in the script, is
  pickled afresh every time, exactly as before, so a change made between two
  submissions is always seen.

The payload is then ``(fn_bytes, args, kwargs)``: plain ``pickle`` when the
arguments are atoms, cloudpickle otherwise. ``loads_call`` accepts both that
form and a plain ``(fn, args, kwargs)``; it unpickles the function afresh for
every call, so no state a function keeps (its globals, mutable defaults)
passes from one task to the next.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle

_ATOMS = (int, float, complex, str, bytes, bool, type(None))
_cache: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _stable(v: Any) -> bool:
    t = type(v)
    if t in _ATOMS or t is types.ModuleType:
        return True
    if t is tuple or t is frozenset:
        return all(_stable(x) for x in v)
    if t in (types.FunctionType, type, types.BuiltinFunctionType):
        mod = getattr(v, "__module__", None)
        return bool(mod) and mod != "__main__" and mod in sys.modules
    return False


def _names(code: types.CodeType, out: set[str]) -> None:
    out.update(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _names(c, out)


_MISSING = object()


def _build(fn: Any) -> tuple[Any, ...] | None:
    """``fn``'s cache entry (what its pickle depends on, and the pickle), or None if some
    of what it depends on may change unseen."""
    if type(fn) is not types.FunctionType:
        return None
    code = fn.__code__
    cells = tuple(c.cell_contents for c in fn.__closure__ or ())
    found: set[str] = set()
    _names(code, found)
    g = fn.__globals__
    names = tuple(sorted(n for n in found if n in g))
    values = tuple(g[n] for n in names)
    kwd = dict(fn.__kwdefaults__ or {})
    for part in (fn.__defaults__ or (), tuple(kwd.values()), cells, values):
        if not all(_stable(v) for v in part):
            return None
    return (code, fn.__defaults__, kwd, cells, names, values, cloudpickle.dumps(fn))


def function_bytes(fn: Any) -> bytes:
    """The cloudpickle of ``fn``, reused while nothing it depends on can have changed."""
    hit = _cache.get(fn) if type(fn) is types.FunctionType else None
    if hit is not None:
        code, defaults, kwd, cells, names, values, blob = hit
        if fn.__code__ is code and fn.__defaults__ is defaults \
                and (fn.__kwdefaults__ or {}) == kwd:
            closure = fn.__closure__ or ()
            g = fn.__globals__
            if all(c.cell_contents is v for c, v in zip(closure, cells)) \
                    and all(g.get(n, _MISSING) is v for n, v in zip(names, values)):
                return blob  # type: ignore[no-any-return]
    entry = _build(fn)
    if entry is None:
        return cloudpickle.dumps(fn)
    _cache[fn] = entry
    return entry[-1]  # type: ignore[no-any-return]


def _plain(v: Any) -> bool:
    t = type(v)
    if t in _ATOMS:
        return True
    if t is tuple or t is list:
        return len(v) <= 64 and all(type(x) in _ATOMS for x in v)
    return False


def dumps_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The payload of a PythonTask: ``(function bytes, args, kwargs)``, pickled."""
    blob = function_bytes(fn)
    if all(_plain(a) for a in args) and all(_plain(v) for v in kwargs.values()):
        return pickle.dumps((blob, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps((blob, args, kwargs))


def loads_call(payload: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """Undo ``dumps_call`` (or a plain cloudpickled ``(fn, args, kwargs)``)."""
    fn, args, kwargs = cloudpickle.loads(payload)
    if type(fn) is bytes:
        fn = cloudpickle.loads(fn)
    return fn, tuple(args), dict(kwargs)


def dumps_value(value: Any) -> bytes:
    """The bytes of a return value: plain pickle when it can (several times faster for
    small values), else cloudpickle. Plain pickle refers to a function or class by name
    only when that name finds the very same object, so anything it cannot name right
    (a function of ``__main__``, a lambda, a class made at run time) makes it fail and
    goes to cloudpickle; both are read back by ``pickle.loads``."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value)


class RawResult:
    """A return value to store as it is (``PythonTask.disable_output_serialization``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def raw_result(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> RawResult:
    """Call ``fn``; its result must be bytes, kept unpickled (runs on the worker)."""
    value = fn(*args, **kwargs)
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError("a PythonTask with disable_output_serialization() must return bytes, "
                        f"not {type(value).__name__}")
    return RawResult(bytes(value))


def dumps_exception(e: BaseException, _depth: int = 0) -> bytes:
    """The bytes of an exception a task raised, such that ``pickle.loads`` gives back an
    exception of its own class with its message and attributes ("" if nothing can).

    An exception pickles as ``cls(*e.args)`` plus its ``__dict__``, which fails to load
    when ``__init__`` takes other arguments than ``.args`` holds (``__init__(self,
    code, why)`` calling ``super().__init__(f"{code}: {why}")``, or keyword-only ones):
    the round trip is tried here, where the class is known to exist, and such an
    exception is then rebuilt without calling ``__init__`` (``cls.__new__``, its
    ``args`` and its ``__dict__``), as dask's and pickle's own fallbacks do for
    objects. Attributes that cannot be pickled are dropped, not the exception. Its
    ``__cause__`` (``raise ... from ...``), which pickling drops, travels with it."""
    blob = _dumps_alone(e)
    cause = e.__cause__
    if blob and cause is not None and _depth < 8:
        inner = dumps_exception(cause, _depth + 1)
        if inner:
            try:
                both = _dumps_own(_Call(_attach_cause, blob, inner))
                if type(pickle.loads(both)) is type(e):
                    return both
            except Exception:
                pass
    return blob


def _attach_cause(blob: bytes, cause: bytes) -> BaseException:
    e: BaseException = pickle.loads(blob)
    e.__cause__ = pickle.loads(cause)
    return e


def _dumps_alone(e: BaseException) -> bytes:
    """``dumps_exception`` without the cause."""
    try:
        blob = _dumps_own(e)
        if type(pickle.loads(blob)) is type(e):
            return blob
    except Exception:
        pass
    state = dict(getattr(e, "__dict__", {}) or {})
    for attempt in (state, {k: v for k, v in state.items() if _picklable(v)}, {}):
        try:
            blob = _dumps_own(_Call(_rebuild_exception, type(e), e.args, attempt))
            if type(pickle.loads(blob)) is type(e):
                return blob
        except Exception:
            continue
    return b""


def _dumps_own(obj: Any) -> bytes:
    """cloudpickle, but an exception by its own reduction: a reducer registered for every
    exception class (tblib's, which dask.distributed installs) rebuilds without
    ``__init__``, so a ``SystemExit`` came back with ``code`` None."""
    table = {k: v for k, v in cloudpickle.Pickler.dispatch_table.items()
             if not (isinstance(k, type) and issubclass(k, BaseException))}

    class _Pickler(cloudpickle.Pickler):
        dispatch_table = table

    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _picklable(v: Any) -> bool:
    try:
        cloudpickle.dumps(v)
        return True
    except Exception:
        return False


class _Call:
    """Pickles as the call ``fn(*args)``: what is loaded is that call's result."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.what = (fn, args)

    def __reduce__(self) -> tuple[Any, ...]:
        return self.what


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...],
                       state: dict[str, Any]) -> BaseException:
    """An exception of class ``cls`` with ``args`` and ``state``, its ``__init__`` not run."""
    try:
        e = cls.__new__(cls, *args)
    except Exception:
        e = BaseException.__new__(cls)
    e.args = args
    e.__dict__.update(state)
    return e
