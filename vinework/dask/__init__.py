"""DaskVine: run Dask graphs on vinework workers.

Layout: ``executor`` is the ``DaskVine`` Manager subclass whose ``get`` is a
Dask scheduler: it takes TaskVine's options and hands the work to ``run``
(one ``get`` call: submitting ready keys as tasks, retries, results);
``small`` answers literal-only requests at the manager and runs a small graph
as one task on one worker (the fast path for many small computes);
``graph`` is the pure bookkeeping of one Dask graph computation (culling,
readiness, depths, pruning, packing the result; no I/O, no threads, no
clock); ``priority`` the pure ``task_priority_mode`` policies; ``payload``
the cheap per-task payloads; ``errors`` DaskVine's own error.

Importing this package does not import Dask: ``DaskVine`` and
``DaskVineTaskError`` come from dask-free modules, and the names that need
Dask (``DaskGraph``) load on first access. Without Dask installed,
``DaskVine(...)`` raises ImportError naming ``pip install vinework[dask]``.
``vinework.dask_executor`` is kept for the TaskVine-style import
``from vinework.dask_executor import DaskVine``.

Every module here uses absolute imports of ``dask`` (``from __future__ import
annotations`` and no implicit relative imports), so ``import dask`` inside this
package is the real Dask, not ``vinework.dask``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DaskVineTaskError
from .executor import DaskVine

if TYPE_CHECKING:
    from .graph import DaskGraph

__all__ = ["DaskGraph", "DaskVine", "DaskVineTaskError"]


def __getattr__(name: str) -> Any:
    if name == "DaskGraph":  # needs Dask: load on first use
        from .graph import DaskGraph

        return DaskGraph
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
