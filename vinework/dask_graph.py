"""Compatibility import path for :mod:`vinework.dask.graph` (pure Dask graph bookkeeping)."""

from .dask.graph import (
    KIND_ALIAS,
    KIND_DATA,
    KIND_TASK,
    DaskGraph,
    Key,
    execute_node,
    flatten_keys,
    modules_of_graph,
    normalize_graph,
    rebuild_result,
)

__all__ = [
    "KIND_ALIAS", "KIND_DATA", "KIND_TASK", "DaskGraph", "Key", "execute_node",
    "flatten_keys", "modules_of_graph", "normalize_graph", "rebuild_result",
]  # fmt: skip
