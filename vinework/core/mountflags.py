"""The mount flags of a task's inputs and outputs (TaskVine's ``VINE_*`` flags), read
from its spec: which outputs are optional (``failure_only``/``success_only``), watched or
kept only on failure, which inputs are strict or symlinked, and whether a run reported
every output it had to. Pure functions of a ``TaskSpec``."""

from __future__ import annotations

from ..constants import (
    VINE_FAILURE_ONLY,
    VINE_FIXED_LOCATION,
    VINE_MOUNT_SYMLINK,
    VINE_SUCCESS_ONLY,
    VINE_WATCH,
)
from .events import TaskSpec


def all_outputs(declared: list[tuple[str, str]], made: list[tuple[str, int]],
                 optional: dict[str, int] | None = None) -> bool:
    """True when the worker reported every declared output (optional ones aside)."""
    if not declared:
        return True
    got = {n for n, _ in made}
    return all(n in got or (optional and n in optional) for n, _ in declared)


def optional_outputs(s: TaskSpec) -> dict[str, int]:
    """Cache name -> flags of the outputs marked failure_only or success_only."""
    if not s.mount_flags:
        return {}
    flags = dict(s.mount_flags)
    out: dict[str, int] = {}
    for name, remote in s.outputs:
        fl = flags.get(remote, 0) & (VINE_FAILURE_ONLY | VINE_SUCCESS_ONLY)
        if fl:
            out[name] = fl
    return out


def watched_outputs(s: TaskSpec) -> list[str]:
    """Cache names of the outputs marked watch (streamed to the manager while it runs)."""
    flags = dict(s.mount_flags)
    return [n for n, remote in s.outputs if flags.get(remote, 0) & VINE_WATCH]


def failure_outputs(s: TaskSpec) -> list[str]:
    """Cache names of the outputs marked failure_only (kept only when the task fails)."""
    return [n for n, fl in optional_outputs(s).items() if fl & VINE_FAILURE_ONLY]


def unwanted_outputs(optional: dict[str, int], succeeded: bool) -> set[str]:
    """The optional outputs not to bring back: failure_only ones when the task succeeded
    (result success and exit code 0), success_only ones when it did not."""
    skip = VINE_FAILURE_ONLY if succeeded else VINE_SUCCESS_ONLY
    return {name for name, fl in optional.items() if fl & skip}


def strict_inputs(s: TaskSpec) -> tuple[str, ...]:
    """Cache names of the inputs added with ``strict_input=True``."""
    flags = dict(s.mount_flags)
    return tuple(name for name, remote in s.inputs
                 if flags.get(remote, 0) & VINE_FIXED_LOCATION)


def symlink_inputs(s: TaskSpec) -> list[str]:
    """Remote names of the inputs added with ``mount_symlink=True``."""
    flags = dict(s.mount_flags)
    return [remote for _, remote in s.inputs if flags.get(remote, 0) & VINE_MOUNT_SYMLINK]
