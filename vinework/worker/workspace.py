"""The worker's own workdir on disk: private, locked while it lives, removed when it ends.

A worker started without ``--workdir`` makes ``$TMPDIR/vinework-worker-<pid>-<tag>``
with mode 0700 (so no other user can list or read anything in it: the cache,
sandboxes, libraries) and holds an exclusive ``flock`` on the ``.lock`` file in
it for as long as it runs. It removes the directory on every exit it can see:
``Worker.close`` (a normal exit, SIGTERM, SIGINT, SIGHUP, the manager's
shutdown, the core's fatal error) and, as a last resort, an ``atexit`` hook
(a start-up error after the directory was made, an uncaught exception); the
hook does nothing in a forked child. ``keep`` (``--keep-workspace``) keeps it.

What a SIGKILL'd (or crashed) worker leaves behind is removed by the next worker
that starts in the same parent directory (``remove_stale``): directories named
``vinework-worker-<pid>-<tag>`` owned by this user whose pid is not running and
whose lock nobody holds (the kernel drops a lock when its holder dies, so a
live worker whose pid is from another PID namespace keeps its directory). A
workdir given with ``--workdir`` is the user's: never removed, never locked.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import stat
import uuid

from ..trees import remove_path

log = logging.getLogger("vinework.worker")

PREFIX = "vinework-worker-"
LOCK_NAME = ".lock"


def make_workdir(parent: str, keep: bool = False) -> tuple[str, int]:
    """Make and lock a private workdir under ``parent`` (after removing the stale ones
    there); return its path and the descriptor holding its lock.

    Raises:
        OSError: ``parent`` is not a writable directory.
    """
    remove_stale(parent)
    path = os.path.join(parent, f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)  # whatever the umask
    try:
        fd = os.open(os.path.join(path, LOCK_NAME),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        remove_path(path)
        raise
    if not keep:
        atexit.register(_remove_at_exit, path, os.getpid())
    return path, fd


def _remove_at_exit(path: str, owner: int) -> None:
    if os.getpid() == owner:  # never from a forked child that exits normally
        remove_path(path)


def remove_stale(parent: str) -> list[str]:
    """Remove the workdirs dead workers of this user left in ``parent``; return them."""
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    removed = []
    uid = os.getuid()
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid_text, _, tag = name[len(PREFIX):].partition("-")
        if not pid_text.isdigit() or not tag:
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        if _running(int(pid_text)) or _locked(path):
            continue
        remove_path(path)
        if not os.path.lexists(path):
            removed.append(path)
            log.info("removed %s, left by worker %s (no longer running)", path, pid_text)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: running
    return True


def _locked(path: str) -> bool:
    """Does a live process hold the workdir's lock?"""
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: made before it could be locked, or by an old worker
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing drops a lock we got
    return False
