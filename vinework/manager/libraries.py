"""The Manager's serverless part: making, installing and removing libraries.

``LibraryMethods`` is one of the parts the Manager is made of (``base.py``):
``create_library_from_functions`` builds a ``LibraryTask`` (its functions,
context function and hoisted objects pickled once, by value where the worker
may not import them), ``install_library`` declares the library's input files
and tells the core (``LibraryInstalled``), ``remove_library`` and
``check_library_exists`` do what they say, ``library_instances`` lists the
running instances (worker, pid, calls: a vinework addition), and the
``remote_*`` helpers run ``map``/``pair``/``tree_reduce`` as FunctionCalls
(``mapping.py``). The library logs the workers send (``LibraryLog``) are
written under the run's ``library-logs/`` directory, one file per instance.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import re
import threading
import time
import types
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..core.events import LibraryInstalled, LibraryLog, LibraryRemoved, LibrarySpec
from ..file import FileKind
from ..serverless import EXEC_MODES, LibraryTask, library_payload
from .base import ManagerBase
from .localfiles import InputMissing, LocalFiles

log = logging.getLogger("vinework.manager")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_READERS = itertools.count(1)  # libraries read their input files as "tasks" -1, -2, ...
PAYLOAD_MAX = 32 << 20  # bytes of pickled functions and context a library may carry


class LibraryMethods(ManagerBase):
    """Serverless libraries (see the module docstring)."""

    _files: LocalFiles
    _libraries: dict[str, LibraryTask]
    _lib_log_lock: threading.Lock

    if TYPE_CHECKING:  # FileMethods' (declare.py)
        def _declare(self, f: Any, size: int = -1) -> None: ...

    def _init_libraries(self) -> None:
        """(Called by ``Manager.__init__``.)"""
        self._libraries = {}
        self._lib_log_lock = threading.Lock()
        self._server.on_library_log = self._write_library_log

    # ------------------------------------------------------------------ making
    def create_library_from_functions(
        self,
        name: str,
        *functions: Callable[..., Any],
        poncho_env: str | None = None,
        init_command: str | None = None,
        add_env: bool = True,
        hoisting_modules: Iterable[Any] | None = None,
        exec_mode: str = "fork",
        library_context_info: list[Any] | tuple[Any, ...] | None = None,
    ) -> LibraryTask:
        """A library holding ``functions``, called by their ``__name__`` (a lambda's is
        ``"<lambda>"``), TaskVine's ``create_library_from_functions``.

        Args:
            name: the library's name (what FunctionCalls name).
            functions: the functions; lambdas, closures and functions of ``__main__`` or
                of the user's own modules travel by value.
            poncho_env: a poncho environment tarball: not supported (NotImplementedError).
            init_command: a shell command each instance runs before it starts (``A && B``
                style: the library starts only if it succeeds).
            add_env: TaskVine packs the caller's conda environment; vinework workers use
                their own Python environment, so this is accepted and changes nothing.
            hoisting_modules: modules (imported by name in each instance before its
                functions are loaded) and other objects (classes, values: placed in the
                instance's ``__main__`` by name).
            exec_mode: "fork" (each call runs in a child forked from the instance as its
                set-up left it) or "direct" (calls run in the instance itself, one at a
                time: what one call changes, the next sees).
            library_context_info: ``[fn, args, kwargs]``: ``fn(*args, **kwargs)`` runs once
                per instance and returns a dict; its values are what
                ``vinework.utils.load_variable_from_library(name)`` returns in a call.
        """
        if poncho_env is not None:
            raise NotImplementedError(
                "create_library_from_functions(poncho_env=...): poncho environments are not "
                "supported for libraries yet; install the packages the library needs in the "
                "workers' Python environment (add_env is accepted and does nothing)")
        if not isinstance(name, str) or not name:
            raise ValueError("a library needs a name (a non-empty str)")
        if exec_mode not in EXEC_MODES:
            raise ValueError(f"exec_mode must be 'fork' or 'direct', got {exec_mode!r}")
        if not functions:
            raise ValueError(f"library {name!r}: give at least one function")
        table: dict[str, Callable[..., Any]] = {}
        for fn in functions:
            if not callable(fn):
                raise TypeError(f"library {name!r}: {fn!r} is not callable")
            fname = getattr(fn, "__name__", None)
            if not isinstance(fname, str):
                raise TypeError(f"library {name!r}: {fn!r} has no __name__ to be called by")
            if fname in table and table[fname] is not fn:
                raise ValueError(f"library {name!r}: two functions are named {fname!r}")
            table[fname] = fn
        context = None
        if library_context_info is not None:
            info = list(library_context_info)
            if not info or not callable(info[0]) or len(info) > 3:
                raise ValueError("library_context_info must be [fn, args, kwargs] "
                                 f"(fn callable), got {library_context_info!r}")
            args = list(info[1]) if len(info) > 1 and info[1] is not None else []
            kwargs = dict(info[2]) if len(info) > 2 and info[2] is not None else {}
            context = (info[0], args, kwargs)
        modules: list[str] = []
        objects: dict[str, Any] = {}
        for h in hoisting_modules or ():
            if isinstance(h, types.ModuleType):
                modules.append(h.__name__)
            elif isinstance(h, str):
                modules.append(h)
            else:
                oname = getattr(h, "__name__", None)
                if not isinstance(oname, str):
                    raise TypeError(f"hoisting_modules: {h!r} is not a module and has no "
                                    "__name__")
                objects[oname] = h
        del add_env  # (documented: no environment packing)
        lib = LibraryTask("vinework-library", name)
        lib.exec_mode = exec_mode
        lib.init_command = init_command or ""
        lib.function_names = sorted(table)
        lib.payload = library_payload(table, context, modules, objects)
        return lib

    def create_library_from_serverized_files(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("create_library_from_serverized_files: libraries made "
                                  "from files are not supported; use "
                                  "create_library_from_functions")

    def create_library_from_command(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("create_library_from_command: libraries made from a "
                                  "command are not supported; use "
                                  "create_library_from_functions")

    # ------------------------------------------------------------------ installing
    def install_library(self, library: LibraryTask) -> None:
        """Make ``library`` available to FunctionCalls; instances start on workers as
        calls need them. A library name can be installed once (remove it first)."""
        if not isinstance(library, LibraryTask):
            raise TypeError(f"install_library expects a LibraryTask, got "
                            f"{type(library).__name__}")
        if library.payload is None:
            raise NotImplementedError(
                f"library {library.library_name!r} was not made by "
                "create_library_from_functions; libraries that run their own command are "
                "not supported")
        name = library.library_name
        if len(library.payload) > PAYLOAD_MAX:
            raise ValueError(
                f"library {name!r}: its functions and context pickle to "
                f"{len(library.payload) >> 20} MiB (more than {PAYLOAD_MAX >> 20} MiB travel "
                "with every instance start): put large data in input files "
                "(lib.add_input) and load them in the context function")
        if name in self._libraries:
            raise ValueError(f"a library named {name!r} is installed already "
                             "(remove_library it first)")
        pseudo = -next(_READERS)
        inputs: list[tuple[str, str]] = []
        for f, remote in library.inputs:
            if f.kind is FileKind.LOCAL or f.kind is FileKind.BUFFER:
                if f.kind is FileKind.LOCAL:
                    why = self._files.check_input(f, remote)
                    if why:
                        raise FileNotFoundError(f"library {name!r}: {why}")
                try:
                    cname = self._files.input_name(f, pseudo)
                except InputMissing as e:
                    raise FileNotFoundError(f"library {name!r}: {e}") from None
                f._manager = self
                if cname not in self._declared:
                    self._declare(f)
            elif f.kind is FileKind.TEMP:
                raise ValueError(f"library {name!r}: a temp ({remote!r}) cannot be a "
                                 "library input (it could not be remade for a new "
                                 "instance); fetch it or declare a file")
            elif f.cache_name not in self._declared:
                self._declare(f)
            inputs.append((f.cache_name, remote))
        env = sorted((k, v) for k, v in library.env.items() if v is not None)
        unset = sorted(k for k, v in library.env.items() if v is None)
        spec = LibrarySpec(name=name, payload=library.payload, exec_mode=library.exec_mode,
                           slots=library.function_slots, cores=library.cores,
                           memory=library.memory, disk=library.disk, gpus=library.gpus,
                           inputs=inputs, env=env, env_unset=unset,
                           init_command=library.init_command)
        library._manager = self
        library._lib_reads = pseudo  # type: ignore[attr-defined]
        self._libraries[name] = library
        self._post(LibraryInstalled(now=time.monotonic(), spec=spec))

    def remove_library(self, name: str) -> None:
        """Stop the library's instances; calls that still name it, those running when it
        is removed included (they are stopped with it), end "missing library"."""
        lib = self._libraries.pop(name, None)
        if lib is None:
            return
        self._post(LibraryRemoved(now=time.monotonic(), name=name))
        self._files.handed_over(getattr(lib, "_lib_reads", 0), [])

    def check_library_exists(self, name: str) -> bool:
        """True if a library of that name is installed."""
        return name in self._libraries

    def library_instances(self) -> list[dict[str, Any]]:
        """The library instances running now (vinework): ``library``, ``instance``,
        ``worker``, ``pid`` (0 until its set-up finished), ``ready``, ``slots``, ``calls``
        (in progress), ``calls_done``, ``cores``, ``memory``, ``disk``."""
        return self._ask(self._state.library_instances)  # type: ignore[no-any-return]

    def library_log_path(self, name: str, instance_id: int) -> str:
        """Where the log of one instance of a library is written (in ``library-logs/``)."""
        return os.path.join(self._run.library_logs,
                            f"{_SAFE.sub('_', name)}.{int(instance_id)}.log")

    def _write_library_log(self, c: LibraryLog) -> None:
        """(On the loop thread.) Append what an instance reported to its log file."""
        try:
            with self._lib_log_lock, open(self.library_log_path(c.library, c.instance_id),
                                          "a", errors="replace") as f:
                f.write(c.text)
        except OSError as e:
            log.warning("library log of %s instance %d: %s", c.library, c.instance_id, e)

    def _close_libraries(self, grace: float = 2.0) -> None:
        """(At close.) Stop every running instance and wait up to ``grace`` seconds for
        the workers' reports, so that every instance's log reaches ``library-logs/``."""
        if not getattr(self, "_libraries", None) or self._error is not None \
                or not self._server.thread.is_alive():
            return
        deadline = time.monotonic() + grace

        def pending() -> bool:  # (asked on the loop thread, never waiting past the deadline)
            fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
            self._server.loop.call_soon_threadsafe(
                lambda: fut.set_result(bool(self._state._instance_names)))
            return fut.result(timeout=max(0.05, deadline - time.monotonic()))

        try:
            for name in list(self._libraries):
                self._post(LibraryRemoved(now=time.monotonic(), name=name))
            while pending() and time.monotonic() < deadline:
                time.sleep(0.02)
        except Exception as e:  # closing must go on
            log.warning("stopping the libraries at close: %s", e)

    # ------------------------------------------------------------------ remote helpers
    def remote_map(self, fn: str, seq: Iterable[Any], library: str, name: str = "",
                   chunksize: int = 1) -> list[Any]:
        """``[fn(x) for x in seq]`` by FunctionCalls of ``library``'s function ``fn`` (its
        name), ``chunksize`` items each. (``name`` is TaskVine's event key: unused.)"""
        from .mapping import remote_map_calls
        return remote_map_calls(self, fn, seq, library, chunksize)  # type: ignore[arg-type]

    def remote_pair(self, fn: str, seq1: Iterable[Any], seq2: Iterable[Any], library: str,
                    name: str = "", chunksize: int = 1) -> list[Any]:
        """``[fn((a, b)) for a in seq1 for b in seq2]`` by FunctionCalls of ``library``."""
        from .mapping import remote_pair_calls
        return remote_pair_calls(self, fn, seq1, seq2, library,  # type: ignore[arg-type]
                                 chunksize)

    def remote_tree_reduce(self, fn: str, seq: Iterable[Any], library: str, name: str = "",
                           chunksize: int = 2) -> Any:
        """Reduce ``seq`` with ``library``'s function ``fn`` (taking a list of up to
        ``chunksize`` values) in a tree of FunctionCalls."""
        from .mapping import remote_tree_reduce_calls
        return remote_tree_reduce_calls(self, fn, seq, library,  # type: ignore[arg-type]
                                        chunksize)
