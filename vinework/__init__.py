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
``NotImplementedError`` naming the missing feature when used.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import Any

from . import cvine, futures, utils
from .constants import *  # noqa: F403
from .constants import CacheLevel, ResultString, TaskResult
from .core import ManagerStats
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

try:
    __version__ = _metadata.version("vinework")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [  # noqa: F405 (DaskVine and DaskVineDag load lazily, below)
    "CacheLevel", "DaskVine", "DaskVineDag", "Factory", "File", "FileKind", "FunctionCall",
    "FunctionCallNoResult", "FutureFunctionCall", "FuturePythonTask", "FuturesExecutor",
    "LibraryTask", "Manager", "ManagerError", "ManagerStats", "PythonTask",
    "PythonTaskNoResult", "RemoteTaskError", "ResourceSummary", "ResultString", "Task",
    "TaskOutputUnavailable", "TaskResult", "VineFuture", "__version__", "cvine", "futures",
    "utils",
]
__all__ += [n for n in dir() if n.startswith("VINE_")]


def __getattr__(name: str) -> Any:
    """``DaskVine`` and ``DaskVineDag`` load on first use (so ``import vinework`` does not
    import Dask)."""
    if name == "DaskVine":
        from .dask import DaskVine

        return DaskVine
    if name == "DaskVineDag":
        from .dask import DaskGraph

        return DaskGraph
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
