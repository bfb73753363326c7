"""TaskVine's ``utils`` module: ``get_c_constant``, ``set_port_range`` and
``load_variable_from_library``.

``load_variable_from_library`` reads a value a library's context function
made; libraries are not part of vinework yet, so it says so when called.
"""

from __future__ import annotations

import os
from typing import NoReturn

from . import constants
from ._later import not_yet


def get_c_constant(name: str) -> int:
    """The value of ``VINE_<NAME>`` (``get_c_constant("result_success") == 0``)."""
    key = name if name.startswith("VINE_") else "VINE_" + name.upper()
    try:
        return int(getattr(constants, key))
    except AttributeError:
        raise ValueError(f"no TaskVine constant named {key}") from None


def set_port_range(low: int, high: int) -> None:
    """Make managers started afterwards listen on a port in ``low..high`` (TaskVine sets
    ``TCP_LOW_PORT``/``TCP_HIGH_PORT`` in the environment; so does this)."""
    low, high = int(low), int(high)
    if not 0 < low <= high <= 65535:
        raise ValueError(f"bad port range {low}-{high}")
    os.environ["TCP_LOW_PORT"] = str(low)
    os.environ["TCP_HIGH_PORT"] = str(high)


def load_variable_from_library(name: str) -> NoReturn:
    """A variable a library's context function set up (TaskVine's stateful serverless)."""
    not_yet("load_variable_from_library (serverless libraries: LibraryTask, FunctionCall)")
