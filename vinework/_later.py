"""A base for TaskVine classes whose behaviour lands in a later piece of work.

Constructing one raises ``NotImplementedError`` naming what is missing, so a
TaskVine program fails at the line that needs it with a clear reason instead
of an ``AttributeError`` at import.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn


class NotYet:
    """Raise ``NotImplementedError`` on construction, naming the missing feature."""

    feature: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        not_yet(f"{type(self).__name__} ({self.feature})")


def not_yet(what: str) -> NoReturn:
    """Raise the ``NotImplementedError`` for a TaskVine feature vinework does not have yet."""
    raise NotImplementedError(f"vinework does not support {what} yet")
