"""TaskVine's ``cvine`` module: every ``VINE_*`` constant with TaskVine's value.

Programs written for TaskVine import constants from its low-level binding
(``from ndcctools.taskvine.cvine import VINE_RESULT_SUCCESS``, or
``vine.cvine.VINE_ALLOCATION_MODE_MAX``); the same names live here, and at
the top level of ``vinework``.
"""

from __future__ import annotations

from . import constants as _constants
from .constants import *  # noqa: F403

__all__ = [n for n in vars(_constants) if n.startswith("VINE_")]
