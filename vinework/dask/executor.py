"""DaskVine: a Manager whose ``get`` is a Dask scheduler (TaskVine's ``DaskVine``).

Usage::

    m = DaskVine(port=0)
    with dask.config.set(scheduler=m.get):
        result = collection.compute()
    collection.compute(scheduler=m.get, worker_transfers=False,
                       task_priority_mode="depth-first")

This module takes TaskVine's options, checks them, applies the manager-wide
ones (the worker-selection policy, the ``framework`` property)
and hands the computation to :class:`vinework.dask.run.DaskRun`. It does not
import Dask, so ``from vinework.dask import DaskVine`` costs nothing and works
without Dask installed; making a ``DaskVine`` then raises ImportError.

Before a graph takes the usual path (:mod:`vinework.dask.run`: one task per node),
:mod:`vinework.dask.small` looks at it: requested keys that are all literals are
answered with the objects themselves, and a small graph of kinds of task known to
be quick runs as one task. Linear chains are fused (dask's
``fuse_linear_task_spec``) on both paths, so a chain's intermediates (generators
included) never leave the worker that runs it. Keywords ``get`` does not use
are ignored with a warning, as dask's own schedulers ignore them.

With ``worker_transfers=True`` (the default) an intermediate result is a temp
output that stays on the worker that made it and reaches its dependents
worker-to-worker; only the requested keys (and those ``checkpoint_fn``
selects) come back to the manager. With ``worker_transfers=False`` every task
returns its value to the manager, which uploads it again for each dependent.
"""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..file import File
from ..manager.api import Manager
from .errors import DaskVineTaskError
from .priority import PRIORITY_MODES, TaskPriorities, check_priority_mode

if TYPE_CHECKING:
    from .graph import DaskGraph, Key

__all__ = ["INSTALL_HINT", "SCHEDULING_MODES", "DaskVine", "DaskVineTaskError"]

INSTALL_HINT = "pip install vinework[dask]"

# TaskVine's worker-selection policies (``Manager.set_scheduler``), DaskVine's scheduling_mode
SCHEDULING_MODES: tuple[str, ...] = ("files", "time", "rand", "worst", "disk")

# vinework modules a task's payload refers to: imported ahead in the warm interpreters
_OWN_MODULES = ("cloudpickle", "vinework.dask", "vinework.dask.graph", "vinework.dask.payload",
                "vinework.dask.run", "vinework.dask.priority", "vinework.dask.errors",
                "vinework.dask.executor", "vinework.dask.small")


def require_dask() -> None:
    """Raise ImportError, naming the install command, unless Dask (2024.12+) is importable."""
    try:
        import dask._task_spec  # noqa: F401  (the task spec arrived in dask 2024.12)
    except ImportError as e:
        raise ImportError(
            f"DaskVine needs Dask 2024.12 or newer, which is not installed: {INSTALL_HINT}"
        ) from e


def _module_names(mods: Any) -> list[str]:
    """Names of the modules to hoist: names, module objects, or functions and classes
    (their module), alone or in a list (TaskVine's ``lib_modules`` takes objects)."""
    if mods is None:
        return []
    if isinstance(mods, (str, types.ModuleType)) or callable(mods):
        mods = [mods]
    names = []
    for m in mods:
        if isinstance(m, str):
            names.append(m)
        elif isinstance(m, types.ModuleType):
            names.append(m.__name__)
        elif isinstance(getattr(m, "__module__", None), str):
            names.append(m.__module__)
        else:
            raise TypeError(f"cannot hoist {m!r}: give a module, its name, a function or a class")
    return names


def _scheduling(scheduling_mode: str, task_priority_mode: str) -> tuple[str | None, str]:
    """(worker-selection policy or None, task priority mode) from the two options."""
    if scheduling_mode in SCHEDULING_MODES:
        return scheduling_mode, check_priority_mode(task_priority_mode)
    if scheduling_mode in PRIORITY_MODES:  # what earlier vinework read here
        warnings.warn(
            f"scheduling_mode={scheduling_mode!r} is a task priority mode: pass it as "
            f"task_priority_mode; scheduling_mode picks workers "
            f"({', '.join(SCHEDULING_MODES)})", DeprecationWarning, stacklevel=3)
        if task_priority_mode not in ("largest-input-first", scheduling_mode):
            raise ValueError(f"conflicting priority modes: scheduling_mode={scheduling_mode!r} "
                             f"and task_priority_mode={task_priority_mode!r}")
        return None, scheduling_mode
    raise ValueError(
        f"unknown scheduling_mode {scheduling_mode!r}; use one of: {', '.join(SCHEDULING_MODES)}"
        f" (task priorities are task_priority_mode: {', '.join(PRIORITY_MODES)})"
    )


