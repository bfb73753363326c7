"""Directory trees as files: walking, sizing, naming, packing into tar and unpacking safely.

A directory that is a task input, output or temp travels whole: its regular
files (with their permission bits), its subdirectories (empty ones too) and
its symbolic links, kept as links with their targets verbatim (a link is never
followed, whether it points inside the tree or out of it). Other kinds of
entry (devices, fifos, sockets) are refused. On the wire a tree is a tar
stream (``pack``), built here with one member per entry and no hard-link
members. ``unpack`` is the receiving side and trusts nothing: it refuses
members with absolute names, ``..`` or empty components (in a user's archive,
``declare_untar``, ``.`` and empty components are skipped as tar skips them, so
``./a/b`` is ``a/b``), members of any type
but file, directory and symlink, duplicates, and any member whose path would go
through a symlink, so nothing is ever written outside the target directory.
Symlink members are created as links (``os.symlink`` of the target as given):
never followed, never dereferenced. Modes keep the permission bits only (no
set-uid, set-gid or sticky bits), with the owner always able to read and write
files and to enter and write directories (so a cache can remove them).

``tree_size`` (the bytes of the regular files) is a tree's size in caches and
stats; ``tree_digest`` (over relative paths, kinds, modes, file contents and
link targets) gives a local directory its content name (``contentnames.py``).
Pure file-system code: no sockets, no threads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO


class TreeError(Exception):
    """A tree cannot be packed (an unsupported entry) or a tar is refused on unpacking."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a tree: its path relative to the root ("/"-separated)."""

    rel: str
    kind: str  # "file", "dir" or "link"
    mode: int  # permission bits
    size: int  # bytes (files only; 0 otherwise)
    target: str  # a link's target, verbatim ("" otherwise)
    path: str  # the absolute path on this machine


def walk(root: str) -> Iterator[Entry]:
    """Every entry under ``root`` (not ``root`` itself), parents before children, sorted.

    Raises:
        TreeError: an entry that is not a file, directory or symlink.
        OSError: the tree cannot be read.
    """
    def visit(d: str, prefix: str) -> Iterator[Entry]:
        with os.scandir(d) as it:
            names = sorted(e.name for e in it)
        for name in names:
            path = os.path.join(d, name)
            rel = f"{prefix}{name}"
            st = os.lstat(path)
            bits = stat.S_IMODE(st.st_mode) & 0o777
            if stat.S_ISLNK(st.st_mode):
                yield Entry(rel, "link", 0o777, 0, os.readlink(path), path)
            elif stat.S_ISDIR(st.st_mode):
                yield Entry(rel, "dir", bits, 0, "", path)
                yield from visit(path, rel + "/")
            elif stat.S_ISREG(st.st_mode):
                yield Entry(rel, "file", bits, st.st_size, "", path)
            else:
                raise TreeError(f"{path!r} is neither a file, a directory nor a symlink")

    return visit(root, "")


def tree_size(root: str) -> int:
    """The bytes of the regular files under ``root``."""
    return sum(e.size for e in walk(root))


