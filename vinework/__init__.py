"""vinework: a TaskVine-compatible workflow engine whose intermediates stay on workers.

Layout: ``protocol`` (wire messages and codec, no I/O; and the peer-transfer
protocol both sides use), ``core`` (the manager's pure state machine: no I/O, no
threads, no clock), ``manager`` (the asyncio shell around the core and the user's
``api``), ``worker`` (a pure ``state`` core in an asyncio shell: cache, sandbox,
fork server), ``factory`` (starting workers), ``dask`` (DaskVine). This module only
re-exports the public API, with TaskVine's names: ``import vinework as vine`` then
``vine.Manager``, ``vine.Task``, ``vine.PythonTask``, ``vine.Factory``,
``vine.DaskVine`` and every ``VINE_*`` constant (also as ``vinework.cvine``);
``vinework.utils`` and ``vinework.futures`` are TaskVine's submodules of those
names. Names whose behaviour is not in vinework yet import, and raise
``NotImplementedError`` naming the missing feature when used. Apart from the
constants, the names load on first use, so a worker process imports none of the
manager's modules (its start-up imports took 0.78 s of CPU with them, 0.33 s without).
"""

from __future__ import annotations

from importlib import import_module as _import_module
from typing import TYPE_CHECKING, Any

from . import cvine
from .constants import *  # noqa: F403
from .constants import CacheLevel, ResultString, TaskResult

if TYPE_CHECKING:
    from . import futures, utils
    from .core import ManagerStats
    from .dask import DaskGraph as DaskVineDag
    from .dask import DaskVine
    from .factory import Factory
    from .file import File, FileKind
    from .futures import FutureFunctionCall, FuturePythonTask, FuturesExecutor, VineFuture
    from .manager.api import Manager
    from .manager.errors import ManagerError
    from .serverless import FunctionCall, FunctionCallNoResult, LibraryTask
    from .task import (
        PythonTask,
        PythonTaskNoResult,
        RemoteTaskError,
        ResourceSummary,
        Task,
        TaskOutputUnavailable,
    )

# The public names load on first use: a worker process (``vinework worker``) imports
# this package too, and needs none of the manager's modules (importing them all took
# ~0.36 s of its start-up).
_LAZY: dict[str, tuple[str, str | None]] = {
    "futures": (".futures", None), "utils": (".utils", None),
    "ManagerStats": (".core", "ManagerStats"),
    "DaskVine": (".dask", "DaskVine"), "DaskVineDag": (".dask", "DaskGraph"),
    "Factory": (".factory", "Factory"),
    "File": (".file", "File"), "FileKind": (".file", "FileKind"),
    "FutureFunctionCall": (".futures", "FutureFunctionCall"),
    "FuturePythonTask": (".futures", "FuturePythonTask"),
    "FuturesExecutor": (".futures", "FuturesExecutor"),
    "VineFuture": (".futures", "VineFuture"),
    "Manager": (".manager.api", "Manager"),
    "ManagerError": (".manager.errors", "ManagerError"),
    "FunctionCall": (".serverless", "FunctionCall"),
    "FunctionCallNoResult": (".serverless", "FunctionCallNoResult"),
    "LibraryTask": (".serverless", "LibraryTask"),
    "PythonTask": (".task", "PythonTask"), "PythonTaskNoResult": (".task", "PythonTaskNoResult"),
    "RemoteTaskError": (".task", "RemoteTaskError"),
    "ResourceSummary": (".task", "ResourceSummary"), "Task": (".task", "Task"),
    "TaskOutputUnavailable": (".task", "TaskOutputUnavailable"),
}


# spelled out for static tools (ruff, mypy); tests/test_package_imports.py checks it
# against _LAZY
__all__ = [  # noqa: F405 (the public names load lazily, below)
    "CacheLevel", "DaskVine", "DaskVineDag", "Factory", "File", "FileKind", "FunctionCall",
    "FunctionCallNoResult", "FutureFunctionCall", "FuturePythonTask", "FuturesExecutor",
    "LibraryTask", "Manager", "ManagerError", "ManagerStats", "PythonTask",
    "PythonTaskNoResult", "RemoteTaskError", "ResourceSummary", "ResultString", "Task",
    "TaskOutputUnavailable", "TaskResult", "VineFuture", "__version__", "cvine", "futures",
    "utils",
]
__all__ += [n for n in dir() if n.startswith("VINE_")]


def __getattr__(name: str) -> Any:
    """Load a public name on first use (``DaskVine`` imports Dask only then)."""
    if name == "__version__":  # importlib.metadata costs ~30 ms: only when asked
        from importlib import metadata

        try:
            version = metadata.version("vinework")
        except metadata.PackageNotFoundError:  # running from a source tree
            version = "0.0.0+unknown"
        globals()[name] = version
        return version
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _import_module(where[0], __name__)
    value = module if where[1] is None else getattr(module, where[1])
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})
