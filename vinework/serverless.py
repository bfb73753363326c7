"""TaskVine's serverless names: ``LibraryTask``, ``FunctionCall``, ``FunctionCallNoResult``.

A *library* is a long-lived process on a worker that holds a set of Python
functions, already unpickled, and whatever its context function set up once
(a loaded model, a connection, a big table). A ``FunctionCall`` names a
library and one of its functions; only its arguments travel, and it runs in a
warm instance of that library (``vinework.core.libraries`` places calls and
starts instances on demand; ``vinework.worker.libprocess`` is the process).

``Manager.create_library_from_functions`` makes a ``LibraryTask``;
``Manager.install_library`` makes it available. ``t.output`` of a finished
FunctionCall is the return value; the exception, with its remote traceback
(``t.remote_traceback``, and a note on the exception), when the function
raised; a ``FunctionCallNoResult`` when the call produced no result at all
(its library kept exiting, it was cancelled, the library is missing, ...).
"""

from __future__ import annotations

import os
import pickle
import sys
import sysconfig
import types
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from .pickling import _ATOMS, _plain
from .task import PythonTask, PythonTaskNoResult, Task

EXEC_MODES = ("fork", "direct")
ARGS_MAX = 32 << 20  # bytes of pickled arguments a call carries (its RunTask frame)


class FunctionCallNoResult(PythonTaskNoResult):
    """What a FunctionCall's ``output`` is when the call itself failed (no return value
    and no exception of the function's: its library exited under it, it was cancelled,
    or its library is not installed)."""


class LibraryTask(Task):
    """A library: functions (and their context) that workers keep loaded, TaskVine's
    ``LibraryTask``. Made by ``Manager.create_library_from_functions``.

    A Task for its resources and files: ``set_cores/set_memory/set_disk/set_gpus`` (each
    instance holds these on its worker; none set: a whole worker, as TaskVine),
    ``add_input`` (files placed in every instance's sandbox, its working directory),
    ``set_env_var`` (the instance's environment), and ``set_function_slots(n)`` (calls
    an instance runs at once; default: one per core of the instance).
    """

    def __init__(self, command: str, library_name: str, **task_info: Any) -> None:
        super().__init__(command, **task_info)
        self.library_name = str(library_name)
        self.function_slots = 0
        self.exec_mode = "fork"
        self.init_command = ""
        self.function_names: list[str] = []
        self.payload: bytes | None = None  # None: not made from functions

    def set_function_slots(self, n: int) -> None:
        """How many calls one instance runs at once (0: one per core)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"function slots must be an int >= 0, got {n!r}")
        self.function_slots = n

    def set_library_provided(self, name: str) -> None:
        self.library_name = str(name)

    def provides_library(self) -> bool:
        return True

    def get_library_provided(self) -> str:
        return self.library_name

    def __repr__(self) -> str:
        return f"<LibraryTask {self.library_name!r} {self.function_names}>"


class FunctionCall(PythonTask):
    """Call ``fn_name(*args, **kwargs)`` in library ``library_name``, TaskVine's
    ``FunctionCall``.

    Everything a PythonTask has works: ``enable_temp_output()`` and ``output_file``
    (a later call, PythonTask or command task takes the result as an input),
    ``add_input``/``add_output`` (files in the call's own sandbox, its working directory
    while it runs), ``set_env_var``, ``set_retries``, ``set_time_max``, priorities, tags.
    Resources set on a call (``set_cores``, ...) are recorded and shown to it in its
    environment, but a call runs in its library's resources: function slots, not
    cores, bound how many run at once.
    """

    def __init__(self, library_name: str, fn_name: str, *args: Any, **kwargs: Any) -> None:
        if not isinstance(library_name, str) or not library_name:
            raise TypeError("FunctionCall needs a library name (a non-empty str)")
        if not isinstance(fn_name, str) or not fn_name:
            raise TypeError("FunctionCall needs the name of a function of the library")
        Task.__init__(self, f"function:{library_name}.{fn_name}")
        self.library_name = library_name
        self.fn_name = fn_name
        self.function = None
        self._args = args
        self._kwargs = kwargs
        self.payload: bytes | None = None
        self.temp_output = False
        self.output_cache = False
        self.serialize_output = True
        self.exec_mode = ""
        self._output_file = None
        self.remote_traceback = ""

    _no_result = FunctionCallNoResult

    def submit_finalize(self) -> None:
        """Serialize the arguments (done by ``Manager.submit``)."""
        if self.payload is None:
            payload = dumps_args(self._args, self._kwargs)
            if len(payload) > ARGS_MAX:
                raise ValueError(
                    f"FunctionCall {self.library_name}.{self.fn_name}: its arguments pickle "
                    f"to {len(payload) >> 20} MiB (at most {ARGS_MAX >> 20} MiB travel with "
                    "a call): pass large data as an input file (add_input) instead")
            self.payload = payload

    def set_fn_args(self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None
                    ) -> None:
        """Replace the arguments (before ``submit``)."""
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self.payload = None

    def set_exec_method(self, method: str) -> None:
        """Run this call "fork" (in a child of the library, from its state after set-up)
        or "direct" (in the library process itself); default: the library's mode."""
        if method not in EXEC_MODES:
            raise ValueError(f"exec method must be 'fork' or 'direct', got {method!r}")
        self.exec_mode = method

    def set_exec_mode(self, mode: str) -> None:
        self.set_exec_method(mode)

    def disable_output_serialization(self) -> None:
        raise NotImplementedError("disable_output_serialization is not supported for "
                                  "FunctionCalls (their result is always pickled)")

    def needs_library(self) -> bool:  # type: ignore[override]
        return True

    def get_library_required(self) -> str:  # type: ignore[override]
        return self.library_name

    def __repr__(self) -> str:
        return f"<FunctionCall {self.id} {self.library_name}.{self.fn_name}>"