def tree_digest(root: str, file_digest: Callable[[str], str]) -> str:
    """A blake2b digest (hex) of a tree: its entries' paths, kinds, modes, and the
    ``file_digest`` of each file (memoized by the caller) or each link's target."""
    h = hashlib.blake2b(digest_size=32)
    for e in walk(root):
        what = file_digest(e.path) if e.kind == "file" else e.target
        h.update(f"{e.kind}\0{e.rel}\0{e.mode:o}\0{what}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def pack(root: str, out: IO[bytes]) -> int:
    """Write ``root`` as an uncompressed tar stream to the binary file ``out``; return
    the tree's size (bytes of its files).

    Raises:
        TreeError: an unsupported entry.
        OSError: the tree cannot be read.
    """
    total = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for e in walk(root):
            ti = tarfile.TarInfo(e.rel)
            ti.mode = e.mode
            if e.kind == "dir":
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif e.kind == "link":
                ti.type, ti.linkname = tarfile.SYMTYPE, e.target
                tar.addfile(ti)
            else:
                with open(e.path, "rb") as f:
                    ti.size = os.fstat(f.fileno()).st_size
                    tar.addfile(ti, f)
                total += ti.size
    return total


def _relative_parts(name: str) -> list[str]:
    """The "/"-separated parts of a member name that must be a relative path."""
    if not name or name.startswith("/") or "\x00" in name or "\\" in name:
        raise TreeError(f"tar member {name!r} is not a relative path")
    return name.rstrip("/").split("/")


def _check_name(name: str) -> list[str]:
    parts = _relative_parts(name)
    if any(p in ("", ".", "..") for p in parts):
        raise TreeError(f"tar member {name!r} escapes the directory")
    return parts


def _archive_name(name: str) -> list[str]:
    """The parts of a member name of a user's archive: as :func:`_check_name`, except that
    ``.`` and empty parts are dropped, as tar does (``tar -C dir .`` names every member
    ``./...``, and the directory itself ``.`` or ``./``: no parts)."""
    parts = [p for p in _relative_parts(name) if p not in ("", ".")]
    if ".." in parts:
        raise TreeError(f"tar member {name!r} escapes the directory")
    return parts


def _enter(dest: str, parts: list[str], name: str) -> str:
    """The real directory ``dest/parts...``, made as needed; never through a symlink."""
    d = dest
    for p in parts:
        d = os.path.join(d, p)
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            os.mkdir(d, 0o700)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise TreeError(f"tar member {name!r} goes through {p!r}, which is not a directory")
    return d


def unpack(tar_path: str, dest: str, compressed: bool = False) -> int:
    """Extract the tar at ``tar_path`` into the new directory ``dest`` (see the module
    docstring for what is refused); return the tree's size. On any error ``dest`` is
    removed. ``compressed``: a user's archive (``declare_untar``), plain or gzip, bzip2
    or xz compressed, whose hard-link members are allowed when they name a file
    unpacked before them (each becomes a copy of it), and whose member names may have
    ``.`` parts (``tar -C dir .`` writes ``./`` and ``./name``; the top directory's mode
    goes to ``dest``).

    Raises:
        TreeError: a member is refused, or the tar is damaged.
        OSError: the directory cannot be written.
    """
    os.mkdir(dest, 0o700)
    total = 0
    modes: list[tuple[str, int]] = []
    try:
        with tarfile.open(tar_path, mode="r:*" if compressed else "r:") as tar:
            names = _archive_name if compressed else _check_name
            for m in tar:
                parts = names(m.name)
                if not parts:  # the archive's top directory (``.``): ``dest`` itself
                    if not m.isdir():
                        raise TreeError(f"tar member {m.name!r} is not a directory")
                    modes.append((dest, (m.mode & 0o777) | 0o700))
                    continue
                parent = _enter(dest, parts[:-1], m.name)
                path = os.path.join(parent, parts[-1])
                bits = m.mode & 0o777
                if m.isdir():
                    if os.path.lexists(path):
                        if not stat.S_ISDIR(os.lstat(path).st_mode):
                            raise TreeError(f"tar member {m.name!r} is there already")
                    else:
                        os.mkdir(path, 0o700)
                    modes.append((path, bits | 0o700))
                elif m.issym():
                    os.symlink(m.linkname, path)  # verbatim: never followed
                elif m.isreg():
                    src = tar.extractfile(m)
                    assert src is not None
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                 0o600)
                    with os.fdopen(fd, "wb") as out, src:
                        shutil.copyfileobj(src, out, 1 << 20)
                        os.fchmod(out.fileno(), bits | 0o600)
                    total += m.size
                elif m.islnk() and compressed:
                    link = _archive_name(m.linkname)
                    if not link:
                        raise TreeError(f"tar member {m.name!r} is a hard link to the "
                                        "archive's top directory")
                    target = os.path.join(dest, *link)
                    _enter(dest, link[:-1], m.linkname)
                    if not stat.S_ISREG(os.lstat(target).st_mode):
                        raise TreeError(f"tar member {m.name!r} is a hard link to "
                                        f"{m.linkname!r}, which is not a file unpacked before")
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                 0o600)
                    with os.fdopen(fd, "wb") as out, open(target, "rb") as src2:
                        shutil.copyfileobj(src2, out, 1 << 20)
                        os.fchmod(out.fileno(), (os.stat(target).st_mode & 0o777) | 0o600)
                    total += os.stat(path).st_size
                else:
                    raise TreeError(f"tar member {m.name!r} has a refused type "
                                    f"({'hard link' if m.islnk() else m.type!r})")
    except (tarfile.TarError, EOFError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise TreeError(f"damaged tar stream: {e}") from None
    except FileNotFoundError as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise TreeError(f"tar stream names a missing entry: {e.filename}") from None
    except FileExistsError:
        shutil.rmtree(dest, ignore_errors=True)
        raise TreeError("tar stream has a duplicate member") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    for path, bits in reversed(modes):
        os.chmod(path, bits)
    return total


def remove_path(path: str) -> None:
    """Delete a file, a symlink or a whole tree (nothing if it is not there)."""
    def unlock(func: Callable[..., object], p: str, _exc: object) -> None:
        # a directory a task made read-only: open its parent up and try once more
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
        with contextlib.suppress(FileNotFoundError):
            func(p)

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, onerror=unlock)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def copy_tree(src: str, dest: str) -> None:
    """A full copy of the tree ``src`` at the new directory ``dest``: files copied (a
    reflink where the filesystem can), symlinks kept as links with their targets
    verbatim (never followed, wherever they point), permission bits kept; ``src``
    itself must be a real directory, not a link to one.

    Raises:
        TreeError: ``src`` is a symlink, or an entry is not a file, directory or symlink
            (a fifo, a device, a socket: never opened); ``dest`` is then removed.
        OSError: the tree cannot be read or ``dest`` written.
    """
    if stat.S_ISLNK(os.lstat(src).st_mode):
        raise TreeError(f"{src!r} is a symbolic link, not a directory")
    os.mkdir(dest, 0o700)
    modes: list[tuple[str, int]] = [(dest, stat.S_IMODE(os.lstat(src).st_mode) & 0o777)]
    try:
        for e in walk(src):
            target = os.path.join(dest, *e.rel.split("/"))
            if e.kind == "dir":
                os.mkdir(target, 0o700)
                modes.append((target, e.mode))
            elif e.kind == "link":
                os.symlink(e.target, target)
            else:
                copy_file(e.path, target, e.mode)
    except BaseException:
        remove_path(dest)
        raise
    for path, bits in reversed(modes):
        os.chmod(path, bits | 0o700)


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def reflink(src_fd: int, dest_fd: int) -> bool:
    """Make ``dest_fd`` share ``src_fd``'s blocks (copy-on-write); False where the
    filesystem cannot (ext4, tmpfs, across filesystems)."""
    try:
        import fcntl

        fcntl.ioctl(dest_fd, FICLONE, src_fd)
        return True
    except (OSError, ImportError):
        return False


