"""Running one task in its own directory, with its inputs linked in from the cache.

Each task attempt gets an empty directory (released directories are emptied
and reused: see ``SandboxPool``). Inputs are hard links to cache files
(symlinks across filesystems, or always for ``mount_symlink`` inputs), placed
under their remote names; a directory input is a copy of the cached tree (see
``prepare``). Outputs, files or directories, are moved from the sandbox into
the cache afterwards. The task's stdout and
stderr go to one file in the sandbox (``OUTPUT_NAME``); ``take_output`` reads
its start for ``TaskDone`` and caps the file at the task's ``stdout_max`` in
place, so a large output is never held in memory. Command tasks run under
``/bin/sh -c`` (or exec'd directly when the command is plain words with
nothing for a shell to expand) in their own session and process group, so a
kill reaches every process they started. They are reaped through a pidfd
registered with the event loop (no thread per child, no SIGCHLD); where
``os.pidfd_open`` fails, ``waitpid(WNOHANG)`` is polled instead. Either way the
caller gets the real wait status and the process's resource usage
(``os.wait4``: its own and that of the children it waited for).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass

from ..trees import copy_tree
from .outcome import OUTPUT_INLINE_MAX
from .taskenv import TMP_DIR_NAME

# a command made only of plain words separated by single spaces needs no shell
_PLAIN = re.compile(r"[A-Za-z0-9_./,:=+@%-]+(?: [A-Za-z0-9_./,:=+@%-]+)*")

OUTPUT_NAME = ".vinework-output"


Rusage = resource.struct_rusage


class SandboxError(Exception):
    """A sandbox could not be prepared (bad remote name, missing input)."""


def safe_join(root: str, remote: str) -> str:
    """``root/remote``, refusing names that would leave ``root``."""
    if not remote or remote.startswith("/") or "\x00" in remote:
        raise SandboxError(f"remote name {remote!r} is not a relative path")
    parts = remote.split("/")
    if any(p in ("", "..") for p in parts):
        raise SandboxError(f"remote name {remote!r} escapes the sandbox")
    return os.path.join(root, *parts)


class SandboxPool:
    """Empty sandbox directories kept for reuse.

    Creating and removing a directory (and the output file in it) per task costs
    more than the task itself for small tasks on ext4; a released sandbox is
    emptied (its output file is kept, and truncated by the next task) and reused.
    """

    def __init__(self, root: str, keep: int = 64) -> None:
        self.root = root
        self.keep = keep
        self.free: list[str] = []
        self._n = 0

    def acquire(self) -> str:
        if self.free:
            return self.free.pop()
        self._n += 1
        path = os.path.join(self.root, f"s{self._n}")
        os.mkdir(path)
        return path

    def release(self, sandbox: str) -> None:
        try:
            for e in os.scandir(sandbox):
                if e.name == OUTPUT_NAME:
                    continue
                if e.name == TMP_DIR_NAME and _empty_dir(e.path):
                    continue  # the task's TMPDIR, left empty: kept for the next task
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path)
                else:
                    os.unlink(e.path)
        except OSError:
            remove(sandbox)
            return
        if len(self.free) < self.keep:
            self.free.append(sandbox)
        else:
            remove(sandbox)


def prepare(sandbox: str, inputs: list[tuple[str, str]], cache_lookup: dict[str, str],
            symlinks: frozenset[str] | set[str] = frozenset()) -> None:
    """Place every input (name -> cache path) under its remote name in an empty sandbox:
    a hard link to the cache file (a symlink across filesystems), or a symbolic link to
    it for the remote names in ``symlinks`` (``add_input(..., mount_symlink=True)``).

    A directory input is copied whole instead (files copied, symlinks kept as links):
    hard links would let a task that writes a file in place, or changes its mode,
    change the cached tree that later tasks and peers get. A ``mount_symlink`` tree is
    a link to the cached tree itself (the task must not write through it)."""
    for name, remote in inputs:
        src = cache_lookup.get(name)
        if src is None:
            raise SandboxError(f"input {name} ({remote}) is not in the cache")
        dest = safe_join(sandbox, remote)
        parent = os.path.dirname(dest)
        if parent != sandbox:
            os.makedirs(parent, exist_ok=True)
        if remote in symlinks:
            if not os.path.lexists(src):
                raise SandboxError(f"input {name} ({remote}) vanished from the cache")
            os.symlink(os.path.abspath(src), dest)
            continue
        if os.path.isdir(src) and not os.path.islink(src):
            try:  # a tree is copied: the task may change its copy, never the cached one
                copy_tree(src, dest)
            except OSError as e:
                raise SandboxError(f"input {name} ({remote}) cannot be copied: {e}") from None
            continue
        try:
            os.link(src, dest)
        except FileNotFoundError:
            raise SandboxError(f"input {name} ({remote}) vanished from the cache") from None
        except OSError:
            os.symlink(src, dest)


@dataclass(frozen=True, slots=True)
class Output:
    """What a task printed: the start of it, the size kept, whether a file holds it all."""

    text: str  # at most OUTPUT_INLINE_MAX bytes (plus a truncation notice), decoded
    size: int  # bytes of the whole output as kept (capped, notice included)
    big: bool  # True: the output file in the sandbox holds more than ``text``


def take_output(sandbox: str, keep_max: int) -> Output:
    """Read the start of the task's stdout+stderr and cap the file at ``keep_max`` bytes.

    Up to ``OUTPUT_INLINE_MAX`` bytes come back as text. A longer output stays
    in the sandbox's output file (``big``), truncated to ``keep_max`` bytes with
    a one-line notice appended when it was longer.
    """
    keep_max = max(0, keep_max)
    path = os.path.join(sandbox, OUTPUT_NAME)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(OUTPUT_INLINE_MAX, keep_max))
    except OSError:
        return Output("", 0, False)
    notice = (f"\n[vinework: output truncated: {size} bytes, first {keep_max} kept]\n"
              if size > keep_max else "")
    if size <= OUTPUT_INLINE_MAX or keep_max <= OUTPUT_INLINE_MAX:
        text = data.decode("utf-8", "replace") + notice
        return Output(text, len(data) + len(notice.encode()), False)
    if notice:
        os.truncate(path, keep_max)
        with open(path, "ab") as f:
            f.write(notice.encode())
    kept = min(size, keep_max) + len(notice.encode())
    return Output(data.decode("utf-8", "replace"), kept, True)


def remove(sandbox: str) -> None:
    """Delete a sandbox (unlink+rmdir is cheaper than rmtree for the usual flat case)."""
    try:
        entries = list(os.scandir(sandbox))
    except OSError:
        return
    try:
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                os.unlink(e.path)
        os.rmdir(sandbox)
    except OSError:
        shutil.rmtree(sandbox, ignore_errors=True)


class CommandProcess:
    """A running shell command, reaped through a pidfd on the event loop."""

    def __init__(self, command: str, sandbox: str, env: dict[str, str]) -> None:
        out = os.open(os.path.join(sandbox, OUTPUT_NAME), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                      0o644)
        try:
            argv = ["/bin/sh", "-c", command]
            if _PLAIN.fullmatch(command):
                # nothing for a shell to do: exec the words directly (saves a shell start-up)
                argv = command.split(" ")
            try:
                self.proc = self._spawn(argv, sandbox, env, out)
            except OSError:
                if argv[0] == "/bin/sh":
                    raise
                # not a program (a builtin such as cd, or not found): let the shell say so
                self.proc = self._spawn(["/bin/sh", "-c", command], sandbox, env, out)
        finally:
            os.close(out)
        self.pid = self.proc.pid
        self.killed_for = ""  # why the worker killed it ("time_max", "time_end"), if it did

    @staticmethod
    def _spawn(argv: list[str], sandbox: str, env: dict[str, str], out: int
               ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, cwd=sandbox, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True, close_fds=True)

    async def wait(self) -> tuple[int, Rusage]:
        """Wait for the exit without a thread; return the raw wait status and rusage.

        Cancelled (the worker is going away), the process is killed and reaped
        before the cancellation goes on: no zombie is left.
        """
        try:
            try:
                pidfd = os.pidfd_open(self.pid)
            except OSError:
                pidfd = -1
            if pidfd >= 0:
                await self._readable(pidfd)
                _, status, usage = os.wait4(self.pid, 0)
            else:
                while True:
                    pid, status, usage = os.wait4(self.pid, os.WNOHANG)
                    if pid:
                        break
                    await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.proc.returncode = -signal.SIGKILL
            raise
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return status, usage

    @staticmethod
    async def _readable(fd: int) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await fut
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    def kill(self, reason: str = "") -> None:
        """SIGKILL the whole process group; ``reason`` records a time-limit kill."""
        if reason and not self.killed_for:
            self.killed_for = reason
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass


def measured_of(wall: float, usage: Rusage) -> list[float]:
    """``TaskDone.measured`` from a wall time and a wait4 rusage: [wall s, cpu s, max rss MB]."""
    # Linux reports ru_maxrss in KiB
    return [wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0]


def _empty_dir(path: str) -> bool:
    """True for a real, empty directory."""
    if os.path.islink(path):
        return False
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False
