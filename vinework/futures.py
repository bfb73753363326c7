"""TaskVine's futures: ``FuturesExecutor``, ``VineFuture``, ``FuturePythonTask``,
``FutureFunctionCall``, and the module functions ``wait`` and ``as_completed``.

``import vinework as vine`` then ``vine.FuturesExecutor(...)``; ``vine.futures.wait``
and ``vine.futures.as_completed`` are TaskVine's names of ``concurrent.futures.wait``
and ``as_completed`` (they also submit a future whose task was made but not
submitted). The pieces: ``futures_future.py`` (the future, its tasks, the module
functions), ``futures_executor.py`` (the executor and its driver thread),
``futures_args.py`` (how a future argument is loaded on the worker).
"""

from __future__ import annotations

from concurrent.futures import CancelledError, TimeoutError

from .futures_executor import FuturesExecutor
from .futures_future import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    FutureFunctionCall,
    FuturePythonTask,
    VineFuture,
    as_completed,
    wait,
)

__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "CancelledError",
           "FutureFunctionCall", "FuturePythonTask", "FuturesExecutor", "TimeoutError",
           "VineFuture", "as_completed", "wait"]