def copy_file(src: str, dest: str, mode: int | None = None, dir_fd: int | None = None,
              clone: bool = True) -> int:
    """Copy the regular file ``src`` (relative to ``dir_fd`` if given; never through a
    final symlink, never a fifo or device) to the new file ``dest``: a reflink when
    ``clone`` and the filesystem can, else an in-kernel copy. ``mode``: the
    permission bits of the copy (default: the source's, owner read and write added).
    Returns the bytes copied. On any error ``dest`` does not exist.

    Raises:
        TreeError: ``src`` is not a regular file.
        OSError: it cannot be read or ``dest`` written.
    """
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TreeError(f"{src!r} is not a regular file")
        bits = (stat.S_IMODE(st.st_mode) & 0o777 if mode is None else mode & 0o777) | 0o600
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            if not (clone and st.st_size and reflink(fd, out)):
                _copy_range(fd, out, st.st_size)
            os.fchmod(out, bits)
        except BaseException:
            os.close(out)
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise
        os.close(out)
        return st.st_size
    finally:
        os.close(fd)


def _copy_range(src: int, dest: int, size: int) -> None:
    """``size`` bytes from ``src`` to ``dest`` inside the kernel (copy_file_range, else
    sendfile, else read and write)."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dest, min(size - done, 1 << 30))
            if n == 0:
                break
            done += n
        return
    except OSError as e:
        if done or e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                   errno.EPERM):
            raise
    while True:
        data = os.read(src, 1 << 20)
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(dest, view):]


def open_under(root: str, rel: str) -> tuple[int, str]:
    """The directory of ``root/rel`` opened (a descriptor, the caller closes it) through
    real directories only, and the last component of ``rel``.

    Raises:
        TreeError: ``rel`` is not a plain relative path, or one of its directories is
            a symbolic link (absolute or not) or not a directory.
        OSError: ``root`` cannot be opened.
    """
    parts = _check_name(rel) if rel else []
    if not parts:
        raise TreeError(f"{rel!r} names no entry under {root!r}")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, p in enumerate(parts[:-1]):
            try:
                nfd = os.open(p, flags, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parts[: i + 1])
                    raise TreeError(f"{where!r} is a symbolic link or not a directory") from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]
