"""TaskVine's higher-order helpers: ``m.map``, ``m.pair`` and ``m.tree_reduce`` over
PythonTasks, and ``m.remote_map``, ``m.remote_pair``, ``m.remote_tree_reduce`` over
FunctionCalls of an installed library.

Each helper cuts its input into chunks, submits one PythonTask per chunk, then
collects the tasks by id (``manager.wait_for_task_id``) in submission order, so
the result is in input order however the tasks finish, and finished tasks
that belong to the caller's own work stay queued for the caller's ``wait()``.

Shapes, as TaskVine's (``ndcctools.taskvine.Manager.map/pair/tree_reduce``):

* ``map_tasks(m, fn, seq, chunksize)`` -> ``[fn(x) for x in seq]``;
  ``ceil(len(seq) / chunksize)`` tasks.
* ``pair_tasks(m, fn, seq1, seq2, chunksize)`` ->
  ``[fn((a, b)) for a, b in itertools.product(seq1, seq2)]``: ``fn`` gets ONE
  tuple, as in TaskVine (the manual's ``lambda x, y`` example fails there too).
* ``tree_reduce_tasks(m, fn, seq, chunksize)``: ``fn`` takes a list; it is
  applied to consecutive chunks of ``chunksize`` values (the last chunk may be
  shorter, even a single value, and still goes through ``fn``), level after
  level, until one value is left. One value in gives that value back without
  running anything, as ``functools.reduce`` does.

Differences from TaskVine, on purpose:

* A chunk whose function raised makes the helper raise that same exception
  (with a note naming the chunk and task); a chunk that produced no result at
  all raises the task's ``PythonTaskNoResult``/``RemoteTaskError``. TaskVine
  documents nothing here (its code hands the failure object on as if it were a
  result, or fails inside ``list()``). Before raising, the chunks still queued
  or running are cancelled and collected, so the manager is left as it was.
* ``chunksize`` must be a positive int (tree_reduce: at least 2, since a chunk
  of one never reduces; TaskVine loops forever); TaskVine fails obscurely.
* ``tree_reduce`` of an empty sequence raises ``TypeError`` with
  ``functools.reduce``'s message (TaskVine: ``IndexError``).
* ``pair``'s ``env`` (a poncho/conda environment in TaskVine) raises
  ``NotImplementedError`` until environments exist; TaskVine also forgets to add
  it to the last chunk.
* The tasks carry TaskVine's tags (the chunk index as a string).
* Results come back to the manager after every ``tree_reduce`` level (as in
  TaskVine); keeping them on the workers as temps is a later improvement.
* ``remote_*`` take the library function's name and call it with Python values
  (a chunk), not TaskVine's JSON event ``{name: chunk}`` answered by ``["Result"]``
  (a protocol its own libraries no longer speak); ``name`` is accepted and unused.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from ..task import PythonTask, RemoteTaskError, Task

_POLL = 5.0  # seconds per wait_for_task_id call; the loop itself waits without limit
_DRAIN_SECONDS = 30.0  # how long cleanup waits for cancelled chunks to come back


class _Manager(Protocol):
    """What the helpers use of a Manager (its public API)."""

    def submit(self, t: Task, /) -> int: ...

    def wait_for_task_id(self, task_id: int, timeout: Any, /) -> Any: ...

    def cancel_by_task_id(self, task_id: int, /) -> Any: ...


def _apply_each(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """Runs on the worker: ``fn`` on every item of one chunk."""
    return [fn(x) for x in items]


def map_tasks(manager: _Manager, fn: Callable[[Any], Any], seq: Iterable[Any],
              chunksize: int = 1) -> list[Any]:
    """TaskVine's ``m.map``: ``[fn(x) for x in seq]``, computed by PythonTasks.

    Args:
        manager: the Manager to submit to (it needs workers to make progress).
        fn: a function of one argument; it and the elements must be picklable.
        seq: the elements.
        chunksize: elements per task; ``ceil(len(seq) / chunksize)`` tasks are submitted.

    Returns:
        The results, in the order of ``seq`` (an empty list for an empty ``seq``).

    Raises:
        ValueError: ``chunksize`` < 1. TypeError: ``chunksize`` is not an int.
        Exception: the exception ``fn`` raised on a worker (the first failing chunk
            in input order), or the task's error if a chunk produced no result.
    """
    _check_chunksize(chunksize, 1)
    items = list(seq)
    chunks = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
    outputs = _run(manager, [PythonTask(_apply_each, fn, c) for c in chunks], "map")
    return [value for out in outputs for value in out]


def pair_tasks(manager: _Manager, fn: Callable[[tuple[Any, Any]], Any], seq1: Iterable[Any],
               seq2: Iterable[Any], chunksize: int = 1, env: Any = None) -> list[Any]:
    """TaskVine's ``m.pair``: ``[fn((a, b)) for a, b in itertools.product(seq1, seq2)]``.

    ``fn`` gets one argument, the tuple ``(a, b)``, as in TaskVine.

    Args:
        manager: the Manager to submit to.
        fn: a function of one tuple.
        seq1: the first elements of the pairs (the outer loop).
        seq2: the second elements (the inner loop).
        chunksize: pairs per task.
        env: TaskVine's environment tarball for the tasks; only None is supported yet.

    Returns:
        The results in ``itertools.product`` order.

    Raises:
        NotImplementedError: ``env`` is given. ValueError/TypeError: a bad ``chunksize``.
        Exception: what ``fn`` raised, as for ``map_tasks``.
    """
    if env is not None:
        raise NotImplementedError("environments land with libraries")
    _check_chunksize(chunksize, 1)
    pairs = list(itertools.product(seq1, seq2))
    chunks = [pairs[i:i + chunksize] for i in range(0, len(pairs), chunksize)]
    outputs = _run(manager, [PythonTask(_apply_each, fn, c) for c in chunks], "pair")
    return [value for out in outputs for value in out]


def tree_reduce_tasks(manager: _Manager, fn: Callable[[list[Any]], Any], seq: Iterable[Any],
                      chunksize: int = 2) -> Any:
    """TaskVine's ``m.tree_reduce``: reduce ``seq`` to one value with ``fn`` over lists.

    Each level cuts the values into consecutive chunks of ``chunksize`` (the last
    may be shorter, even of one value, and is still passed to ``fn``), runs
    ``fn(chunk)`` as one PythonTask per chunk, and the results in order are the
    next level's values, until one value is left. So ``fn`` must accept a list
    of 1 to ``chunksize`` values and return a value of the same kind.

    Args:
        manager: the Manager to submit to.
        fn: a function of one list.
        seq: the values to reduce.
        chunksize: values per task, at least 2.

    Returns:
        The last value; a one-value ``seq`` gives that value without running a task.

    Raises:
        TypeError: ``seq`` is empty (as ``functools.reduce`` without an initial value),
            or ``chunksize`` is not an int.
        ValueError: ``chunksize`` < 2.
        Exception: what ``fn`` raised, as for ``map_tasks``.
    """
    _check_chunksize(chunksize, 2)
    values = list(seq)
    if not values:
        raise TypeError("tree_reduce() of empty iterable with no initial value")
    level = 0
    while len(values) > 1:
        chunks = [values[i:i + chunksize] for i in range(0, len(values), chunksize)]
        values = _run(manager, [PythonTask(fn, c) for c in chunks], f"tree_reduce level {level}")
        level += 1
    return values[0]


# ---------------------------------------------------------------------- running the chunks
def _check_chunksize(chunksize: Any, least: int) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int, got {chunksize!r}")
    if chunksize < least:
        raise ValueError(f"chunksize must be at least {least}, got {chunksize}")


def _run(manager: _Manager, tasks: list[PythonTask], what: str) -> list[Any]:
    """Submit every task, then collect them in order; their outputs, in order.

    On any failure (a chunk raised, a submit failed, the caller was interrupted)
    the tasks not yet collected are cancelled and collected before the error
    propagates, so none of them is left for the caller's ``wait()``.
    """
    submitted: list[PythonTask] = []
    collected = 0
    try:
        for i, t in enumerate(tasks):
            t.set_tag(str(i))
            manager.submit(t)
            submitted.append(t)
        outputs = []
        for i, t in enumerate(submitted):
            _collect(manager, t, None)
            collected = i + 1
            outputs.append(_output_of(t, what, i))
        return outputs
    except BaseException:
        _abandon(manager, submitted[collected:])
        raise


def _collect(manager: _Manager, t: Task, deadline: float | None) -> bool:
    """Wait until ``t`` is handed back by ``wait_for_task_id`` (or the deadline passes:
    False). A task another thread's ``wait()`` took counts as collected: its result
    fields are already filled in."""
    while True:
        left = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
        if left <= 0:
            return False
        if manager.wait_for_task_id(t.id, left) is not None:
            return True
        if t._done:  # finished, yet not handed to us: someone else's wait() took it
            manager.wait_for_task_id(t.id, 0)
            return True


def _output_of(t: PythonTask, what: str, index: int) -> Any:
    """The return value of a collected chunk task, or raise why there is none."""
    if t.successful():
        return t.output
    err = t.output
    where = f"vinework {what}: chunk {index} (task {t.id}) ended with result " \
            f"'{t.result}', exit code {t.exit_code}"
    if not isinstance(err, BaseException):
        raise RemoteTaskError(where + (f": {t.error_message}" if t.error_message else ""))
    err.add_note(where)
    raise err


def _abandon(manager: _Manager, tasks: list[PythonTask]) -> None:
    """Cancel the tasks and collect them, for at most ``_DRAIN_SECONDS``; never raises
    (the error being propagated is the one that matters)."""
    try:
        for t in tasks:
            manager.cancel_by_task_id(t.id)
        deadline = time.monotonic() + _DRAIN_SECONDS
        for t in tasks:
            if not _collect(manager, t, deadline):
                break
    except Exception:
        pass


# ---------------------------------------------------------------------- on a library
def _check_library_call(fn: Any, library: Any) -> None:
    if not isinstance(fn, str) or not fn:
        raise TypeError(f"remote helpers take the name of a function of the library, "
                        f"got {fn!r}")
    if not isinstance(library, str) or not library:
        raise TypeError(f"remote helpers take the library's name, got {library!r}")


def remote_map_calls(manager: _Manager, fn: str, seq: Iterable[Any], library: str,
                     chunksize: int = 1) -> list[Any]:
    """TaskVine's ``m.remote_map``: ``[fn(x) for x in seq]`` with ``fn`` the name of a
    function of an installed library; one FunctionCall per chunk of ``chunksize``
    elements (the library applies ``fn`` to each element of its chunk). Errors as
    ``map_tasks``; a library that is not installed raises ``RemoteTaskError`` ("missing
    library")."""
    from ..serverless import FunctionCall
    _check_library_call(fn, library)
    _check_chunksize(chunksize, 1)
    items = list(seq)
    chunks = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
    calls = [FunctionCall(library, MAP_PREFIX + fn, c) for c in chunks]
    outputs = _run(manager, calls, "remote_map")  # type: ignore[arg-type]
    return [value for out in outputs for value in out]


def remote_pair_calls(manager: _Manager, fn: str, seq1: Iterable[Any], seq2: Iterable[Any],
                      library: str, chunksize: int = 1) -> list[Any]:
    """TaskVine's ``m.remote_pair``: ``[fn((a, b)) for a, b in product(seq1, seq2)]``
    (``fn`` gets one tuple, as in ``pair``) by FunctionCalls of ``library``."""
    from ..serverless import FunctionCall
    _check_library_call(fn, library)
    _check_chunksize(chunksize, 1)
    pairs = list(itertools.product(seq1, seq2))
    chunks = [pairs[i:i + chunksize] for i in range(0, len(pairs), chunksize)]
    calls = [FunctionCall(library, MAP_PREFIX + fn, c) for c in chunks]
    outputs = _run(manager, calls, "remote_pair")  # type: ignore[arg-type]
    return [value for out in outputs for value in out]


def remote_tree_reduce_calls(manager: _Manager, fn: str, seq: Iterable[Any], library: str,
                             chunksize: int = 2) -> Any:
    """TaskVine's ``m.remote_tree_reduce``: ``tree_reduce`` with ``fn`` (a function of one
    list) the name of a function of ``library``, one FunctionCall per chunk."""
    from ..serverless import FunctionCall
    _check_library_call(fn, library)
    _check_chunksize(chunksize, 2)
    values = list(seq)
    if not values:
        raise TypeError("remote_tree_reduce() of empty iterable with no initial value")
    level = 0
    while len(values) > 1:
        chunks = [values[i:i + chunksize] for i in range(0, len(values), chunksize)]
        calls = [FunctionCall(library, fn, c) for c in chunks]
        values = _run(manager, calls, f"remote_tree_reduce level {level}")  # type: ignore[arg-type]
        level += 1
    return values[0]


MAP_PREFIX = "vinework.map:"  # a library runs "vinework.map:f" as [f(x) for x in chunk]
