"""DaskVine: run Dask graphs on vinework workers (TaskVine's ``DaskVine``).

Usage::

    m = DaskVine(port=0)
    with dask.config.set(scheduler=m.get):
        result = collection.compute()
    collection.compute(scheduler=m.get, worker_transfers=False)

Every Dask task becomes a :class:`~vinework.task.PythonTask` that reads the
values of its dependencies from its input files (``d0``, ``d1``, ... in the
order of the node's dependency keys) and evaluates the node. Its payload is
normally built by :class:`vinework.dask.payload.PayloadEncoder` (the node as
plain tuples, by-value functions pickled once per run, no cloudpickle per
task) and run by :func:`vinework.dask.payload.run_encoded`; nodes it cannot
encode (and every node when a ``wrapper`` is given) are cloudpickled whole and
run by :func:`_run_node` with :func:`vinework.dask.graph.execute_node`. The
graph bookkeeping (culling, readiness, pruning, packing the result) is
:class:`vinework.dask.graph.DaskGraph`.

Per-task cost on the manager is kept flat: one payload encoding, one
``submit``; the run keeps one File handle per produced value (released at the
end, or earlier with ``prune_depth``) and nothing per finished task.

With ``worker_transfers=True`` (the default) an intermediate result is a temp
output that stays on the worker that made it and reaches its dependents
worker-to-worker; only the requested keys (and those ``checkpoint_fn``
selects) come back to the manager. With ``worker_transfers=False`` every task
returns its value to the manager, which uploads it again for each dependent.
"""

from __future__ import annotations

import random
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle

from ..file import File
from ..manager.api import Manager
from ..task import PythonTask, RemoteTaskError, Task
from . import graph as dask_graph
from .graph import DaskGraph, Key, modules_of_graph
from .payload import CannotEncode, PayloadEncoder, run_encoded

__all__ = ["DaskVine", "DaskVineTaskError"]

SCHEDULING_MODES = frozenset({
    "FIFO", "LIFO", "random", "depth-first", "breadth-first", "longest-category-first",
    "shortest-category-first", "largest-input-first",
})

# TaskVine DaskVine.get options accepted without effect here (see DaskVine.get).
_NO_OP_OPTIONS = frozenset({
    "resources_mode", "low_memory_mode", "reconstruct", "merge_size", "lib_extra_functions",
    "lib_resources", "lib_command",
})


class DaskVineTaskError(RuntimeError):
    """A Dask task failed for a reason other than an exception raised by its code."""


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


