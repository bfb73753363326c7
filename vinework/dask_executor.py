"""Compatibility import path: ``from vinework.dask_executor import DaskVine``.

The implementation lives in :mod:`vinework.dask`; this module only re-exports it
so TaskVine-style samples run with the import line changed.
"""

from .dask import DaskVine, DaskVineTaskError

__all__ = ["DaskVine", "DaskVineTaskError"]