def dumps_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The bytes of a call's arguments: plain pickle for plain values (fast), cloudpickle
    otherwise (lambdas, functions and classes of ``__main__``)."""
    for a in args:
        if type(a) not in _ATOMS and not _plain(a):
            break
    else:
        if not kwargs or all(_plain(v) for v in kwargs.values()):
            return pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps((tuple(args), dict(kwargs)))


# ---------------------------------------------------------------- library payloads
def _installed_paths() -> tuple[str, ...]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def _by_value(mod: types.ModuleType | None) -> bool:
    """Should functions of ``mod`` travel by value (the worker may not import it)? True
    for the user's own modules; False for installed ones and vinework's."""
    if mod is None or mod.__name__ == "__main__":
        return False  # (cloudpickle sends __main__ by value anyway)
    if mod.__name__.split(".")[0] in ("vinework", "cloudpickle"):
        return False
    path = getattr(mod, "__file__", None)
    if not path:
        return False
    return not os.path.realpath(path).startswith(_installed_paths())


def library_payload(functions: dict[str, Callable[..., Any]],
                    context: tuple[Callable[..., Any], list[Any], dict[str, Any]] | None,
                    modules: list[str], objects: dict[str, Any],
                    optional_modules: list[str] | None = None) -> bytes:
    """The cloudpickle of what a library instance loads at set-up (see ``libprocess``).

    Functions of the user's own modules (not installed, not ``__main__``) are pickled by
    value too, so a worker that cannot import those modules still runs them. A module of
    ``modules`` that does not import fails the instance's set-up; one of
    ``optional_modules`` is skipped.
    """
    mods = set()
    for obj in [*functions.values(), *(context[:1] if context else ()), *objects.values()]:
        mod = sys.modules.get(getattr(obj, "__module__", "") or "")
        if _by_value(mod):
            mods.add(mod)
    registered = []
    already = getattr(getattr(cloudpickle, "cloudpickle", None),
                      "_is_registered_pickle_by_value", lambda m: False)
    for mod in mods:
        if already(mod):
            continue  # the user's own registration: not ours to undo below
        try:
            cloudpickle.register_pickle_by_value(mod)
            registered.append(mod)
        except (ValueError, AttributeError):
            pass
    try:
        return cloudpickle.dumps({"functions": functions, "context": context,
                                  "modules": modules, "objects": objects,
                                  "optional_modules": list(optional_modules or [])})
    finally:
        for mod in registered:
            try:
                cloudpickle.unregister_pickle_by_value(mod)
            except (ValueError, AttributeError):
                pass
