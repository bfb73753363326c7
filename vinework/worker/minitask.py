"""Mini tasks on the worker: making a file in the cache by running a small task here.

A mini-task file (``declare_minitask``, ``declare_untar``, ``declare_poncho``)
has no copy anywhere until a worker that needs it makes it. The manager first
brings every input of the mini task into this worker's cache, then sends a
``Fetch`` whose URL is ``mini://NAME`` and whose ``mini_*`` fields describe the
task; the worker's fetch core treats it as one more source (see ``fetches.py``)
and the shell calls ``make_mini`` instead of a download. Kinds:

- ``command``: ``mini_command`` runs under ``/bin/sh`` in a scratch sandbox with
  its inputs placed as a task's are (``sandbox.prepare``) and the worker's
  environment plus ``mini_env``; what it leaves at ``mini_source`` (a file or a
  directory) becomes the cached file.
- ``untar``: the one input, a tar archive (plain, gzip, bzip2 or xz), is
  unpacked into a directory by ``trees.unpack``, which refuses members that
  would escape it (absolute names, ``..``, links out of it, writes through a
  link) with an error naming the member.
- ``poncho``: the same unpacking, of a conda-pack style environment; if it
  holds ``bin/conda-unpack`` (conda-pack's prefix fixer) that is run inside it.

Failures raise ``TransferError`` with ``SOURCE_BROKEN`` (counted by the
manager like failed URL fetches: the waiting tasks are forsaken and run
elsewhere, then end "forsaken"), naming the mini task and, for a command, its
exit code and the end of its output. A mini task has a time limit
(``VINEWORK_MINI_TIMEOUT``, 3600 s by default).
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..protocol import Fetch, TransferFailure
from ..protocol.transfer import TransferError
from ..trees import TreeError, copy_file, copy_tree, open_under, remove_path, tree_size, unpack
from .sandbox import OUTPUT_NAME, CommandProcess, SandboxError, prepare, safe_join
from .taskenv import env_seconds

KINDS = ("command", "untar", "poncho")
OUTPUT_TAIL = 2000  # bytes of a failed command's output quoted in the error


def mini_timeout(environ: Mapping[str, str]) -> float:
    """Seconds a mini task may run (``VINEWORK_MINI_TIMEOUT``, default 3600).

    Raises:
        ValueError: the variable is not a positive number.
    """
    return env_seconds(environ, "VINEWORK_MINI_TIMEOUT", 3600.0)


@dataclass(frozen=True, slots=True)
class MiniSpec:
    """What makes one mini-task file (from a ``Fetch``)."""

    name: str
    kind: str
    command: str
    inputs: tuple[tuple[str, str], ...]
    env: tuple[tuple[str, str], ...]
    source: str

    @classmethod
    def of(cls, f: Fetch) -> MiniSpec:
        """The mini task a ``Fetch`` describes.

        Raises:
            ValueError: an unknown kind, a remote name that escapes its sandbox, or an
                unpacking kind without exactly one input.
        """
        if f.mini_kind not in KINDS:
            raise ValueError(f"unknown mini-task kind {f.mini_kind!r}")
        inputs = tuple((str(n), str(r)) for n, r in f.mini_inputs)
        for _, remote in inputs:
            safe_join("/sandbox", remote)
        if f.mini_kind == "command":
            if not f.mini_command or not f.mini_source:
                raise ValueError("a mini task needs a command and the name of what it makes")
            safe_join("/sandbox", f.mini_source)
        elif len(inputs) != 1:
            raise ValueError(f"a {f.mini_kind} mini task unpacks exactly one input")
        return cls(f.name, f.mini_kind, f.mini_command, inputs,
                   tuple((str(k), str(v)) for k, v in f.mini_env), f.mini_source)

    def describe(self) -> str:
        if self.kind == "command":
            return f"mini task `{self.command[:200]}` (making {self.source!r})"
        return f"{self.kind} of input {self.inputs[0][0]}"


def _broken(spec: MiniSpec, why: str) -> TransferError:
    return TransferError(f"mini://{spec.name}: {spec.describe()} failed: {why}",
                         TransferFailure.SOURCE_BROKEN)


def _tail(sandbox: str) -> str:
    try:  # never through a link, never a fifo (it would block the loop)
        fd = os.open(os.path.join(sandbox, OUTPUT_NAME),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        text = os.pread(fd, OUTPUT_TAIL, max(0, st.st_size - OUTPUT_TAIL)).decode(
            "utf-8", "replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)
    return f"; its output ends: {text}" if text else "; it printed nothing"


def _take(spec: MiniSpec, sandbox: str, part: str) -> None:
    """Move what the mini task made (``spec.source``) to ``part``: only a regular file or
    a real directory, reached through real directories of the sandbox."""
    try:
        dfd, base = open_under(sandbox, spec.source)
    except (OSError, TreeError) as e:
        raise _broken(spec, f"exited with 0 but {spec.source!r} cannot be taken: {e}") from None
    try:
        try:
            st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            raise _broken(spec, f"exited with 0 but left no {spec.source!r}"
                          + _tail(sandbox)) from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise _broken(spec, f"exited with 0 but {spec.source!r} is not a file or a "
                          "directory (a symbolic link or a special file: refused)")
        try:
            os.rename(base, part, src_dir_fd=dfd)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            try:
                if stat.S_ISDIR(st.st_mode):
                    copy_tree(f"/proc/self/fd/{dfd}/{base}", part)
                else:
                    copy_file(base, part, dir_fd=dfd)
            except TreeError as e2:
                raise _broken(spec, f"what it made cannot be cached: {e2}") from None
    finally:
        os.close(dfd)


def _unpack_into(spec: MiniSpec, tarball: str, part: str) -> int:
    """Unpack (in a thread) ``tarball`` at ``part``; run conda-unpack for poncho."""
    try:
        size = unpack(tarball, part, compressed=True)
    except TreeError as e:
        raise _broken(spec, str(e)) from None
    fixer = os.path.join(part, "bin", "conda-unpack")
    if spec.kind == "poncho" and os.path.isfile(fixer) and os.access(fixer, os.X_OK):
        import subprocess
        try:
            r = subprocess.run([fixer], cwd=part, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            remove_path(part)
            raise _broken(spec, f"bin/conda-unpack could not run: {e}") from None
        if r.returncode != 0:
            remove_path(part)
            out = (r.stdout + r.stderr).decode("utf-8", "replace")[-OUTPUT_TAIL:]
            raise _broken(spec, f"bin/conda-unpack exited with {r.returncode}: {out}")
        size = tree_size(part)
    return size


async def make_mini(spec: MiniSpec, part: str, lookup: Callable[[str], str | None],
                    scratch_root: str, base_env: Mapping[str, str], timeout: float,
                    run_blocking: Callable[..., asyncio.Future[int]]) -> tuple[int, float]:
    """Make ``spec``'s file at ``part`` (a path in the cache directory); return its size
    and the seconds it took. ``lookup`` gives the cache path of an input;
    ``run_blocking(fn, *args)`` runs file-system work off the event loop.

    Raises:
        TransferError: the mini task failed (``SOURCE_BROKEN``), or an input is not in
            the cache (``LOCAL_IO``: the manager should have sent it first).
    """
    t0 = time.monotonic()
    paths: dict[str, str] = {}
    for cname, remote in spec.inputs:
        p = lookup(cname)
        if p is None:
            raise TransferError(f"mini://{spec.name}: input {cname} ({remote}) of its mini "
                                "task is not in this worker's cache", TransferFailure.LOCAL_IO)
        paths[cname] = p
    if spec.kind != "command":
        size = await run_blocking(_unpack_into, spec, paths[spec.inputs[0][0]], part)
        return size, time.monotonic() - t0
    sandbox = tempfile.mkdtemp(prefix="mini-", dir=scratch_root)
    try:
        try:
            prepare(sandbox, list(spec.inputs), paths)
        except SandboxError as e:
            raise TransferError(f"mini://{spec.name}: {e}", TransferFailure.LOCAL_IO) from None
        env = dict(base_env)
        env.update(spec.env)
        env["VINE_SANDBOX"] = sandbox
        try:
            proc = CommandProcess(spec.command, sandbox, env)
        except OSError as e:
            raise _broken(spec, f"cannot start: {e}") from None
        try:
            status, _ = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill("time limit")
            raise _broken(spec, f"still running after {timeout:g} s (killed)") from None
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            what = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
            raise _broken(spec, what + _tail(sandbox))
        _take(spec, sandbox, part)
        try:
            size = tree_size(part) if os.path.isdir(part) else os.stat(part).st_size
        except (OSError, TreeError) as e:
            remove_path(part)
            raise _broken(spec, f"what it made cannot be cached: {e}") from None
        return size, time.monotonic() - t0
    finally:
        remove_path(sandbox)