class DaskVine(Manager):
    """A Manager that computes Dask graphs: pass ``m.get`` as Dask's scheduler.

    Takes the Manager's arguments. Raises ImportError (naming
    ``pip install vinework[dask]``) when Dask is not installed.
    """

    _dask_hoisted: set[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        require_dask()
        super().__init__(*args, **kwargs)
        # kind of dask key -> longest run seen (seconds); decides the small-graph path
        self._dask_times: dict[str, float] = {}

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """Same as :meth:`get` (TaskVine's ``__call__``)."""
        return self.get(dsk, keys, **kwargs)

    def get(  # noqa: PLR0913
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
        resources_mode: str | None = None,
        submit_per_cycle: int | None = None,
        max_pending: int | None = None,
        retries: int | None = 5,
        verbose: bool = False,
        lib_extra_functions: Iterable[Callable[..., Any]] | None = None,
        lib_resources: Mapping[str, int] | None = None,
        lib_command: str | None = None,
        lib_modules: Any = None,
        task_mode: str = "tasks",
        task_priority_mode: str = "largest-input-first",
        scheduling_mode: str = "files",
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
        init_command: str | None = None,
        fuse: bool = True,
        small_graph: bool | None = None,
        **unused: Any,
    ) -> Any:
        """Compute ``keys`` of the Dask graph ``dsk``; Dask's scheduler ``get`` protocol.

        The options are TaskVine's, with TaskVine's meaning unless noted.

        Args:
            dsk: Whatever Dask hands a scheduler (graph expression, HighLevelGraph, dict).
            keys: A key or nested list of keys.
            environment: A poncho/starch environment for every task. Not supported:
                DaskVine's tasks are PythonTasks, which run in the workers' own warm
                interpreters and cannot switch to a packaged environment (command
                tasks can: ``Task.add_environment``). Anything but None raises
                NotImplementedError.
            extra_files: ``{File: remote_name}`` added as inputs of every task.
            worker_transfers: Keep intermediates on workers (True) or bring every
                result back through the manager (False).
            env_vars: ``{name: value}`` set in every task; a callable value is
                called as ``value(manager, task)``.
            checkpoint_fn: ``(dag, key) -> bool``, asked before each intermediate is
                submitted (with worker_transfers). True brings that result back to
                the manager, as TaskVine documents (TaskVine's code does the
                opposite and keeps it remote, a known bug vinework does not copy).
                ``dag`` is the :class:`~vinework.dask.graph.DaskGraph`, with
                TaskVine's ``depth_of(key)``, ``get_dependencies(key)`` and
                ``get_needed_by(key)``.
            resources: ``{"cores", "memory", "disk", "gpus"}`` for each task (memory
                and disk in MB). TaskVine makes this the maximum of the task's
                category; vinework requests it for every task. Without ``cores``
                a task asks for 1 core (TaskVine's default would take a whole worker).
            resources_mode: TaskVine's automatic resource sizing ("fixed", "max",
                "min_waste", "max throughput", bucketing modes). Accepted, no effect:
                vinework does not measure resources per category yet.
            submit_per_cycle: Submit at most this many tasks between waits (None or
                < 1: no limit).
            max_pending: At most this many submitted tasks without a result (None or
                < 1: no limit).
            retries: Attempts per task (default 5, at least 1; None or 0 mean 1). A
                task that fails -- its function raised, or its worker or output was
                lost -- is submitted again until it has run ``retries`` times; then
                its exception is raised from ``get`` (with the remote traceback), or
                :class:`DaskVineTaskError` when it raised nothing.
            verbose: Print each completion and each retry.
            lib_extra_functions, lib_resources: The library of
                ``task_mode="function-calls"``: more functions to put in it, and
                each instance's ``cores``/``memory``/``disk``/``gpus`` and
                ``slots`` (function slots). lib_command (a library run by a
                command of one's own) is not supported: NotImplementedError.
            lib_modules: Modules to import ahead of the tasks: names, module
                objects, or functions and classes (their modules). vinework hoists
                them into the workers' warm interpreters, with the graph's own.
            task_mode: ``"tasks"`` (one PythonTask per Dask task) or
                ``"function-calls"`` (one FunctionCall per Dask task, in a library
                made for this ``get`` and removed after it; see
                :mod:`vinework.dask.calls`). Results are the same.
            task_priority_mode: Which ready task runs first (see
                :mod:`vinework.dask.priority`): "largest-input-first" (default),
                "FIFO", "LIFO", "depth-first", "breadth-first",
                "longest-category-first", "shortest-category-first", "random".
                Unknown: ValueError.
            scheduling_mode: Which worker a task goes to: "files" (default: the one
                holding most of its input bytes), "time", "rand", "worst", "disk";
                set manager-wide with ``set_scheduler``. A priority mode name here
                (what vinework read here before) is taken as task_priority_mode,
                with a DeprecationWarning. Unknown: ValueError.
            env_per_task: Unpack ``environment`` inside each task. Not supported
                (needs environments): True raises NotImplementedError.
            progress_disable, progress_label: A rich progress bar, only when
                stdout is a terminal.
            reconstruct, merge_size: TaskVine's rebuilding of ``daskvine_merge``
                functions into trees of ``merge_size``. Accepted, no effect.
            wrapper: ``wrapper(key, fn, *args) -> (wrapper_result, value)`` runs
                each task (debugging); ``wrapper_proc(wrapper_result)`` is called
                at the manager. Results then travel through the manager.
            wrapper_proc: See ``wrapper``.
            prune_depth: 0 keeps intermediates until the end; d > 0 deletes a
                result once everything within d levels downstream is done.
            hoisting_modules, import_modules: Older names of ``lib_modules``.
            lazy_transfers: Deprecated alias of ``worker_transfers`` (warns).
            low_memory_mode: Older TaskVine option. Accepted, no effect.
            init_command: Older TaskVine option (a command run before the
                library). Accepted, no effect.
            fuse: vinework's own: run each linear chain (a task whose value only
                the next task reads) as one task, as dask's ``fuse`` does; an
                unpicklable intermediate (a generator) then never leaves the
                worker, and fewer tasks are dispatched. Default True.
            small_graph: vinework's own: run a small graph as one task on one
                worker (see :mod:`vinework.dask.small`). None (default) decides
                by the graph's size and the times its kinds of task took before
                on this manager; False never; True whenever the run takes no
                per-task options (checkpoint_fn, wrapper, prune_depth,
                worker_transfers=False, function-calls).
            **unused: Keywords DaskVine does not use (dask forwards every extra
                keyword of ``compute()`` to the scheduler, and its own schedulers
                accept them): ignored, with one warning naming them.

        Raises:
            ValueError: For an unknown task_mode, task_priority_mode or
                scheduling_mode, or retries < 0; for a graph using Dask's "disk"
                shuffle in the tasks' private temporary directories (build it with
                the "tasks" shuffle, or a shared ``temporary_directory``).
            NotImplementedError: For ``environment``, ``env_per_task``,
                ``lib_command``, or a ``wrapper`` with ``task_mode="function-calls"``.
            Exception: The exception a task raised on its last attempt (its
                ``remote_traceback`` attribute holds the worker-side traceback).
            DaskVineTaskError: A task failed on every attempt without raising.
        """
        if unused:
            warnings.warn(f"DaskVine.get ignores keyword(s) it does not use: "
                          f"{', '.join(sorted(unused))}", UserWarning, stacklevel=2)
        if task_mode == "function-calls" and lib_command is not None:
            raise NotImplementedError(
                "DaskVine lib_command: a library started by a command of one's own is not "
                "supported; task_mode='function-calls' makes its library from functions "
                "(lib_extra_functions, lib_modules, lib_resources)")
        if task_mode == "function-calls" and wrapper is not None:
            raise NotImplementedError(
                "DaskVine wrapper= with task_mode='function-calls' is not supported; use "
                "task_mode='tasks' for a wrapper")
        if task_mode not in ("tasks", "function-calls"):
            raise ValueError(f"unknown task_mode {task_mode!r}; use 'tasks' or 'function-calls'")
        if environment is not None:
            raise NotImplementedError(
                "DaskVine environment= (a poncho or starch environment for every task) is not "
                "supported: its tasks are PythonTasks, which run in the workers' own warm "
                "interpreters and cannot switch to a packaged environment (command tasks "
                "can, with Task.add_environment). Install the packages the graph "
                "needs where the workers run, and pass environment=None."
            )
        if env_per_task:
            raise NotImplementedError(
                "DaskVine env_per_task=True unpacks the environment in every task; vinework "
                "cannot run PythonTasks in a packaged environment. Pass env_per_task=False."
            )
        scheduler, priority_mode = _scheduling(scheduling_mode, task_priority_mode)
        if retries is not None and retries < 0:
            raise ValueError(f"retries is a number of attempts (at least 1), got {retries}")
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
        extra_modules = [*_module_names(lib_modules), *_module_names(hoisting_modules),
                         *_module_names(import_modules)]
        # resources_mode, reconstruct, merge_size, low_memory_mode, init_command and the
        # lib_* options are accepted and have no effect (see the docstring)

        from .graph import DaskGraph
        from .run import DaskRun
        from .small import SmallGraph

        sg = SmallGraph(dsk, keys, fuse=fuse)
        if sg.literal_only():  # nothing to compute: the objects themselves, no round trip
            return sg.literal_result()
        per_task = (checkpoint_fn is not None or wrapper is not None or prune_depth > 0
                    or not worker_transfers or task_mode != "tasks")

        def as_one_task(scan_modules: bool) -> Any:
            self._apply_taskvine_settings(scheduler)
            return sg.run(self, times=self._dask_times, retries=int(retries or 1),
                          resources=dict(resources or {}), env_vars=dict(env_vars or {}),
                          extra_files=dict(extra_files or {}), extra_modules=extra_modules,
                          verbose=verbose, scan_modules=scan_modules)

        if small_graph is not False and not per_task \
                and (small_graph or sg.is_small(self._dask_times)):
            return as_one_task(bool(small_graph))
        graph = DaskGraph(sg.nodes, keys)
        shuffles = graph.private_disk_shuffles()
        if shuffles:
            why = (f"the graph uses Dask's disk shuffle (key {shuffles[0]!r}, dask's default "
                   "without a distributed client), whose partd store is made in one task's "
                   "private temporary directory (each task's TMPDIR is its sandbox, as in "
                   "TaskVine)")
            how = ("build the graph under dask.config.set({'dataframe.shuffle.method': "
                   "'tasks'}) (or pass shuffle='tasks'), or set dask's "
                   "'temporary_directory' to a directory that every worker shares")
            if per_task or small_graph is False:  # one task per node: the shuffle would
                raise ValueError(f"{why}: one task per node would leave it empty; {how}.")
            warnings.warn(f"DaskVine: {why}: the graph runs as one task on one worker "
                          f"(right, but not in parallel); for one task per node, {how}",
                          stacklevel=2)
            return as_one_task(True)
        self._apply_taskvine_settings(scheduler)
        if task_mode == "function-calls":
            from .calls import CallsRun, library_for
            from .graph import modules_of_graph
            lib = library_for(self, [*modules_of_graph(graph), *extra_modules],
                              lib_extra_functions, lib_resources)
            runner: type[DaskRun] = CallsRun
        else:
            lib, runner = None, DaskRun
        run = runner(
            self, graph, priorities=TaskPriorities(priority_mode),
            worker_transfers=worker_transfers, checkpoint_fn=checkpoint_fn,
            resources=dict(resources or {}), extra_files=dict(extra_files or {}),
            env_vars=dict(env_vars or {}), retries=int(retries or 1), verbose=verbose,
            wrapper=wrapper, wrapper_proc=wrapper_proc, prune_depth=prune_depth,
            submit_per_cycle=submit_per_cycle, max_pending=max_pending,
        )
        run.times = self._dask_times
        if lib is None:
            return run.execute(extra_modules, progress_disable, progress_label)
        self.install_library(lib)
        run.library = lib.library_name  # type: ignore[attr-defined]
        try:
            return run.execute(extra_modules, progress_disable, progress_label)
        finally:
            self.remove_library(lib.library_name)

    # ------------------------------------------------------------------ helpers
    def _apply_taskvine_settings(self, scheduler: str | None) -> None:
        """What TaskVine's ``get`` sets on its manager: the framework property and the
        worker-selection policy. (TaskVine also tunes ``category-steady-n-tasks``,
        ``prefer-dispatch`` and ``immediate-recovery`` to 1; those have no effect in
        vinework, so DaskVine leaves them, and their notices, out. It does not call
        ``update_catalog``: vinework contacts no catalog.)"""
        self.set_property("framework", "dask")
        if scheduler is not None and self._tuned.get("scheduler") != scheduler:
            self.set_scheduler(scheduler)  # (only when it changes: each is a loop wake-up)

    def _file_sizes(self, files: list[File]) -> list[int]:
        """Bytes of each file as the manager knows them (-1: not known); one loop call."""
        names = [f.cache_name for f in files]

        def sizes() -> list[int]:
            table = self._state.files
            out = []
            for n in names:
                r = table.get(n)
                out.append(int(getattr(r, "size", -1)) if r is not None else -1)
            return out

        return self._ask(sizes)  # type: ignore[no-any-return]

    def _hoist_for_dask(self, tops: list[str]) -> None:
        """Pre-import what tasks will need in the workers' warm interpreters.

        ``modules_of_graph`` names top-level packages, but unpickling a task
        imports submodules (``dask.array.core``, ...), which costs a second or
        more per forked task. So every submodule of those packages that this
        process has imported (it built the graph with them) is hoisted too.
        """
        if not hasattr(self, "_dask_hoisted"):
            self._dask_hoisted = set()
            self._dask_hoist_seen: tuple[int, frozenset[str]] = (-1, frozenset())
        n_modules, seen = self._dask_hoist_seen
        if n_modules == len(sys.modules) and seen.issuperset(tops):
            return  # nothing imported since these were hoisted
        self._dask_hoist_seen = (len(sys.modules), seen | frozenset(tops))
        want = set(_OWN_MODULES)
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