class DaskVine(Manager):
    """A Manager that computes Dask graphs: pass ``m.get`` as Dask's scheduler."""

    _dask_hoisted: set[str]

    def _hoist_for_dask(self, tops: list[str]) -> None:
        """Pre-import what tasks will need in the workers' warm interpreters.

        ``modules_of_graph`` names top-level packages, but unpickling a task
        imports submodules (``dask.array.core``, ...), which costs a second or
        more per forked task. So every submodule of those packages that this
        process has imported (it built the graph with them) is hoisted too.
        """
        if not hasattr(self, "_dask_hoisted"):
            self._dask_hoisted = set()
        want = {"cloudpickle", "vinework.dask", "vinework.dask.graph", "vinework.dask.executor",
                "vinework.dask.payload"}
        for top in tops:
            want.add(top)
            if "." in top:
                continue
            prefix = top + "."
            want.update(n for n in list(sys.modules)
                        if n.startswith(prefix) and getattr(sys.modules[n], "__file__", None))
        new = sorted(want - self._dask_hoisted)
        if new:
            self._dask_hoisted.update(new)
            self.hoist_modules(*new)

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return self.get(dsk, keys, **kwargs)

    def get(  # noqa: C901, PLR0912, PLR0913, PLR0915
        self,
        dsk: Any,
        keys: Any,
        *,
        environment: Any = None,
        extra_files: Mapping[File, str] | None = None,
        worker_transfers: bool = True,
        env_vars: Mapping[str, Any] | None = None,
        checkpoint_fn: Callable[[DaskGraph, Key], bool] | None = None,
        resources: Mapping[str, int] | None = None,
        resources_mode: Any = None,
        submit_per_cycle: int | None = None,
        max_pending: int | None = None,
        retries: int = 5,
        verbose: bool = False,
        lib_extra_functions: Any = None,
        lib_resources: Any = None,
        lib_command: Any = None,
        lib_modules: Any = None,
        task_mode: str = "tasks",
        scheduling_mode: str = "FIFO",
        env_per_task: bool = False,
        progress_disable: bool = False,
        reconstruct: bool = False,
        merge_size: int = 2,
        progress_label: str = "[green]tasks",
        wrapper: Callable[..., tuple[Any, Any]] | None = None,
        wrapper_proc: Callable[[Any], Any] = print,
        prune_depth: int = 0,
        hoisting_modules: Any = None,
        import_modules: Any = None,
        lazy_transfers: bool | None = None,
        low_memory_mode: bool = False,
        **unknown: Any,
    ) -> Any:
        """Compute ``keys`` of the Dask graph ``dsk``; Dask's scheduler ``get`` protocol.

        Args:
            dsk: Whatever Dask hands a scheduler (graph expression, HighLevelGraph, dict).
            keys: A key or nested list of keys.
            environment: Not supported (TaskVine's poncho/starch environment);
                anything but None raises NotImplementedError.
            extra_files: ``{File: remote_name}`` added as inputs of every task.
            worker_transfers: Keep intermediates on workers (True) or bring every
                result back through the manager (False).
            env_vars: ``{name: value}`` set in every task; a callable value is
                called as ``value(manager, task)`` (TaskVine).
            checkpoint_fn: ``(dag, key) -> bool``; with worker_transfers, the
                results it selects are also brought back to the manager as they
                finish (``dag`` is the :class:`DaskGraph`).
            resources: ``cores``/``memory``/``disk``/``gpus`` per task. Default:
                1 core (TaskVine's default would take a whole worker).
            resources_mode: Accepted, no effect (no automatic resource labelling).
            submit_per_cycle: Submit at most this many tasks between waits.
            max_pending: At most this many submitted tasks without a result.
            retries: Attempts for a task that fails for infrastructure reasons
                (lost output, time limit, ...). An exception raised by the task's
                own code is deterministic: it is raised from ``get`` at once.
            verbose: Print each completion.
            lib_extra_functions, lib_resources, lib_command: Accepted, no effect
                (only meaningful with ``task_mode="function-calls"``).
            lib_modules, hoisting_modules, import_modules: Extra modules to
                pre-import in the workers' warm interpreters (with the graph's own).
            task_mode: ``"tasks"``; ``"function-calls"`` raises NotImplementedError.
            scheduling_mode: TaskVine's mode names. ``"FIFO"`` (default) and the
                other deterministic modes run by Dask's memory-friendly order;
                ``"LIFO"`` reverses it; ``"random"`` shuffles. Unknown: ValueError.
            env_per_task: Not supported (needs ``environment``); True raises.
            progress_disable, progress_label: A rich progress bar, only when
                stdout is a terminal.
            reconstruct, merge_size: Accepted, no effect.
            wrapper: ``wrapper(key, fn, *args) -> (wrapper_result, value)`` runs
                each task (debugging); ``wrapper_proc(wrapper_result)`` is called
                at the manager. Results then travel through the manager.
            wrapper_proc: See ``wrapper``.
            prune_depth: 0 keeps intermediates until the end; d > 0 deletes a
                result once everything within d levels downstream is done.
            lazy_transfers: Deprecated alias of ``worker_transfers``.
            low_memory_mode: Accepted, no effect (older TaskVine option).

        Raises:
            TypeError: For a keyword that neither TaskVine nor vinework knows.
            Exception: The exception a task raised (its ``remote_traceback``
                attribute holds the worker-side traceback).
        """
        if unknown:
            raise TypeError(
                f"DaskVine.get() got unexpected keyword argument(s): {', '.join(sorted(unknown))}"
            )
        if task_mode == "function-calls":
            raise NotImplementedError(
                "DaskVine task_mode='function-calls' needs TaskVine libraries, which vinework "
                "does not provide yet; use task_mode='tasks' (the default)"
            )
        if task_mode != "tasks":
            raise ValueError(f"unknown task_mode {task_mode!r}; use 'tasks'")
        if environment is not None or env_per_task:
            raise NotImplementedError("DaskVine environments (poncho/starch) are not supported")
        if scheduling_mode not in SCHEDULING_MODES:
            raise ValueError(f"Unknown scheduling mode {scheduling_mode}")
        if retries is not None and retries < 1:
            raise ValueError("retries should be larger than 0")
        if lazy_transfers is not None:
            warnings.warn("lazy_transfers is deprecated; use worker_transfers",
                          DeprecationWarning, stacklevel=2)
            worker_transfers = worker_transfers and bool(lazy_transfers)
        if wrapper is not None:
            worker_transfers = False  # the wrapper's result must come back with the value
        if submit_per_cycle is not None and submit_per_cycle < 1:
            submit_per_cycle = None
        if max_pending is not None and max_pending < 1:
            max_pending = None

        run = _Run(
            self, DaskGraph(dsk, keys), worker_transfers=worker_transfers,
            checkpoint_fn=checkpoint_fn, resources=dict(resources or {}),
            extra_files=dict(extra_files or {}), env_vars=dict(env_vars or {}),
            retries=retries or 1, verbose=verbose, scheduling_mode=scheduling_mode,
            wrapper=wrapper, wrapper_proc=wrapper_proc, prune_depth=prune_depth,
            submit_per_cycle=submit_per_cycle, max_pending=max_pending,
        )
        extra_modules: list[str] = []
        for mods in (lib_modules, hoisting_modules, import_modules):
            if mods:
                extra_modules.extend([mods] if isinstance(mods, str) else list(mods))
        return run.execute(extra_modules, progress_disable, progress_label)


