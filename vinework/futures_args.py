"""Futures as task arguments: the worker-side half, which loads them from the sandbox.

A ``VineFuture`` passed to a later ``FuturesExecutor.submit`` does not travel as
a value. The earlier task keeps its return value on the worker that made it
(temp output: a cloudpickle file in the worker's cache); the later task takes
that temp as an input file and its argument is loaded from the file on the
worker, just before the function is called. So the value moves worker to
worker (or stays put) and never through the manager.

The manager side replaces each future argument by a :class:`FutureArg` marker
naming the input's place in the sandbox, and submits the call
``call_with_futures(function_bytes, args, kwargs, raw)``; on the worker that
wrapper unpickles the function, swaps every marker for the value read from its
file, and calls the function. A FunctionCall runs a library's function by
name, so there the marker is a :class:`SandboxValue`, which *unpickles as* the
value: the library unpickles a call's arguments inside the call's sandbox.
Nothing here imports the manager: a worker's warm interpreter only needs this
module, ``pickling`` and cloudpickle.
"""

from __future__ import annotations

from typing import Any

import cloudpickle

from .pickling import raw_result

__all__ = ["FutureArg", "SandboxValue", "call_with_futures", "load_argument",
           "load_from_sandbox"]


class FutureArg:
    """Stands for a future's value in a task's arguments: the value is read, on the
    worker, from the sandbox file ``remote_name`` (cloudpickled, or the function's own
    bytes when ``raw``: its producer disabled output serialization)."""

    __slots__ = ("raw", "remote_name")

    def __init__(self, remote_name: str, raw: bool = False) -> None:
        self.remote_name = remote_name
        self.raw = raw

    def __reduce__(self) -> tuple[Any, ...]:
        return (FutureArg, (self.remote_name, self.raw))

    def __repr__(self) -> str:
        return f"FutureArg({self.remote_name!r})"


class SandboxValue(FutureArg):
    """A ``FutureArg`` that turns into the value when unpickled (in the sandbox): for
    the arguments of a FunctionCall, which its library unpickles itself."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (load_from_sandbox, (self.remote_name, self.raw))


def load_from_sandbox(remote_name: str, raw: bool = False) -> Any:
    """Unpickling a ``SandboxValue``: the value, read from the current directory."""
    return load_argument(FutureArg(remote_name, raw))


def load_argument(arg: FutureArg) -> Any:
    """The value of one future argument, read from the task's sandbox (the current
    directory while the task runs)."""
    try:
        with open(arg.remote_name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise RuntimeError(f"the value of a future argument is not in the sandbox as "
                           f"{arg.remote_name!r}: {e}") from e
    return data if arg.raw else cloudpickle.loads(data)


def call_with_futures(fn_bytes: bytes, args: tuple[Any, ...], kwargs: dict[str, Any],
                      raw: bool = False) -> Any:
    """Run on the worker: ``fn(*args, **kwargs)`` with every :class:`FutureArg` replaced
    by the value it stands for (each file read once, however often it is passed).

    ``raw``: the caller disabled output serialization, so the function must return bytes
    (kept as they are: ``pickling.raw_result``).
    """
    fn = cloudpickle.loads(fn_bytes)
    loaded: dict[str, Any] = {}

    def value(a: Any) -> Any:
        if type(a) is not FutureArg:
            return a
        if a.remote_name not in loaded:
            loaded[a.remote_name] = load_argument(a)
        return loaded[a.remote_name]

    argv = tuple(value(a) for a in args)
    kw = {k: value(v) for k, v in kwargs.items()}
    if raw:
        return raw_result(fn, *argv, **kw)
    return fn(*argv, **kw)
