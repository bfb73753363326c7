"""What a task sees: its environment variables and its command line (pure, no I/O).

Every task gets TaskVine's variables for the resources it was given: ``CORES``,
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``,
``VECLIB_MAXIMUM_THREADS`` and ``NUMEXPR_NUM_THREADS`` (the cores, at least 1),
``MEMORY`` and ``DISK`` (MB), ``GPUS`` and, when it holds gpus,
``CUDA_VISIBLE_DEVICES`` (their indices); ``TMPDIR``, ``TMP`` and ``TEMP`` name
``<sandbox>/.taskvine.tmp`` (the shell creates it); ``VINE_SANDBOX`` names the sandbox;
``DISPLAY`` is removed.
Then the task's own variables (``RunTask.env``) override those, and the names
in ``RunTask.env_unset`` (TaskVine's ``set_env_var(name, None)``) are removed.

Command tasks get the worker's environment with these changes. PythonTasks
get the same changes applied to the warm interpreter's ``os.environ`` for the
call (see ``forkserver.py``): in a forked child they simply stay; a direct
executor makes each call's environment from its own at the call's start.

``wrap_command`` applies the worker's ``--task-wrapper``: ``{}`` in the wrapper
is replaced by the command quoted for the shell, ``[]`` by the command as it
is; a wrapper with neither runs ``WRAPPER /bin/sh -c 'COMMAND'``, so the
wrapper wraps the whole command line, pipes and ``;`` included.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence

from ..protocol import RunTask

TMP_DIR_NAME = ".taskvine.tmp"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
REMOVED = ("DISPLAY",)


def environment_changes(task: RunTask, sandbox: str, gpu_ids: Sequence[int] = ()
                        ) -> tuple[list[tuple[str, str]], list[str]]:
    """The variables to set (in order; later ones win), then the names to remove."""
    threads = str(max(1, task.cores))
    tmp = os.path.join(sandbox, TMP_DIR_NAME)
    sets: list[tuple[str, str]] = [("CORES", str(task.cores))]
    sets += [(name, threads) for name in THREAD_VARIABLES]
    sets += [("MEMORY", str(task.memory)), ("DISK", str(task.disk)), ("GPUS", str(task.gpus))]
    if task.gpus > 0 and gpu_ids:
        sets.append(("CUDA_VISIBLE_DEVICES", ",".join(str(g) for g in gpu_ids)))
    sets += [("TMPDIR", tmp), ("TMP", tmp), ("TEMP", tmp), ("VINE_SANDBOX", sandbox)]
    own = {k for k, _ in task.env}
    unset = [n for n in REMOVED if n not in own]
    sets += [(k, v) for k, v in task.env]
    unset += list(task.env_unset)
    return sets, unset


_BASE: tuple[int, dict[str, str]] | None = None


def base_environment() -> dict[str, str]:
    """The worker's own environment, copied once (reading ``os.environ`` decodes every
    variable: about 150 us per task on this kind of machine). The worker never changes
    its own environment; the copy is made again if the number of variables changes."""
    global _BASE
    env = os.environ
    key = len(env)
    if _BASE is None or _BASE[0] != key:
        _BASE = (key, dict(env))
    return _BASE[1]


def task_environment(base: Mapping[str, str], task: RunTask, sandbox: str,
                     gpu_ids: Sequence[int] = ()) -> dict[str, str]:
    """The whole environment of a command task: ``base`` with the task's changes."""
    env = dict(base)
    sets, unset = environment_changes(task, sandbox, gpu_ids)
    env.update(sets)
    for name in unset:
        env.pop(name, None)
    return env


def wrap_command(command: str, wrapper: str) -> str:
    """``command`` run by ``wrapper`` (``--task-wrapper``); unchanged without one."""
    if not wrapper:
        return command
    if "{}" in wrapper:
        return wrapper.replace("{}", shlex.quote(command))
    if "[]" in wrapper:
        return wrapper.replace("[]", command)
    return f"{wrapper} /bin/sh -c {shlex.quote(command)}"


def env_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds from the worker's environment variable ``name``
    (``default`` when it is unset or empty).

    Raises:
        ValueError: the variable is not a positive number.
    """
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if v <= 0:
        raise ValueError(f"{name}={raw!r} must be positive")
    return v

