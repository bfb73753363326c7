"""Running one task in its own directory, with its inputs linked in from the cache.

Each task attempt gets an empty directory (released directories are emptied
of everything the task left, and reused: see ``SandboxPool``). Inputs are
placed under their remote names so that a task cannot change the cached copy
(see ``prepare``): a reflink where the filesystem can, a copy up to
``COPY_MAX`` bytes, and above that a link to the cached file made read-only
and checked after the task (``SharedInput``); a directory input is a copy of
the cached tree; ``mount_symlink`` inputs are symbolic links to the cache, as
asked. Parents of inputs are made as real directories, never through a link.
Outputs, files or directories, are moved from the sandbox into the cache
afterwards (``Cache.store_from`` with the sandbox as root): an output that is a
symbolic link, lies under one, or is a fifo, device or socket is refused. The
task's stdout and
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
import errno
import logging
import os
import re
import resource
import signal
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..protocol import RunTask
from ..trees import TreeError, copy_file, copy_tree, reflink, remove_path
from .outcome import OUTPUT_INLINE_MAX
from .taskenv import TMP_DIR_NAME

# a command made only of plain words separated by single spaces needs no shell
_PLAIN = re.compile(r"[A-Za-z0-9_./,:=+@%-]+(?: [A-Za-z0-9_./,:=+@%-]+)*")

OUTPUT_NAME = ".vinework-output"

# inputs up to this size are copied into the sandbox (where no reflink is possible);
# larger ones are shared read-only with the cache and checked afterwards (bench_inputs.py)
COPY_MAX = 16 << 20


def copy_max_of(environ: Mapping[str, str]) -> int:
    """``input_copy_max``, or ``COPY_MAX`` with a warning when the variable is wrong."""
    try:
        return input_copy_max(environ)
    except ValueError as e:
        logging.getLogger("vinework.worker").warning("%s; copying inputs up to %d bytes",
                                                      e, COPY_MAX)
        return COPY_MAX


def input_copy_max(environ: Mapping[str, str]) -> int:
    """The largest input copied into a sandbox: ``VINEWORK_INPUT_COPY_MAX`` (bytes, 0:
    share every input read-only), else ``COPY_MAX``.

    Raises:
        ValueError: the variable is not a whole number of bytes >= 0.
    """
    raw = environ.get("VINEWORK_INPUT_COPY_MAX", "").strip()
    if not raw:
        return COPY_MAX
    try:
        v = int(raw)
    except ValueError:
        raise ValueError(f"VINEWORK_INPUT_COPY_MAX={raw!r} is not a whole number of bytes"
                         ) from None
    if v < 0:
        raise ValueError(f"VINEWORK_INPUT_COPY_MAX={raw!r} is negative")
    return v


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
    emptied and reused. What is kept is only what the next task starts from
    anyway: its output file, if it is still a plain file (the next task
    truncates it), and an empty TMPDIR, if it is still a real directory.
    Anything else a task left (a symlink or a directory in place of the output
    file, a changed mode) goes; a sandbox that cannot be emptied is removed and
    not reused. The root is made private (0700); a sandbox name already there
    (left by an earlier worker on the same workdir) is replaced.
    """

    def __init__(self, root: str, keep: int = 64) -> None:
        self.root = root
        self.keep = keep
        self.free: list[str] = []
        self._n = 0
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)

    def acquire(self) -> str:
        if self.free:
            return self.free.pop()
        self._n += 1
        path = os.path.join(self.root, f"s{self._n}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # left by a worker that died on this workdir
            remove_path(path)
            os.mkdir(path, 0o700)
        return path

    def release(self, sandbox: str) -> None:
        try:
            st = os.lstat(sandbox)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, "the sandbox is no longer a directory")
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.chmod(sandbox, 0o700)
            for e in os.scandir(sandbox):
                if e.name == OUTPUT_NAME and _plain_file(e.path):
                    continue
                if e.name == TMP_DIR_NAME and _empty_dir(e.path):
                    continue  # the task's TMPDIR, left empty: kept for the next task
                remove_path(e.path)
                if os.path.lexists(e.path):
                    raise OSError(errno.ENOTEMPTY, f"cannot remove {e.path}")
        except OSError:
            remove(sandbox)
            return
        if len(self.free) < self.keep:
            self.free.append(sandbox)
        else:
            remove(sandbox)


