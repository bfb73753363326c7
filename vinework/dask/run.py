"""One ``DaskVine.get`` call: submit ready Dask keys as tasks, collect results, clean up.

:class:`DaskRun` drives a :class:`vinework.dask.graph.DaskGraph` with real
tasks on a :class:`vinework.dask.executor.DaskVine`. Every Dask task becomes a
:class:`~vinework.task.PythonTask` that reads the values of its dependencies
from its input files (``d0``, ``d1``, ... in the order of the node's
dependency keys) and evaluates the node. Its payload is normally built by
:class:`vinework.dask.payload.PayloadEncoder` (the node as plain tuples,
by-value functions pickled once per run, no cloudpickle per task) and run by
:func:`vinework.dask.payload.run_encoded`; nodes it cannot encode (and every
node when a ``wrapper`` is given) are cloudpickled whole and run by
:func:`_run_node` with :func:`vinework.dask.graph.execute_node`.

Ready keys wait in a queue ordered by the priority that
:class:`vinework.dask.priority.TaskPriorities` gives them when they become
ready (``task_priority_mode``); the same number is the task's priority at the
manager. A task that fails is submitted again until it has run ``retries``
times, then its exception (or a :class:`DaskVineTaskError`) is raised.

Per-task cost on the manager is kept flat: one payload encoding, one
``submit``; the run keeps one File handle (and, for ``largest-input-first``,
one size) per produced value, released at the end or earlier with
``prune_depth``. This module imports Dask; :mod:`vinework.dask.executor` loads
it on first use.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import cloudpickle
from dask.utils import key_split

from ..file import File
from ..task import PythonTask, RemoteTaskError, Task
from . import graph as dask_graph
from .errors import DaskVineTaskError, TaskRaisedBase
from .graph import DaskGraph, Key, modules_of_graph
from .payload import CannotEncode, PayloadEncoder, run_encoded
from .priority import TaskPriorities


class DaskManager(Protocol):
    """What a run needs of its manager (``DaskVine`` is one; naming the protocol here keeps
    this module from importing the executor that imports it)."""

    def submit(self, t: Task) -> int: ...
    def declare_buffer(self, buffer: bytes | str | None = None,
                       cache: bool | str | int = False, peer_transfer: bool = True) -> File: ...
    def undeclare_file(self, f: File) -> None: ...
    def _keep_private(self, tag: str, private: bool = True) -> None: ...
    def fetch_file(self, f: File, timeout: float | None = None) -> bytes: ...
    def cancel_by_task_id(self, task_id: int) -> bool: ...
    def wait_for_tag(self, tag: str, timeout: Any = ...) -> Task | None: ...
    def _file_sizes(self, files: list[File]) -> list[int]: ...
    def _hoist_for_dask(self, tops: list[str]) -> None: ...

__all__ = ["DaskRun", "category_of"]

log = logging.getLogger(__name__)

WAIT_SECONDS = 5
CLEANUP_SECONDS = 30  # at most this long collecting the cancelled tasks of a failed get

_run_ids = itertools.count(1)


def _run_node(node: Any, dep_names: list[tuple[Key, str]], wrapper: Any = None,
              key: Any = None) -> Any:
    """Worker side: load each dependency value from its input file and run the node."""
    values: dict[Key, object] = {}
    for k, name in dep_names:
        with open(name, "rb") as f:
            values[k] = cloudpickle.load(f)
    if wrapper is not None:
        return wrapper(key, dask_graph.execute_node, node, values)
    return dask_graph.execute_node(node, values)


def _python_task_defaults() -> dict[str, Any] | None:
    """What ``PythonTask.__init__`` sets beyond ``Task.__init__``, if all immutable."""
    base = set(vars(Task("python:run_encoded")))
    extra = {k: v for k, v in vars(PythonTask(run_encoded)).items() if k not in base}
    simple = (type(None), bool, int, float, str, bytes, type(run_encoded))
    return extra if all(isinstance(v, simple) for v in extra.values()) else None


_PY_DEFAULTS = _python_task_defaults()


class _DaskTask(PythonTask):
    """A PythonTask whose payload :class:`PayloadEncoder` built (no cloudpickle per task)."""

    def __init__(self, payload: bytes) -> None:
        if _PY_DEFAULTS is None:  # PythonTask grew mutable state: take the slow, safe way
            super().__init__(run_encoded)
        else:
            Task.__init__(self, "python:run_encoded")
            self.__dict__.update(_PY_DEFAULTS)
        self.payload = payload


def category_of(node: Any) -> str:
    """The task category of a node: ``dask-<name of the function it calls>``."""
    func = getattr(node, "func", None)
    name = getattr(func, "__name__", None) or type(node).__name__
    return f"dask-{name}"


class DaskRun:
    """One ``get`` call: submits ready keys by priority, collects results, cleans up."""

    def __init__(self, m: DaskManager, graph: DaskGraph, *, priorities: TaskPriorities,
                 worker_transfers: bool, checkpoint_fn: Any, resources: dict[str, int],
                 extra_files: dict[File, str], env_vars: dict[str, Any], retries: int,
                 verbose: bool, wrapper: Any, wrapper_proc: Any, prune_depth: int,
                 submit_per_cycle: int | None, max_pending: int | None) -> None:
        self.m = m
        self.graph = graph
        self.priorities = priorities
        self.worker_transfers = worker_transfers
        self.checkpoint_fn = checkpoint_fn
        self.resources = resources
        self.extra_files = extra_files
        self.env_vars = env_vars
        self.retries = retries
        self.verbose = verbose
        self.wrapper = wrapper
        self.wrapper_proc = wrapper_proc
        self.prune_depth = prune_depth
        self.submit_per_cycle = submit_per_cycle
        self.max_pending = max_pending
        self.files: dict[Key, File] = {}  # storage key -> file holding its pickled value
        self.sizes: dict[Key, int] = {}  # storage key -> bytes of that file, once known
        self.values: dict[Key, object] = {}  # values held at the manager (targets, checkpoints)
        self.running: dict[int, tuple[Key, PythonTask]] = {}
        self.attempts: dict[Key, int] = {}
        self.queue: list[tuple[float, int, Key]] = []  # (-priority, ready order, key)
        self.ready_count = 0
        self.encoder = PayloadEncoder()
        self.tag = f"dask-{os.getpid()}-{next(_run_ids)}"
        # kind of key (dask's key_split) -> longest wall time in the latest run that ran
        # it (what the small-graph test reads); this run's own go in at its end
        self.times: dict[str, float] | None = None
        self.run_times: dict[str, float] = {}

    # ------------------------------------------------------------------ queue
    def _enqueue(self, keys: list[Key]) -> None:
        """Queue keys that just became ready (given in the graph's order)."""
        g, pr = self.graph, self.priorities
        if pr.needs_input_bytes:
            self._learn_sizes(keys)
        for key in keys:
            p = pr.priority(
                depth=g.depth_of(key) if pr.needs_depth else 0,
                input_bytes=(sum(self.sizes.get(d, 0) for d in g.input_keys(key))
                             if pr.needs_input_bytes else 0),
                category=category_of(g.nodes[key]) if pr.needs_times else "",
            )
            self.ready_count += 1
            heapq.heappush(self.queue, (-p, self.ready_count, key))

    def _learn_sizes(self, keys: list[Key]) -> None:
        """Ask the manager, in one call, the sizes of the inputs of ``keys`` not yet known."""
        g = self.graph
        unknown = list(dict.fromkeys(
            d for k in keys for d in g.input_keys(k)
            if d not in self.sizes and d in self.files))
        if unknown:
            sizes = self.m._file_sizes([self.files[d] for d in unknown])
            for d, size in zip(unknown, sizes, strict=True):
                if size >= 0:
                    self.sizes[d] = size

    def _flush(self) -> None:
        n = 0
        while self.queue:
            if self.submit_per_cycle is not None and n >= self.submit_per_cycle:
                return
            if self.max_pending is not None and len(self.running) >= self.max_pending:
                return
            neg_p, _, key = heapq.heappop(self.queue)
            self._submit(key, -neg_p)
            n += 1

    # ------------------------------------------------------------------ submit
    def _submit(self, key: Key, priority: float) -> None:
        g = self.graph
        node, deps = g.task_payload(key)
        dep_names = [(d, f"d{i}") for i, d in enumerate(deps)]
        temp = self.worker_transfers and not g.is_target(key)
        if temp and self.checkpoint_fn is not None and self.checkpoint_fn(g, key):
            temp = False  # bring this one back (a checkpoint at the manager)
        t: PythonTask | None = None
        if self.wrapper is not None:
            t = PythonTask(_run_node, node, dep_names, self.wrapper, key)
        else:
            try:
                t = _DaskTask(self.encoder.payload(node, deps))
            except CannotEncode:
                t = PythonTask(_run_node, node, dep_names)
        for d, name in dep_names:
            t.add_input(self.files[d], name)
        for f, name in self.extra_files.items():
            t.add_input(f, name)
        if temp:
            t.enable_temp_output()
        t.set_cores(int(self.resources.get("cores", 1)))
        if "memory" in self.resources:
            t.set_memory(int(self.resources["memory"]))
        if "disk" in self.resources:
            t.set_disk(int(self.resources["disk"]))
        if "gpus" in self.resources:
            t.set_gpus(int(self.resources["gpus"]))
        self._send(key, t, node, priority)

    def _send(self, key: Key, t: PythonTask, node: Any, priority: float) -> None:
        """The options every task of this run gets, then submit it."""
        for name, value in self.env_vars.items():
            t.set_env_var(name, value(self.m, t) if callable(value) else value)
        t.set_priority(priority)
        t.set_category(category_of(node))
        t.set_tag(self.tag)
        tid = self.m.submit(t)
        self.running[tid] = (key, t)

    # ------------------------------------------------------------------ complete
    def _completed(self, key: Key, t: PythonTask) -> list[Key]:
        g = self.graph
        if self.priorities.needs_times:
            self.priorities.task_finished(t.category, getattr(t, "wall_time", 0.0))
        if self.times is not None:
            kind, took = key_split(key), float(getattr(t, "wall_time", 0.0) or 0.0)
            if took > self.run_times.get(kind, -1.0):
                self.run_times[kind] = took
        if t.temp_output:
            self.files[key] = t.output_file
        else:
            value = t.output
            if self.wrapper is not None:
                wrapped, value = value
                self.wrapper_proc(wrapped)
            self.values[key] = value
            self._upload(key, value)
        ready = g.mark_done(key)
        for p in g.prunable_after(key, self.prune_depth):
            f = self.files.get(p)
            if f is not None:
                self.m.undeclare_file(f)
            if not g.is_target(p):
                self.values.pop(p, None)
        return ready

    def _failed(self, key: Key, t: PythonTask) -> None:
        """Submit ``key`` again unless it has run ``retries`` times; then raise."""
        out = t._output
        if isinstance(out, TaskRaisedBase):
            out = out.unwrapped()
        raised = isinstance(out, BaseException) and not isinstance(out, RemoteTaskError) \
            and bool(getattr(out, "remote_traceback", None))
        why = f"raised {type(out).__name__}: {out}" if raised else f"failed: {t.result}"
        n = self.attempts.get(key, 1)
        if n < self.retries:
            self.attempts[key] = n + 1
            log.warning("dask key %r %s; attempt %d of %d", key, why, n + 1, self.retries)
            if self.verbose:
                print(f"dask key {key!r} {why}; attempt {n + 1} of {self.retries}")
            self._enqueue([key])
            return
        if raised:
            out.add_note(f"dask key {key!r} failed permanently: it raised on each of "
                         f"{n} attempt(s) (retries={self.retries})")
            raise out
        detail = t.error_message or (str(out) if isinstance(out, BaseException) else "")
        hint = ""
        if str(t.result) == "input missing" and self.prune_depth > 0:
            hint = (f"; with prune_depth={self.prune_depth} an input pruned here cannot be "
                    "remade once its last copy is lost (with a worker, say): a larger "
                    "prune_depth keeps inputs longer, 0 keeps them all")
        raise DaskVineTaskError(
            f"dask key {key!r} failed permanently after {n} attempt(s): {t.result}"
            + (f" ({detail})" if detail else "") + hint
        ) from (out if isinstance(out, BaseException) else None)

    # ------------------------------------------------------------------ main loop
    def execute(self, extra_modules: list[str], progress_disable: bool,
                progress_label: str) -> Any:
        m, g = self.m, self.graph
        m._hoist_for_dask([*modules_of_graph(g), *extra_modules])
        m._keep_private(self.tag)  # a plain wait() in another thread does not take them
        try:
            for k, v in g.local_data().items():
                self._upload(k, v)
            self._enqueue(g.ready_keys())
            total = g.remaining()
            with _progress(total, progress_disable, progress_label) as advance:
                while not g.done():
                    self._flush()
                    if not self.running:
                        raise RuntimeError("DaskVine: nothing is running but the graph is not done")
                    t = m.wait_for_tag(self.tag, WAIT_SECONDS)  # the user's tasks stay
                    if t is None:
                        continue
                    entry = self.running.pop(t.id, None)
                    if entry is None:
                        continue
                    key, task = entry
                    if self.verbose:
                        print(f"dask key {key!r} ran on {t.hostname}: {t.result}")
                    if task.successful():
                        self._enqueue(self._completed(key, task))
                        advance()
                    else:
                        self._failed(key, task)
            return g.result(self._fetch)
        finally:
            if self.times is not None:
                self.times.update(self.run_times)
            self._cleanup()
            m._keep_private(self.tag, False)

    def _upload(self, key: Key, value: object) -> None:
        """``key``'s value, held by the manager, as a buffer its readers fetch: kept on a
        worker that got it until the run lets it go (undeclared at pruning or at the
        end), so readers on the same worker share one copy; from peers too unless every
        intermediate is to cross the manager (``worker_transfers=False``)."""
        blob = cloudpickle.dumps(value)
        self.files[key] = self.m.declare_buffer(blob, cache="workflow",
                                                peer_transfer=self.worker_transfers)
        self.sizes[key] = len(blob)

    def _fetch(self, key: Key) -> object:
        if key in self.values:
            return self.values[key]
        blob = self.m.fetch_file(self.files[key])  # a target computed as a temp
        return cloudpickle.loads(blob)

    def _cleanup(self) -> None:
        if self.running:  # get is raising: cancel what is left and collect it, so that
            try:          # no task of this run stays in the manager (m.empty() holds)
                for tid in list(self.running):
                    self.m.cancel_by_task_id(tid)
                deadline = time.monotonic() + CLEANUP_SECONDS
                while time.monotonic() < deadline \
                        and self.m.wait_for_tag(self.tag, WAIT_SECONDS) is not None:
                    pass
            except Exception:  # the manager failed or is closing: its error is raised later
                pass
        self.running.clear()
        for f in self.files.values():  # uploads and intermediates of this run only
            try:
                self.m.undeclare_file(f)
            except Exception:  # the manager may be closing
                pass
        self.files.clear()


class _progress:
    """A rich progress bar when stdout is a terminal; ``advance()`` steps it."""

    def __init__(self, total: int, disable: bool, label: str) -> None:
        self.bar: Any = None
        if not disable and sys.stdout.isatty():
            try:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                )
            except ImportError:
                return
            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn())
            self.task = self.bar.add_task(label, total=total)

    def __enter__(self) -> Callable[[], None]:
        if self.bar is None:
            return lambda: None
        self.bar.__enter__()
        bar, task = self.bar, self.task
        return lambda: bar.update(task, advance=1)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
