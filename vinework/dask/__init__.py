"""DaskVine: run Dask graphs on vinework workers.

Layout: ``graph`` is the pure bookkeeping of one Dask graph computation
(culling, readiness, pruning, payloads, packing the result; no I/O, no
threads, no clock); ``executor`` is the ``DaskVine`` Manager subclass whose
``get`` is a Dask scheduler and drives a ``graph.DaskGraph`` with real tasks.
This module only re-exports; ``vinework.dask_executor`` is kept for the
TaskVine-style import ``from vinework.dask_executor import DaskVine``.

Every module here uses absolute imports of ``dask`` (``from __future__ import
annotations`` and no implicit relative imports), so ``import dask`` inside this
package is the real Dask, not ``vinework.dask``.
"""

from .executor import DaskVine, DaskVineTaskError
from .graph import DaskGraph

__all__ = ["DaskGraph", "DaskVine", "DaskVineTaskError"]
