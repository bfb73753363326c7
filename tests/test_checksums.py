"""Verified data: produced files carry a checksum, receivers check what arrives, and
wrong bytes are the source's fault — its copy is dropped, the file remade if it was the
last one, and the consumer gets the right content. With real workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import vinework as vine
from vinework.checksums import checksum, fetch_checked
from vinework.protocol import TransferFailure
from vinework.protocol.transfer import TransferError, TransferServer

try:
    from conftest import wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import wait_all, wait_workers

pytestmark = pytest.mark.timeout(60)


def test_checksums_follow_content_and_trees(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 1000)
    b.write_bytes(b"x" * 999 + b"y")
    assert checksum(str(a)) != checksum(str(b)) and checksum(str(a)).startswith("xxh3:")
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_text("one")
    first = checksum(str(d))
    os.symlink("sub/f", d / "link")
    assert checksum(str(d)) != first  # a link counts
    (d / "link").unlink()
    assert checksum(str(d)) == first
    (d / "sub" / "f").chmod(0o755)
    assert checksum(str(d)) != first  # and a mode



@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_a_sparse_file_hashes_as_its_bytes(tmp_path: Path, where: str) -> None:
    # holes (read as zeros, fed from a zero buffer instead of read) at the start, between
    # data and at the end, and data exactly at a chunk's edge: the digest is that of the
    # bytes, the same as the dense file's
    import xxhash

    from vinework.checksums import CHUNK
    base = tmp_path if where == "tmp" else Path("/dev/shm")
    if not base.is_dir():
        pytest.skip("no /dev/shm")
    sparse = base / f"vinework-test-sparse-{os.getpid()}"
    try:
        with open(sparse, "wb") as f:
            for off, data in ((3 * CHUNK + 5, os.urandom(1000)), (8 * CHUNK, b"x" * CHUNK),
                              (11 * CHUNK - 7, b"edge")):
                f.seek(off)
                f.write(data)
            f.truncate(14 * CHUNK + 3)  # a hole at the end too
        content = sparse.read_bytes()
        dense = tmp_path / "dense"
        dense.write_bytes(content)
        expected = "xxh3:" + xxhash.xxh3_128(content).hexdigest()
        assert checksum(str(sparse)) == expected == checksum(str(dense))
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        assert checksum(str(empty)) == "xxh3:" + xxhash.xxh3_128(b"").hexdigest()
        holes = tmp_path / "holes"
        with open(holes, "wb") as f:
            f.truncate(5 * CHUNK + 1)
        assert checksum(str(holes)) == "xxh3:" + xxhash.xxh3_128(bytes(5 * CHUNK + 1)).hexdigest()
    finally:
        sparse.unlink(missing_ok=True)

def test_a_fetch_of_wrong_bytes_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"the real content")
    srv = TransferServer(lambda n: str(src) if n == "f" else None)
    try:
        dest = tmp_path / "got"
        fetch_checked(checksum(str(src)), "127.0.0.1", srv.port, "f", str(dest), -1)
        assert dest.read_bytes() == b"the real content"
        dest.unlink()
        with pytest.raises(TransferError) as e:
            fetch_checked("xxh3:" + "0" * 32, "127.0.0.1", srv.port, "f", str(dest), -1)
        assert e.value.cause is TransferFailure.BAD_DATA and not dest.exists()
    finally:
        srv.close()


@pytest.mark.parametrize("same_size", [True, False])
def test_a_corrupted_copy_is_caught_and_the_temp_remade(manager: vine.Manager,
                                                        workers: Any, tmp_path: Path,
                                                        same_size: bool) -> None:
    m = manager
    workers(m, extra=("--feature", "a"))
    workers(m, extra=("--feature", "b"))
    wait_workers(m, 2)
    temp = m.declare_temp()
    make = vine.Task("seq 1 1000 > out")
    make.add_feature("a")
    make.add_output(temp, "out")
    m.submit(make)
    (done,) = wait_all(m, 1)
    assert done.successful()
    # the copy on the producer's disk goes bad (a failing disk, or a lying worker)
    cached = next(Path(tmp_path / "worker-0").rglob(temp.cache_name))
    cached.chmod(0o644)
    size = cached.stat().st_size
    cached.write_bytes(b"g" * size if same_size else b"garbage\n" * 100)
    use = vine.Task("wc -l < in")
    use.add_feature("b")
    use.add_input(temp, "in")
    m.submit(use)
    (got,) = wait_all(m, 1, 30)
    assert got.successful() and got.output.strip() == "1000"  # the right content after all
    story = "\n".join(m.file_story(temp))
    assert "served wrong bytes" in story and m.stats.tasks_recovery >= 1
