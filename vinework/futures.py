"""TaskVine's futures names: ``FuturesExecutor``, ``VineFuture``, ``FuturePythonTask``,
``FutureFunctionCall``, and the module functions ``wait`` and ``as_completed``.

The futures executor is not part of vinework yet: the names exist so TaskVine
programs import, and using them raises ``NotImplementedError``.
"""

from __future__ import annotations

from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from typing import Any, NoReturn

from ._later import NotYet, not_yet

_FEATURE = "the futures executor (FuturesExecutor, VineFuture)"

__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "FutureFunctionCall",
           "FuturePythonTask", "FuturesExecutor", "VineFuture", "as_completed", "wait"]


class FuturesExecutor(NotYet):
    """TaskVine's ``FuturesExecutor`` (not supported yet)."""

    feature = _FEATURE


class VineFuture(NotYet):
    """TaskVine's ``VineFuture`` (not supported yet)."""

    feature = _FEATURE


class FuturePythonTask(NotYet):
    """TaskVine's ``FuturePythonTask`` (not supported yet)."""

    feature = _FEATURE


class FutureFunctionCall(NotYet):
    """TaskVine's ``FutureFunctionCall`` (not supported yet)."""

    feature = _FEATURE


def wait(fs: Any, timeout: Any = None, return_when: str = ALL_COMPLETED) -> NoReturn:
    """TaskVine's ``futures.wait`` (not supported yet)."""
    not_yet(_FEATURE)


def as_completed(fs: Any, timeout: Any = None) -> NoReturn:
    """TaskVine's ``futures.as_completed`` (not supported yet)."""
    not_yet(_FEATURE)