@dataclass(frozen=True, slots=True)
class SharedInput:
    """An input placed as a link to the cached file itself (no reflink, too big to
    copy): the cached file is made read-only, and ``changed`` says afterwards whether
    the task (or anyone) wrote to it, truncated it or changed its mode."""

    name: str
    path: str  # the cached file
    size: int
    mtime_ns: int
    mode: int

    def changed(self) -> str:
        """Why the cached file no longer is what it was ("" when it is)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError as e:
            return f"it cannot be read any more ({e.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return "it is no longer a regular file"
        if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            return "a task wrote to it in place"
        if st.st_mode != self.mode:
            return "a task changed its mode"
        return ""


def make_parents(sandbox: str, dest: str) -> None:
    """Make the directories between ``sandbox`` and ``dest`` (a path under it) as real
    directories; refuse to go through a symlink or a file an earlier input put there."""
    rel = os.path.relpath(os.path.dirname(dest), sandbox)
    if rel == ".":
        return
    d = sandbox
    for p in rel.split(os.sep):
        d = os.path.join(d, p)
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            os.mkdir(d, 0o700)
            continue
        if not stat.S_ISDIR(st.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise SandboxError(f"{os.path.relpath(dest, sandbox)!r} would go through "
                               f"{os.path.relpath(d, sandbox)!r}, which is {what}")


def prepare(sandbox: str, inputs: list[tuple[str, str]], cache_lookup: dict[str, str],
            symlinks: frozenset[str] | set[str] = frozenset(), copy_max: int = COPY_MAX
            ) -> list[SharedInput]:
    """Place every input (name -> cache path) under its remote name in an empty sandbox,
    so that the task cannot change the cached copy; return the inputs shared with the
    cache, for the caller to check after the task (``SharedInput.changed``).

    A file is a reflink of the cached file where the filesystem can (no bytes
    copied), else a copy when it has at most ``copy_max`` bytes, else a hard link
    (a symlink across filesystems) to the cached file, which is made read-only
    (a task running as root can still write it: ``SharedInput`` tells). A
    directory input is copied whole (files copied, symlinks kept as links, never
    followed). The remote names in ``symlinks`` (``add_input(...,
    mount_symlink=True)``) are symbolic links to the cached file or tree itself,
    as the user asked (the task must not write through them). Parent directories
    are made as real directories, never through a link an earlier input made."""
    shared: list[SharedInput] = []
    for name, remote in inputs:
        src = cache_lookup.get(name)
        if src is None:
            raise SandboxError(f"input {name} ({remote}) is not in the cache")
        dest = safe_join(sandbox, remote)
        make_parents(sandbox, dest)
        if os.path.lexists(dest):
            raise SandboxError(f"input {name} ({remote}): something is there already "
                               "(two inputs with one remote name, or one inside another)")
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise SandboxError(f"input {name} ({remote}) vanished from the cache") from None
        if remote in symlinks:
            os.symlink(os.path.abspath(src), dest)
            continue
        if stat.S_ISDIR(st.st_mode):
            try:  # a tree is copied: the task may change its copy, never the cached one
                copy_tree(src, dest)
            except (OSError, TreeError) as e:
                raise SandboxError(f"input {name} ({remote}) cannot be copied: {e}") from None
            continue
        if not stat.S_ISREG(st.st_mode):
            raise SandboxError(f"input {name} ({remote}) is not a regular file in the cache")
        clone = _reflinks(sandbox, st.st_dev)
        if clone or st.st_size <= copy_max:
            try:
                copy_file(src, dest, clone=clone)
            except TreeError as e:
                raise SandboxError(f"input {name} ({remote}): {e}") from None
            continue
        shared.append(_share(name, src, dest, st))
    return shared


def _share(name: str, src: str, dest: str, st: os.stat_result) -> SharedInput:
    """Link ``dest`` to the cached file ``src``, made read-only first."""
    ro = st.st_mode & ~0o222
    if st.st_mode != ro:
        os.chmod(src, stat.S_IMODE(ro))
    try:
        os.link(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        os.symlink(os.path.abspath(src), dest)
    now = os.stat(src)
    return SharedInput(name, src, now.st_size, now.st_mtime_ns, now.st_mode)


_REFLINKS: dict[tuple[int, int], bool] = {}  # (sandbox fs, cache fs) -> can reflink


def _reflinks(sandbox: str, cache_dev: int) -> bool:
    """Can a file of the cache's filesystem be reflinked into the sandbox? (tried once
    per pair of filesystems, with a file of one byte)."""
    key = (os.stat(sandbox).st_dev, cache_dev)
    known = _REFLINKS.get(key)
    if known is not None:
        return known
    a, b = os.path.join(sandbox, ".reflink-a"), os.path.join(sandbox, ".reflink-b")
    ok = False
    try:
        with open(a, "wb") as fa:
            fa.write(b"x")
        with open(a, "rb") as fa, open(b, "wb") as fb:
            ok = reflink(fa.fileno(), fb.fileno())
    except OSError:
        ok = False
    finally:
        for p in (a, b):
            with contextlib.suppress(OSError):
                os.unlink(p)
    ok = ok and key[0] == key[1]
    _REFLINKS[key] = ok
    return ok


def set_up(sandbox: str, task: RunTask, cache_path: Callable[[str], str],
           copy_max: int = COPY_MAX) -> list[SharedInput]:
    """Make ``sandbox`` ready for ``task`` (a command, a PythonTask or a call): its inputs
    placed (``prepare``), its output names checked, its TMPDIR made. Returns the inputs
    shared with the cache, to check with ``changed_inputs`` after the task.

    Raises:
        SandboxError: an input is missing or a remote name escapes the sandbox.
        OSError: the sandbox cannot be written.
    """
    shared = prepare(sandbox, list(task.inputs), {n: cache_path(n) for n, _ in task.inputs},
                     frozenset(task.symlink_inputs), copy_max)
    for _, remote in task.outputs:
        safe_join(sandbox, remote)
    os.makedirs(os.path.join(sandbox, TMP_DIR_NAME), exist_ok=True)
    return shared


def changed_inputs(shared: list[SharedInput]) -> list[tuple[str, str]]:
    """(cache name, what changed) of the shared inputs a task changed in the cache."""
    out = []
    for inp in shared:
        why = inp.changed()
        if why:
            out.append((inp.name, why))
    return out


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
    replaced = "[vinework: the task replaced its output file; nothing read]\n"
    try:  # never through a link, never a fifo: a task may have replaced the file
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            return Output(replaced, len(replaced), False)
        return Output("", 0, False)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a hard link: to elsewhere
        os.close(fd)
        return Output(replaced, len(replaced), False)
    with os.fdopen(fd, "rb") as f:
        size = st.st_size
        data = f.read(min(OUTPUT_INLINE_MAX, keep_max))
        notice = (f"\n[vinework: output truncated: {size} bytes, first {keep_max} kept]\n"
                  if size > keep_max else "")
        if size <= OUTPUT_INLINE_MAX or keep_max <= OUTPUT_INLINE_MAX:
            text = data.decode("utf-8", "replace") + notice
            return Output(text, len(data) + len(notice.encode()), False)
        if notice:
            os.fchmod(fd, 0o600)  # the task may have made it read-only
            w = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                if os.fstat(w).st_ino == st.st_ino:
                    os.ftruncate(w, keep_max)
                    os.pwrite(w, notice.encode(), keep_max)
            finally:
                os.close(w)
    kept = min(size, keep_max) + len(notice.encode())
    return Output(data.decode("utf-8", "replace"), kept, True)


def remove(sandbox: str) -> None:
    """Delete a sandbox (unlink+rmdir is cheaper than rmtree for the usual flat case)."""
    try:
        entries = list(os.scandir(sandbox))
    except OSError:
        remove_path(sandbox)
        return
    try:
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                remove_path(e.path)
            else:
                os.unlink(e.path)
        os.rmdir(sandbox)
    except OSError:
        with contextlib.suppress(OSError):
            os.chmod(sandbox, 0o700)
        remove_path(sandbox)


def open_output_file(sandbox: str) -> int:
    """The task's stdout+stderr file, opened empty for writing (a descriptor): never
    through a link and never a fifo a task left in its place (that is removed)."""
    path = os.path.join(sandbox, OUTPUT_NAME)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(3):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EACCES,
                               errno.EPERM):
                raise
            remove_path(path)
            continue
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:  # not a hard link to elsewhere
            os.ftruncate(fd, 0)
            os.set_blocking(fd, True)
            return fd
        os.close(fd)
        remove_path(path)
    raise OSError(errno.EEXIST, f"cannot make a plain output file at {path}")


class CommandProcess:
    """A running shell command, reaped through a pidfd on the event loop."""

    def __init__(self, command: str, sandbox: str, env: dict[str, str]) -> None:
        out = open_output_file(sandbox)
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


def _plain_file(path: str) -> bool:
    """True for a regular file with one link that its owner can read and write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_mode & 0o600 == 0o600


def _empty_dir(path: str) -> bool:
    """True for a real, empty directory that its owner can enter and write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o700 != 0o700:
        return False
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False