class _Run:
    """One ``get`` call: submits ready keys, collects results, cleans up."""

    def __init__(self, m: DaskVine, graph: DaskGraph, *, worker_transfers: bool,
                 checkpoint_fn: Any, resources: dict[str, int], extra_files: dict[File, str],
                 env_vars: dict[str, Any], retries: int, verbose: bool, scheduling_mode: str,
                 wrapper: Any, wrapper_proc: Any, prune_depth: int,
                 submit_per_cycle: int | None, max_pending: int | None) -> None:
        self.m = m
        self.graph = graph
        self.worker_transfers = worker_transfers
        self.checkpoint_fn = checkpoint_fn
        self.resources = resources
        self.extra_files = extra_files
        self.env_vars = env_vars
        self.retries = retries
        self.verbose = verbose
        self.scheduling_mode = scheduling_mode
        self.wrapper = wrapper
        self.wrapper_proc = wrapper_proc
        self.prune_depth = prune_depth
        self.submit_per_cycle = submit_per_cycle
        self.max_pending = max_pending
        self.files: dict[Key, File] = {}  # storage key -> file holding its pickled value
        self.values: dict[Key, object] = {}  # values held at the manager (targets, checkpoints)
        self.running: dict[int, tuple[Key, PythonTask]] = {}
        self.attempts: dict[Key, int] = {}
        self.queue: list[Key] = []
        self.encoder = PayloadEncoder()
        self.tag = f"dask-{id(self)}"

    # ------------------------------------------------------------------ submit
    def _priority(self, key: Key) -> float:
        p = float(self.graph.priority(key))
        if self.scheduling_mode == "LIFO":
            return p
        if self.scheduling_mode == "random":
            return random.random()
        return -p  # lower dask order runs first; vinework runs higher priority first

    def _submit(self, key: Key) -> None:
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
        for name, value in self.env_vars.items():
            t.set_env_var(name, value(self.m, t) if callable(value) else value)
        t.set_priority(self._priority(key))
        t.set_category(_category(node))
        t.set_tag(self.tag)
        tid = self.m.submit(t)
        self.running[tid] = (key, t)

    def _flush(self) -> None:
        n = 0
        while self.queue:
            if self.submit_per_cycle is not None and n >= self.submit_per_cycle:
                return
            if self.max_pending is not None and len(self.running) >= self.max_pending:
                return
            self._submit(self.queue.pop())
            n += 1

    def _enqueue(self, keys: list[Key]) -> None:
        # keys come by priority; the queue is popped from the end
        self.queue.extend(reversed(keys))

    # ------------------------------------------------------------------ complete
    def _completed(self, key: Key, t: PythonTask) -> list[Key]:
        g = self.graph
        if t.temp_output:
            self.files[key] = t.output_file
        else:
            value = t.output
            if self.wrapper is not None:
                wrapped, value = value
                self.wrapper_proc(wrapped)
            self.values[key] = value
            self.files[key] = self.m.declare_buffer(cloudpickle.dumps(value))
        ready = g.mark_done(key)
        for p in g.prunable_after(key, self.prune_depth):
            f = self.files.get(p)
            if f is not None:
                self.m.undeclare_file(f)
            if not g.is_target(p):
                self.values.pop(p, None)
        return ready

    def _failed(self, key: Key, t: PythonTask) -> None:
        out = t._output
        if isinstance(out, BaseException) and not isinstance(out, RemoteTaskError) \
                and bool(getattr(out, "remote_traceback", None)):
            raise out  # the task's own code raised: deterministic, do not retry
        n = self.attempts.get(key, 1)
        if n < self.retries:
            self.attempts[key] = n + 1
            if self.verbose:
                print(f"dask key {key!r} failed ({t.result}); attempt {n + 1} of {self.retries}")
            self._submit(key)
            return
        if isinstance(out, BaseException):
            raise out
        raise DaskVineTaskError(
            f"dask key {key!r} failed permanently after {n} attempts: {t.result}"
            + (f" ({t.error_message})" if t.error_message else "")
        )

    # ------------------------------------------------------------------ main loop
    def execute(self, extra_modules: list[str], progress_disable: bool,
                progress_label: str) -> Any:
        m, g = self.m, self.graph
        m._hoist_for_dask([*modules_of_graph(g), *extra_modules])
        try:
            for k, v in g.local_data().items():
                self.files[k] = m.declare_buffer(cloudpickle.dumps(v))
            self._enqueue(g.ready_keys())
            total = g.remaining()
            with _progress(total, progress_disable, progress_label) as advance:
                while not g.done():
                    self._flush()
                    if not self.running:
                        raise RuntimeError("DaskVine: nothing is running but the graph is not done")
                    t = m.wait(5)
                    if t is None:
                        continue
                    entry = self.running.pop(t.id, None)
                    if entry is None:
                        continue  # not ours (a task the user submitted to this manager)
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
            self._cleanup()

    def _fetch(self, key: Key) -> object:
        if key in self.values:
            return self.values[key]
        blob = self.m.fetch_file(self.files[key])  # a target computed as a temp
        return cloudpickle.loads(blob)

    def _cleanup(self) -> None:
        for tid in list(self.running):
            self.m.cancel_by_task_id(tid)
        self.running.clear()
        for f in self.files.values():  # uploads and intermediates of this run only
            try:
                self.m.undeclare_file(f)
            except Exception:  # the manager may be closing
                pass
        self.files.clear()


def _category(node: Any) -> str:
    func = getattr(node, "func", None)
    name = getattr(func, "__name__", None) or type(node).__name__
    return f"dask-{name}"


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

