"""Content names of local files: a file's cache name follows its bytes, hashed once.

A local file's cache name is ``file-`` and a hash of its bytes and of the
permission bits it gets on workers, so a file changed between two runs (or two
submits) is sent again and an unchanged one is not, wherever it lives. Hashing a
large file on every submit would be slow, so each digest is remembered by
``(path, size, mtime_ns, inode, device)``: while those are unchanged the file is
taken as unchanged. Touching a file changes its mtime, which costs one rehash that
finds the same name (nothing is sent again).

``ContentNames`` is that memo. One lives in each process (``content_name``, used by
``File.cache_name``); a Manager keeps its own with an on-disk copy under its cache
directory (``<run_info_path>/vine-cache/vinework-content-names``), so the next run
does not rehash unchanged files. The on-disk memo is a text file of
``digest size mtime_ns inode device path`` lines, appended to as files are hashed
(only files of at least ``DISK_MEMO_MIN`` bytes: smaller ones are cheaper to hash
than to look up) and rewritten when it holds more stale lines than live ones. A
damaged line is ignored. Nothing here is needed for correctness: losing the memo
only costs a rehash.

A local directory is named ``dir-`` and a hash over its tree (``tree_name``):
relative paths, kinds, permission bits, the digests of its files (from the same
memo) and the targets of its symlinks; so an unchanged tree keeps its name and
is not sent again.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading

from .trees import tree_digest

CHUNK = 1 << 20
DISK_MEMO_MIN = 64 * 1024  # bytes: smaller files are hashed every time they change key
DISK_MEMO_NAME = "vinework-content-names"

StatKey = tuple[int, int, int, int]  # size, mtime_ns, inode, device


def stat_key(st: os.stat_result) -> StatKey:
    """What must stay the same for a remembered digest to be reused."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def name_of(digest: str, mode: int) -> str:
    """The cache name of bytes with this digest that land on workers with ``mode``."""
    key = f"{digest}\0{mode & 0o7777:o}".encode()
    return "file-" + hashlib.blake2b(key, digest_size=16).hexdigest()


def hash_file(path: str) -> str:
    """The blake2b digest (hex) of a file's bytes."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


class ContentNames:
    """Digests of local files, remembered while their stat key is unchanged.

    Args:
        memo_path: a file that keeps the memo across runs (None: in memory only).
    """

    def __init__(self, memo_path: str | None = None) -> None:
        self.memo_path = memo_path
        self._memo: dict[str, tuple[StatKey, str]] = {}  # path -> (stat key, digest)
        self._lock = threading.Lock()
        self._loaded = memo_path is None
        self.hashed = 0  # files hashed (not found in the memo): for tests and stats

    def digest(self, path: str, st: os.stat_result | None = None) -> str:
        """The digest of ``path``'s bytes (from the memo when its stat key is unchanged).

        Raises:
            OSError: the file cannot be read.
        """
        path = os.path.abspath(path)
        if st is None:
            st = os.stat(path)
        key = stat_key(st)
        with self._lock:
            if not self._loaded:
                self._load()
            known = self._memo.get(path)
        if known is not None and known[0] == key:
            return known[1]
        digest = hash_file(path)
        after = stat_key(os.stat(path))
        with self._lock:
            self.hashed += 1
            if after == key:  # (changed while being read: not remembered)
                self._memo[path] = (key, digest)
                if self.memo_path is not None and st.st_size >= DISK_MEMO_MIN:
                    self._append(path, key, digest)
        return digest

    def name(self, path: str, mode: int = -1, st: os.stat_result | None = None) -> str:
        """The cache name of a local file: its digest and the mode bits it gets on workers
        (``mode``, or the file's own bits when -1)."""
        if st is None:
            st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return self.tree_name(path)
        bits = mode if mode >= 0 else (st.st_mode & 0o777) | 0o600
        return name_of(self.digest(path, st), bits)

    def tree_name(self, path: str) -> str:
        """The cache name of a local directory: ``dir-`` and a hash over its tree (paths,
        kinds, modes, file digests from this memo, link targets: ``trees.tree_digest``).
        Every entry is looked at each time; only changed files are read again.

        Raises:
            OSError: the tree cannot be read.
            TreeError: it holds an entry that is not a file, directory or symlink.
        """
        digest = tree_digest(path, self.digest)
        return "dir-" + hashlib.blake2b(digest.encode(), digest_size=16).hexdigest()

    # ------------------------------------------------------------------ on disk
    def _load(self) -> None:
        self._loaded = True
        assert self.memo_path is not None
        lines = 0
        try:
            with open(self.memo_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    lines += 1
                    parts = line.rstrip("\n").split(" ", 5)
                    if len(parts) != 6 or len(parts[0]) != 64:
                        continue
                    try:
                        key = (int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]))
                    except ValueError:
                        continue
                    self._memo[parts[5]] = (key, parts[0])
        except OSError:
            return
        if lines > 2 * len(self._memo) + 256:
            self._rewrite()

    def _append(self, path: str, key: StatKey, digest: str) -> None:
        if "\n" in path or self.memo_path is None:
            return
        line = f"{digest} {key[0]} {key[1]} {key[2]} {key[3]} {path}\n"
        try:
            os.makedirs(os.path.dirname(self.memo_path) or ".", exist_ok=True)
            with open(self.memo_path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError:
            pass  # a memo that cannot be kept only costs a rehash next run

    def _rewrite(self) -> None:
        assert self.memo_path is not None
        tmp = f"{self.memo_path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for path, (key, digest) in self._memo.items():
                    if "\n" not in path:
                        f.write(f"{digest} {key[0]} {key[1]} {key[2]} {key[3]} {path}\n")
            os.replace(tmp, self.memo_path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass


_process_names = ContentNames()


def content_name(path: str, mode: int = -1) -> str:
    """A local file's cache name, from this process's memo (see the module docstring)."""
    return _process_names.name(path, mode)
