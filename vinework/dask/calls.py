"""DaskVine's ``task_mode="function-calls"``: Dask tasks as FunctionCalls of one library.

``CallsRun`` is a ``DaskRun`` whose tasks are ``FunctionCall``s of a library
made for the ``get`` (``library_for``): it holds ``run_node`` (load the
dependencies from the call's input files ``d0``, ``d1``, ... and run the node),
the user's ``lib_extra_functions``, and imports the graph's modules and
``lib_modules`` once per instance. Everything else (ready queue, priorities,
temps kept on the workers, retries, pruning, the result) is ``DaskRun``'s, so
the results are those of ``task_mode="tasks"``. ``lib_resources`` are TaskVine's
keys: ``cores``, ``memory``, ``disk``, ``gpus`` (each instance's) and ``slots``
(its function slots).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..serverless import FunctionCall, LibraryTask, library_payload
from .errors import TaskRaisedBase
from .run import DaskRun, _run_node

RUN_NODE = "vinework_dask_run_node"
_LIB_KEYS = ("cores", "memory", "disk", "gpus", "slots")
_ids = itertools.count(1)


def vinework_dask_run_node(node: Any, dep_names: list[tuple[Any, str]]) -> Any:
    """Library side: the node's value from its dependencies' files in the call's sandbox
    (a ``sys.exit`` or another ``BaseException`` comes back inside ``TaskRaisedBase``: the
    library stays up)."""
    try:
        return _run_node(node, dep_names)
    except Exception:
        raise
    except BaseException as e:
        raise TaskRaisedBase(e) from None


def library_for(m: Any, modules: list[str], extra: Iterable[Callable[..., Any]] | None,
                resources: Mapping[str, int] | None) -> LibraryTask:
    """A library for one ``get``: ``run_node``, the extra functions, the modules."""
    res = dict(resources or {})
    unknown = sorted(set(res) - set(_LIB_KEYS))
    if unknown:
        raise ValueError(f"lib_resources: unknown key(s) {', '.join(unknown)}; use "
                         f"{', '.join(_LIB_KEYS)}")
    name = f"dask-library-{os.getpid()}-{next(_ids)}"
    extra = list(extra or ())
    lib: LibraryTask = m.create_library_from_functions(
        name, vinework_dask_run_node, *extra, exec_mode="direct")
    # the graph's modules are imported where they can be (as the warm interpreters do)
    lib.payload = library_payload({f.__name__: f for f in [vinework_dask_run_node, *extra]},
                                  None, [], {}, optional_modules=modules)
    for key in ("cores", "memory", "disk", "gpus"):
        if key in res:
            getattr(lib, "set_" + key)(int(res[key]))
    if "slots" in res:
        lib.set_function_slots(int(res["slots"]))
    return lib


class CallsRun(DaskRun):
    """A ``DaskRun`` that submits FunctionCalls of ``library`` (see the module docstring)."""

    library = ""

    def _submit(self, key: Any, priority: float) -> None:
        g = self.graph
        node, deps = g.task_payload(key)
        dep_names = [(d, f"d{i}") for i, d in enumerate(deps)]
        temp = self.worker_transfers and not g.is_target(key)
        if temp and self.checkpoint_fn is not None and self.checkpoint_fn(g, key):
            temp = False
        t = FunctionCall(self.library, RUN_NODE, node, dep_names)
        for d, name in dep_names:
            t.add_input(self.files[d], name)
        for f, name in self.extra_files.items():
            t.add_input(f, name)
        if temp:
            t.enable_temp_output()
        self._send(key, t, node, priority)
