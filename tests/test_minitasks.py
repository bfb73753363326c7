"""Mini-task files through real workers: ``declare_minitask`` (a file made on the worker
by a small command), ``declare_untar`` (tar, tar.gz, tar.bz2, tar.xz unpacked into a
directory, escaping members refused), ``declare_poncho`` with ``add_environment`` (a
conda-pack style environment made by hand), ``declare_starch`` refused, and failures
ending their tasks as URL failures do."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

import vinework as vine
from vinework.trees import TreeError, unpack

try:
    from conftest import wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import wait_all, wait_workers

pytestmark = pytest.mark.timeout(60)


def _tarball(path: Path, mode: str, members: dict[str, bytes | None],
             modes: dict[str, int] | None = None) -> Path:
    """A tar at ``path``: members name -> bytes (None: a directory)."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.mode = (modes or {}).get(name, 0o755 if data is None else 0o644)
            if data is None:
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return path


# ---------------------------------------------------------------------- unpacking alone
@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_every_compression_unpacks(tmp_path: Path, mode: str) -> None:
    tar = _tarball(tmp_path / "t.tar", mode, {"d": None, "d/x.txt": b"hello\n",
                                              "run.sh": b"#!/bin/sh\necho hi\n"},
                   {"run.sh": 0o755})
    assert unpack(str(tar), str(tmp_path / "out"), compressed=True) == 6 + 18
    assert (tmp_path / "out" / "d" / "x.txt").read_bytes() == b"hello\n"
    assert os.stat(tmp_path / "out" / "run.sh").st_mode & 0o111


def test_a_hard_link_inside_is_a_copy_and_one_outside_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        ti = tarfile.TarInfo("a.txt")
        ti.size = 3
        tar.addfile(ti, io.BytesIO(b"abc"))
        ln = tarfile.TarInfo("b.txt")
        ln.type, ln.linkname = tarfile.LNKTYPE, "a.txt"
        tar.addfile(ln)
    unpack(str(good), str(tmp_path / "g"), compressed=True)
    assert (tmp_path / "g" / "b.txt").read_bytes() == b"abc"
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        ln = tarfile.TarInfo("b.txt")
        ln.type, ln.linkname = tarfile.LNKTYPE, "../../etc/passwd"
        tar.addfile(ln)
    with pytest.raises(TreeError, match="escapes"):
        unpack(str(bad), str(tmp_path / "b"), compressed=True)
    assert not (tmp_path / "b").exists()


