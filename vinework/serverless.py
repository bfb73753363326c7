"""TaskVine's serverless names: ``LibraryTask``, ``FunctionCall``, ``FunctionCallNoResult``.

Libraries (a long-lived process on a worker serving function calls) are not
part of vinework yet: the classes exist so TaskVine programs import, and
using them raises ``NotImplementedError`` naming the feature.
"""

from __future__ import annotations

from ._later import NotYet

_FEATURE = "serverless libraries: LibraryTask, FunctionCall, create_library_from_functions"


class LibraryTask(NotYet):
    """TaskVine's ``LibraryTask`` (not supported yet)."""

    feature = _FEATURE


class FunctionCall(NotYet):
    """TaskVine's ``FunctionCall`` (not supported yet)."""

    feature = _FEATURE


class FunctionCallNoResult(Exception):
    """What a failed FunctionCall's ``output`` is, in TaskVine."""
