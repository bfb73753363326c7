"""TaskVine's ``utils`` module: ``get_c_constant``, ``set_port_range`` and
``load_variable_from_library``.

``load_variable_from_library`` reads a value a library's context function
made (inside a FunctionCall: the dict the library's ``library_context_info``
function returned, made once per library instance).
"""

from __future__ import annotations

import os
from typing import Any

from . import constants


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


def load_variable_from_library(name: str) -> Any:
    """The variable ``name`` of the dict the library's context function returned
    (``library_context_info=[fn, args, kwargs]``), in a FunctionCall running in that
    library. Raises ``KeyError`` naming the variables there are, and ``RuntimeError``
    outside a library."""
    import sys
    lib = sys.modules.get("vinework.worker.libprocess")
    if lib is None or not getattr(lib, "RUNNING", False):
        raise RuntimeError("load_variable_from_library works only inside a FunctionCall "
                           "running in a library (create_library_from_functions)")
    ctx: dict[str, Any] = lib.CONTEXT
    try:
        return ctx[name]
    except KeyError:
        raise KeyError(f"the library's context has no variable {name!r} (it has: "
                       f"{', '.join(sorted(map(str, ctx))) or 'none'}; set them with "
                       "library_context_info=[fn, args, kwargs], fn returning a dict)"
                       ) from None