def test_an_archive_of_dot_made_by_tar_unpacks(tmp_path: Path) -> None:
    """``tar czf x.tgz -C dir .`` names its members ``./``, ``./sub/``, ``./sub/f``: the
    commonest layout of a packed directory (tarfile's ``add(dir, arcname=".")`` too)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "sub" / "f").write_bytes(b"12345")
    (src / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o755)
    os.chmod(src, 0o750)
    by_tar = tmp_path / "by-tar.tgz"
    subprocess.run(["tar", "czf", str(by_tar), "-C", str(src), "."], check=True)
    by_module = tmp_path / "by-module.tar"
    with tarfile.open(by_module, "w") as tar:
        tar.add(src, arcname=".")
    for i, archive in enumerate((by_tar, by_module)):
        with tarfile.open(archive) as tar:
            assert any(n.startswith("./") for n in tar.getnames()), tar.getnames()
        out = tmp_path / f"out{i}"
        assert unpack(str(archive), str(out), compressed=True) == 5 + 10
        assert (out / "sub" / "f").read_bytes() == b"12345"
        assert (out / "empty").is_dir()
        assert os.stat(out / "run.sh").st_mode & 0o111
        assert os.stat(out).st_mode & 0o777 == 0o750  # the top directory's own mode
    escaping = _tarball(tmp_path / "dots.tar", "w", {"./a/../../x": b"no"})
    with pytest.raises(TreeError, match="escapes"):
        unpack(str(escaping), str(tmp_path / "bad"), compressed=True)
    assert not (tmp_path / "bad").exists()
    top_file = _tarball(tmp_path / "top.tar", "w", {"./": b"not a directory"})
    with pytest.raises(TreeError, match="not a directory"):
        unpack(str(top_file), str(tmp_path / "bad2"), compressed=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    through = tmp_path / "through.tar"  # ./l -> outside, then ./l/evil: never written
    with tarfile.open(through, "w") as tar:
        ln = tarfile.TarInfo("./l")
        ln.type, ln.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(ln)
        evil = tarfile.TarInfo("./l/evil")
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    with pytest.raises(TreeError, match="not a directory"):
        unpack(str(through), str(tmp_path / "bad3"), compressed=True)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "bad3").exists()


# ---------------------------------------------------------------------- through workers
def _cat_task(f: vine.File, remote: str, command: str) -> vine.Task:
    t = vine.Task(command)
    t.add_input(f, remote)
    return t


def test_untar_delivers_a_directory_made_on_the_worker(manager: vine.Manager, workers: Any,
                                                       tmp_path: Path) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    tar = _tarball(tmp_path / "soft.tar.xz", "w:xz",
                   {"soft": None, "soft/bin": None,
                    "soft/bin/tool": b"#!/bin/sh\necho tool says $1\n",
                    "soft/README": b"read me\n"}, {"soft/bin/tool": 0o755})
    tarball = m.declare_file(str(tar), cache=True)
    tree = m.declare_untar(tarball, cache=True)
    assert tree.type() == vine.VINE_MINI_TASK
    ids = [m.submit(_cat_task(tree, "pkg", f"./pkg/soft/bin/tool {i} && cat pkg/soft/README"))
           for i in range(3)]
    done = wait_all(m, 3)
    for t in done:
        assert t.successful(), (t.result, t.output)
        assert t.output == f"tool says {ids.index(t.id)}\nread me\n"
    # the tarball went to the worker once, and the directory was made there once
    assert m.stats.transfers_sent == 1
    assert m.get_file_replica_count(tree) == 1


def test_untar_refuses_an_escaping_tarball_and_the_task_ends_forsaken(
        manager: vine.Manager, workers: Any, tmp_path: Path) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        ti = tarfile.TarInfo("../outside.txt")
        ti.size = 4
        tar.addfile(ti, io.BytesIO(b"evil"))
    tree = m.declare_untar(m.declare_file(str(evil)))
    t = _cat_task(tree, "pkg", "ls pkg")
    t.set_max_forsaken(0)
    m.submit(t)
    (done,) = wait_all(m, 1)
    assert done.result == "forsaken", (done.result, done.output)
    assert "'../outside.txt' escapes the directory" in "\n".join(m.file_story(tree))
    assert not list(tmp_path.rglob("outside.txt"))  # nothing landed anywhere


def test_a_minitask_makes_its_file_from_its_inputs_once_per_worker(
        manager: vine.Manager, workers: Any, tmp_path: Path) -> None:
    m = manager
    workers(m)
    workers(m)
    wait_workers(m, 2)
    words = tmp_path / "words.txt"
    words.write_text("b\na\nc\n")
    mini = vine.Task("sort words > sorted.txt && echo made >> sorted.txt && "
                     "echo $GREETING >> sorted.txt")
    mini.add_input(m.declare_file(str(words), cache=True), "words")
    mini.set_env_var("GREETING", "hello")
    made = m.declare_minitask(mini, "sorted.txt", cache=True)
    assert made.cache_name == m.declare_minitask(mini, "sorted.txt", cache=True).cache_name
    for _ in range(6):
        t = _cat_task(made, "in.txt", "cat in.txt")
        t.set_cores(1)
        m.submit(t)
    for t in wait_all(m, 6):
        assert t.successful(), (t.result, t.output)
        assert t.output == "a\nb\nc\nmade\nhello\n"
    # made at most once per worker (peers may have shared one copy)
    assert 1 <= m.get_file_replica_count(made) <= 2
    assert made.contents() == b"a\nb\nc\nmade\nhello\n"


def test_a_failing_minitask_forsakes_its_tasks_with_its_error(
        manager: vine.Manager, workers: Any, tmp_path: Path) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    mini = vine.Task("echo something went wrong; exit 3")
    made = m.declare_minitask(mini, "never.txt")
    t = _cat_task(made, "x", "cat x")
    t.set_max_forsaken(1)
    m.submit(t)
    (done,) = wait_all(m, 1)
    assert done.result == "forsaken"
    assert done.exit_code == -1
    story = "\n".join(m.file_story(made))
    assert "exited with 3" in story and "something went wrong" in story


def test_a_minitask_that_leaves_nothing_is_an_error(manager: vine.Manager, workers: Any
                                                    ) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    made = m.declare_minitask(vine.Task("true"), "missing.txt")
    t = _cat_task(made, "x", "cat x")
    t.set_max_forsaken(0)
    m.submit(t)
    (done,) = wait_all(m, 1)
    assert done.result == "forsaken"
    assert "left no 'missing.txt'" in "\n".join(m.file_story(made))


def test_poncho_environment_is_active_for_the_task(manager: vine.Manager, workers: Any,
                                                   tmp_path: Path) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    env = _tarball(tmp_path / "env.tar.gz", "w:gz", {
        "bin": None,
        "bin/hello-from-env": b"#!/bin/sh\necho env tool at $CONDA_PREFIX\n",
        "etc": None, "etc/conda": None, "etc/conda/activate.d": None,
        "etc/conda/activate.d/set.sh": b"export ENV_ACTIVATED=yes\n",
        "bin/conda-unpack": b"#!/bin/sh\ntouch unpacked-marker\n",
    }, {"bin/hello-from-env": 0o755, "bin/conda-unpack": 0o755})
    poncho = m.declare_poncho(m.declare_file(str(env)), cache=True)
    t = vine.Task("hello-from-env | sed \"s,$PWD,SANDBOX,\"; echo $ENV_ACTIVATED; "
                  "ls $CONDA_PREFIX/unpacked-marker")
    t.add_environment(poncho)
    m.submit(t)
    (done,) = wait_all(m, 1)
    assert done.successful(), done.output
    lines = done.output.splitlines()
    assert lines[0].startswith("env tool at SANDBOX/.vinework-env-1")
    assert lines[1] == "yes"
    assert lines[2].endswith("unpacked-marker")
    with pytest.raises(NotImplementedError, match="PythonTask"):
        vine.PythonTask(len, "x").add_environment(poncho)


def test_starch_is_refused_clearly(manager: vine.Manager, tmp_path: Path) -> None:
    p = tmp_path / "pkg.sfx"
    p.write_bytes(b"x")
    with pytest.raises(NotImplementedError, match="starch"):
        manager.declare_starch(manager.declare_file(str(p)))
    with pytest.raises(NotImplementedError, match="starch"):
        vine.Task("true").add_starch_package(manager.declare_file(str(p)))


def test_bad_minitask_declarations_are_refused(manager: vine.Manager) -> None:
    m = manager
    with pytest.raises(TypeError):
        m.declare_minitask(vine.PythonTask(len, "x"), "out")
    with pytest.raises(ValueError, match="escapes|relative"):
        m.declare_minitask(vine.Task("true"), "../out")
    t = vine.Task("true")
    t.add_input(m.declare_temp(), "x")
    with pytest.raises(ValueError, match="temp"):
        m.declare_minitask(t, "out")
    with pytest.raises(FileNotFoundError):
        m.declare_untar("/nonexistent/file.tar.gz")


def test_fetch_file_of_a_minitask_file_has_a_worker_make_it(
        manager: vine.Manager, workers: Any, tmp_path: Path) -> None:
    m = manager
    workers(m)
    wait_workers(m, 1)
    src = tmp_path / "n.txt"
    src.write_text("21\n")
    mini = vine.Task("echo $(( $(cat n) * 2 )) > doubled")
    mini.add_input(m.declare_file(str(src)), "n")
    made = m.declare_minitask(mini, "doubled", cache=True)
    assert m.fetch_file(made, timeout=20) == b"42\n"
    # a mini task whose input is another mini-task file: untar what a mini task packed
    packer = vine.Task("mkdir d && cp n d/n && tar czf d.tgz d")
    packer.add_input(m.declare_file(str(src)), "n")
    tree = m.declare_untar(m.declare_minitask(packer, "d.tgz"))
    t = _cat_task(tree, "u", "cat u/d/n")
    m.submit(t)
    (done,) = wait_all(m, 1)
    assert done.successful() and done.output == "21\n", (done.result, done.output)
