"""Directories as files: trees packed and unpacked safely (``vinework.trees``), directory
inputs and outputs through real workers, temp directories moving peer to peer, and an
unchanged tree not sent twice."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

import vinework as vine
from vinework.contentnames import ContentNames
from vinework.protocol.transfer import TransferError, TransferServer, fetch_file
from vinework.trees import TreeError, pack, tree_size, unpack
from vinework.worker.cache import Cache
from vinework.worker.sandbox import prepare

try:
    from conftest import wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import wait_all, wait_workers

pytestmark = pytest.mark.timeout(60)


def _make_tree(root: Path) -> Path:
    """nested files, an executable, an empty directory, an inside and an outside link."""
    root.mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "b.txt").write_text("beta\n")
    tool = root / "sub" / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    (root / "empty").mkdir()
    os.symlink("sub/deeper/b.txt", root / "inside")
    os.symlink("/etc/hostname", root / "outside")
    return root


def _check_tree(root: Path) -> None:
    assert (root / "a.txt").read_text() == "alpha\n"
    assert (root / "sub" / "deeper" / "b.txt").read_text() == "beta\n"
    assert os.stat(root / "sub" / "tool.sh").st_mode & 0o111
    assert (root / "empty").is_dir() and not list((root / "empty").iterdir())
    assert os.readlink(root / "inside") == "sub/deeper/b.txt"
    assert os.readlink(root / "outside") == "/etc/hostname"


# ---------------------------------------------------------------------- trees alone
def test_a_tree_packs_and_unpacks_whole(tmp_path: Path) -> None:
    src = _make_tree(tmp_path / "src")
    buf = io.BytesIO()
    assert pack(str(src), buf) == tree_size(str(src)) == 6 + 5 + 24
    tar = tmp_path / "t.tar"
    tar.write_bytes(buf.getvalue())
    assert unpack(str(tar), str(tmp_path / "dst")) == 35
    _check_tree(tmp_path / "dst")


def _evil_tar(path: Path, members: list[tuple[str, bytes | str | None, bytes]]) -> None:
    """members: (name, type, data or link target)."""
    with tarfile.open(path, "w") as tar:
        for name, kind, data in members:
            ti = tarfile.TarInfo(name)
            if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
                ti.type, ti.linkname = kind, data.decode()
                tar.addfile(ti)
            elif kind == tarfile.FIFOTYPE:
                ti.type = kind
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))


@pytest.mark.parametrize("members,why", [
    ([("../escaped", None, b"x")], "escapes"),
    ([("/abs/escaped", None, b"x")], "not a relative path"),
    ([("ok/../../escaped", None, b"x")], "escapes"),
    ([("link", tarfile.SYMTYPE, b"/"), ("link/escaped", None, b"x")], "goes through"),
    ([("link", tarfile.SYMTYPE, b".."), ("link/escaped", None, b"x")], "goes through"),
    ([("hard", tarfile.LNKTYPE, b"/etc/passwd")], "hard link"),
    ([("fifo", tarfile.FIFOTYPE, b"")], "refused type"),
    ([("f", None, b"1"), ("f", None, b"2")], "duplicate"),
    ([("link", tarfile.SYMTYPE, b"/tmp/victim"), ("link", None, b"x")], "duplicate"),
])
def test_a_malicious_tar_is_refused_and_nothing_lands_outside(
        tmp_path: Path, members: list[tuple[str, Any, bytes]], why: str) -> None:
    tar = tmp_path / "evil.tar"
    _evil_tar(tar, members)
    dest = tmp_path / "box" / "dest"
    dest.parent.mkdir()
    with pytest.raises(TreeError, match=why):
        unpack(str(tar), str(dest))
    assert not dest.exists()  # removed on refusal
    assert sorted(os.listdir(tmp_path)) == ["box", "evil.tar"]
    assert os.listdir(dest.parent) == []


def test_a_malicious_tree_from_a_peer_is_a_transfer_error(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    _evil_tar(evil, [("../escaped", None, b"x")])

    # a "peer" that answers with a hand-made tar as a directory
    import socket
    import threading

    from vinework.protocol.codec import encode
    from vinework.protocol.messages import FileHeader

    lsock = socket.create_server(("127.0.0.1", 0))
    data = evil.read_bytes()

    def serve() -> None:
        conn, _ = lsock.accept()
        conn.recv(65536)
        conn.sendall(encode(FileHeader(name="dir-x", size=len(data), kind="dir")) + data)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    dest = tmp_path / "cache" / ".part-1"
    dest.parent.mkdir()
    with pytest.raises(TransferError, match="refused tree") as info:
        fetch_file("127.0.0.1", lsock.getsockname()[1], "dir-x", str(dest))
    assert info.value.at_source
    assert os.listdir(dest.parent) == [] and not (tmp_path / "cache" / "escaped").exists()
    lsock.close()


def test_a_tree_travels_through_a_transfer_server_into_a_cache(tmp_path: Path) -> None:
    src_cache = Cache(str(tmp_path / "c1"))
    tree = _make_tree(tmp_path / "made")
    assert src_cache.store_from("dir-t", str(tree)) == 35  # an output that is a directory
    server = TransferServer(src_cache.lookup)
    try:
        dst = Cache(str(tmp_path / "c2"))
        part = dst.part_path()
        size, _ = fetch_file("127.0.0.1", server.port, "dir-t", part, expected_size=35)
        assert size == 35 and dst.commit("dir-t", part) == 35
    finally:
        server.close()
    _check_tree(Path(dst.path("dir-t")))
    assert dst.scan() == [("dir-t", 35)] and dst.lookup("dir-t") == dst.path("dir-t")
    # a task's copy: changing it leaves the cached tree alone
    box = tmp_path / "box"
    box.mkdir()
    prepare(str(box), [("dir-t", "in/tree")], {"dir-t": dst.path("dir-t")})
    _check_tree(box / "in" / "tree")
    (box / "in" / "tree" / "a.txt").write_text("changed")
    os.chmod(box / "in" / "tree" / "sub" / "tool.sh", 0o600)
    _check_tree(Path(dst.path("dir-t")))
    dst.remove("dir-t")
    assert dst.scan() == []


def test_a_tree_name_follows_content(tmp_path: Path) -> None:
    names = ContentNames()
    tree = _make_tree(tmp_path / "t")
    first = names.tree_name(str(tree))
    assert first.startswith("dir-") and names.tree_name(str(tree)) == first
    assert names.name(str(tree)) == first
    (tree / "sub" / "deeper" / "b.txt").write_text("BETA\n")
    second = names.tree_name(str(tree))
    assert second != first
    os.chmod(tree / "a.txt", 0o600)
    assert names.tree_name(str(tree)) != second
    os.unlink(tree / "outside")
    os.symlink("/etc/passwd", tree / "outside")
    assert names.tree_name(str(tree)) not in (first, second)


# ---------------------------------------------------------------------- real workers
def test_a_directory_input_arrives_whole(manager: vine.Manager, workers: Any,
                                         tmp_path: Path) -> None:
    m = manager
    workers(m)  # one worker: the second task finds the tree in its cache
    wait_workers(m, 1)
    tree = _make_tree(tmp_path / "input")
    t = vine.Task("cat d/a.txt d/inside && d/sub/tool.sh && readlink d/outside d/inside"
                  " && test -d d/empty && test -L d/outside && ls d/empty | wc -l")
    d = m.declare_file(str(tree), cache=True)
    t.add_input(d, "d")
    m.submit(t)
    [back] = wait_all(m, 1, 30)
    assert back.successful(), (back.result, back.output)
    assert back.output.split() == ["alpha", "beta", "tool", "ran", "/etc/hostname",
                                   "sub/deeper/b.txt", "0"]
    # the same tree again is not sent again; a changed one is
    sent = m.stats.bytes_sent
    u = vine.Task("cat d/a.txt")
    u.add_input(d, "d")
    m.submit(u)
    wait_all(m, 1, 30)
    assert u.output == "alpha\n" and m.stats.bytes_sent == sent
    (tree / "a.txt").write_text("ALPHA\n")
    w = vine.Task("cat d/a.txt")
    w.add_input(d, "d")
    m.submit(w)
    wait_all(m, 1, 30)
    assert w.output == "ALPHA\n" and m.stats.bytes_sent > sent


def test_a_directory_output_comes_back_whole(cluster: vine.Manager, tmp_path: Path) -> None:
    m = cluster
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("replaced")  # an existing directory is replaced
    t = vine.Task("mkdir -p o/sub o/empty && echo hi > o/sub/x && printf '#!/bin/sh\\n' > o/run"
                  " && chmod 755 o/run && ln -s sub/x o/link && ln -s /etc/hostname o/far")
    t.add_output(m.declare_file(str(out)), "o")
    m.submit(t)
    [back] = wait_all(m, 1, 30)
    assert back.successful(), (back.result, back.output)
    assert sorted(os.listdir(out)) == ["empty", "far", "link", "run", "sub"]
    assert (out / "sub" / "x").read_text() == "hi\n"
    assert os.stat(out / "run").st_mode & stat.S_IXUSR
    assert os.readlink(out / "link") == "sub/x" and os.readlink(out / "far") == "/etc/hostname"
    assert not list(tmp_path.glob("out.*"))  # no part or old directory left beside it


def test_a_temp_directory_moves_from_worker_to_worker(manager: vine.Manager, workers: Any
                                                      ) -> None:
    m = manager
    workers(m, extra=("--feature", "a"))
    workers(m, extra=("--feature", "b"))
    wait_workers(m, 2)
    temp = m.declare_temp()
    make = vine.Task("mkdir -p t/sub t/empty && echo made > t/sub/f && ln -s /etc/hostname t/far")
    make.add_feature("a")
    make.add_output(temp, "t")
    use = vine.Task("cat in/sub/f && readlink in/far && test -d in/empty")
    use.add_feature("b")
    use.add_input(temp, "in")
    m.submit(make)
    m.submit(use)
    wait_all(m, 2, 30)
    assert make.successful() and use.successful(), (use.result, use.output)
    assert use.output == "made\n/etc/hostname\n"
    assert m.stats.transfers_peer >= 1
    with pytest.raises(IsADirectoryError, match="is a directory"):
        m.fetch_file(temp, timeout=30)


def test_a_reader_submitted_before_a_writer_of_the_same_directory_sees_the_old_tree(
        manager: vine.Manager, workers: Any, tmp_path: Path) -> None:
    m = manager
    d = tmp_path / "shared"
    d.mkdir()
    (d / "v.txt").write_text("old\n")
    gate = m.declare_temp()
    slow = vine.Task("sleep 1; echo go > g")  # the reader waits for this temp too
    slow.add_output(gate, "g")
    reader = vine.Task("cat d/v.txt")
    reader.add_input(m.declare_file(str(d)), "d")
    reader.add_input(gate, "g")
    writer = vine.Task("mkdir o && echo new > o/v.txt")
    writer.add_output(m.declare_file(str(d)), "o")
    for t in (slow, reader, writer):
        t.set_cores(1)  # the writer runs beside the slow task, before the reader
        m.submit(t)
    workers(m)
    wait_workers(m, 1)
    got = {t.id: t for t in wait_all(m, 3, 30)}
    assert got[writer.id].successful() and (d / "v.txt").read_text() == "new\n"
    assert got[reader.id].output == "old\n"  # its input as it was when it was submitted
