"""Sandboxes never reach outside themselves, and a task cannot harm the ones after it.

Real workers: outputs that are symbolic links (absolute or escaping), outputs under
a symlinked directory and special files are refused ("output missing", saying
why) and nothing outside the sandbox is sent back or moved into the cache; a
directory output keeps its links as links; inputs are private copies, so a task
that writes into its input leaves the cached copy alone (a large input shared
read-only with the cache and changed anyway, here by root, is dropped from the
cache and sent again); a task that replaces its output file with a symlink, a
directory or a fifo does not break or redirect the next task in that sandbox; a
worker restarted on the same ``--workdir`` after a SIGKILL runs tasks. Plus the
pure pieces (``prepare``, ``Cache.store_from``, ``copy_tree``) on their own.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

import vinework as vine
from vinework.trees import TreeError, copy_tree
from vinework.worker import sandbox as sb
from vinework.worker.cache import Cache, CacheError

try:
    from conftest import wait_all, wait_workers
except ImportError:  # tests/ made a package
    from tests.conftest import wait_all, wait_workers

pytestmark = pytest.mark.timeout(90)


def _one_worker(m: vine.Manager, workers: Any, cores: int = 1) -> Any:
    p = workers(m, cores=cores)
    wait_workers(m, 1)
    return p


def _run(m: vine.Manager, cmd: str, outputs: dict[str, vine.File] | None = None,
         inputs: dict[str, vine.File] | None = None) -> vine.Task:
    t = vine.Task(cmd)
    for remote, f in (inputs or {}).items():
        t.add_input(f, remote)
    for remote, f in (outputs or {}).items():
        t.add_output(f, remote)
    m.submit(t)
    [back] = wait_all(m, 1, 40)
    return back


# ---------------------------------------------------------------------- outputs
@pytest.mark.parametrize("link", ["/etc/hostname", "../../../../../../../etc/hostname"])
def test_an_output_that_is_a_symlink_is_refused(manager: vine.Manager, workers: Any,
                                                tmp_path: Path, link: str) -> None:
    m = manager
    _one_worker(m, workers)
    dest = tmp_path / "got"
    t = _run(m, f"ln -s {link} out", {"out": m.declare_file(str(dest))})
    assert t.result == vine.VINE_RESULT_OUTPUT_MISSING, (t.result, t.output)
    assert "symbolic link" in t.error_message or "symbolic link" in t.output, t.error_message
    assert not os.path.lexists(dest)
    assert os.path.exists("/etc/hostname")


def test_an_output_under_a_symlinked_directory_is_refused(manager: vine.Manager,
                                                          workers: Any, tmp_path: Path
                                                          ) -> None:
    m = manager
    _one_worker(m, workers)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("not yours\n")
    dest = tmp_path / "got"
    t = _run(m, f"ln -s {outside} d", {"d/victim": m.declare_file(str(dest))})
    assert t.result == vine.VINE_RESULT_OUTPUT_MISSING, (t.result, t.output)
    assert "symbolic link" in t.error_message, t.error_message
    assert victim.read_text() == "not yours\n", "a file outside the sandbox was moved"
    assert not os.path.lexists(dest)


@pytest.mark.parametrize("make", ["mkfifo out", "python3 -c \"import socket; "
                                  "socket.socket(socket.AF_UNIX).bind('out')\""])
def test_a_special_file_output_is_refused_without_a_hang(manager: vine.Manager,
                                                         workers: Any, tmp_path: Path,
                                                         make: str) -> None:
    m = manager
    _one_worker(m, workers)
    dest = tmp_path / "got"
    t = _run(m, make, {"out": m.declare_file(str(dest))})
    assert t.result == vine.VINE_RESULT_OUTPUT_MISSING, (t.result, t.output)
    assert "fifo" in t.error_message or "socket" in t.error_message, t.error_message
    # a tree holding a fifo is refused too
    t = _run(m, "mkdir o && mkfifo o/p && echo x > o/f", {"o": m.declare_file(str(dest))})
    assert t.result == vine.VINE_RESULT_OUTPUT_MISSING, (t.result, t.output)
    assert not os.path.lexists(dest)
    # and the worker goes on
    assert _run(m, "echo fine").output == "fine\n"


def test_a_directory_output_keeps_links_as_links(manager: vine.Manager, workers: Any,
                                                 tmp_path: Path) -> None:
    m = manager
    _one_worker(m, workers)
    dest = tmp_path / "tree"
    t = _run(m, "mkdir -p o/sub && echo hi > o/sub/f && ln -s /etc/hostname o/far && "
             "ln -s ../../.. o/up && ln -s /etc o/etc",
             {"o": m.declare_file(str(dest))})
    assert t.successful(), (t.result, t.output)
    assert os.readlink(dest / "far") == "/etc/hostname"
    assert os.readlink(dest / "up") == "../../.."
    assert os.readlink(dest / "etc") == "/etc"
    assert (dest / "sub" / "f").read_text() == "hi\n"


# ---------------------------------------------------------------------- inputs
def test_a_task_cannot_change_its_cached_input(manager: vine.Manager, workers: Any,
                                               tmp_path: Path) -> None:
    m = manager
    _one_worker(m, workers)
    src = tmp_path / "in.txt"
    src.write_text("original\n")
    f = m.declare_file(str(src), cache=True)
    temp = m.declare_temp()
    made = _run(m, "echo made > t", {"t": temp})
    assert made.successful()
    bad = _run(m, "echo bad >> in; echo bad >> t; chmod 777 in; cat in t",
               inputs={"in": f, "t": temp})
    assert bad.output == "original\nbad\nmade\nbad\n", bad.output
    good = _run(m, "cat in t; stat -c %a in", inputs={"in": f, "t": temp})
    assert good.output.split("\n")[:2] == ["original", "made"], good.output
    assert good.output.split("\n")[2] != "777"
    assert src.read_text() == "original\n"


def test_a_large_shared_input_changed_by_root_is_dropped_and_sent_again(
        manager: vine.Manager, workers: Any, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root writes through a read-only link")
    m = manager
    _one_worker(m, workers)
    src = tmp_path / "big"
    data = os.urandom(sb.COPY_MAX + 4096)
    src.write_bytes(data)
    f = m.declare_file(str(src), cache=True)
    probe = _run(m, "stat -c '%h %a' in", inputs={"in": f})
    links, mode = probe.output.split()
    assert links == "2" and not int(mode, 8) & 0o222, probe.output  # shared, read-only
    sent = m.stats.bytes_sent
    bad = _run(m, "printf X | dd of=in bs=1 seek=10 conv=notrunc 2>/dev/null; echo done",
               inputs={"in": f})
    assert bad.output == "done\n"
    check = _run(m, "md5sum < in", inputs={"in": f})
    import hashlib
    assert check.output.split()[0] == hashlib.md5(data).hexdigest(), check.output
    assert m.stats.bytes_sent >= sent + len(data), "the changed copy was used again"


def test_inputs_never_go_through_a_link(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    tree = cache / "tree"
    tree.mkdir()
    os.symlink(str(outside), tree / "d")
    (cache / "file").write_text("x")
    box = tmp_path / "box"
    box.mkdir()
    lookup = {"tree": str(tree), "file": str(cache / "file")}
    with pytest.raises(sb.SandboxError, match="symbolic link"):
        sb.prepare(str(box), [("tree", "t"), ("file", "t/d/x")], lookup)
    assert not list(outside.iterdir())
    box2 = tmp_path / "box2"
    box2.mkdir()
    with pytest.raises(sb.SandboxError, match="symbolic link"):  # a mount_symlink input
        sb.prepare(str(box2), [("tree", "m"), ("file", "m/x")], lookup, symlinks={"m"})
    assert not (tree / "x").exists()
    box3 = tmp_path / "box3"
    box3.mkdir()
    with pytest.raises(sb.SandboxError, match="already"):
        sb.prepare(str(box3), [("file", "a"), ("file", "a")], lookup)


# ---------------------------------------------------------------------- reused sandboxes
@pytest.mark.parametrize("replace", [
    "ln -s {victim} .vinework-output",
    "ln {victim} .vinework-output",
    "echo x > .vinework-output && chmod 0 .vinework-output",
    "mkdir .vinework-output && echo x > .vinework-output/y",
    "mkfifo .vinework-output",
    "chmod 500 . && chmod 0 .taskvine.tmp",
])
def test_a_task_that_replaces_its_output_file_does_not_harm_the_next(
        manager: vine.Manager, workers: Any, tmp_path: Path, replace: str) -> None:
    m = manager
    _one_worker(m, workers)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    cmd = "rm -f .vinework-output; " + replace.format(victim=victim)
    first = _run(m, cmd)
    assert first.exit_code == 0, (first.result, first.output)
    assert victim.read_text() == "keep me\n"
    for _ in range(3):
        nxt = _run(m, "echo hello; ls -a")
        assert nxt.successful(), (nxt.result, nxt.output)
        assert nxt.output.startswith("hello\n"), nxt.output
        assert set(nxt.output.split()) <= {"hello", ".", "..", ".vinework-output",
                                           sb.TMP_DIR_NAME}, nxt.output
    assert victim.read_text() == "keep me\n"


def test_a_worker_restarted_on_its_workdir_runs_tasks(manager: vine.Manager, workers: Any,
                                                      tmp_path: Path) -> None:
    m = manager
    p = _one_worker(m, workers)
    assert _run(m, "echo one > f; mkdir -p d/e; chmod 500 d", {}).successful()
    blocker = vine.Task("sleep 60")
    blocker.set_cores(1)
    m.submit(blocker)  # holds sandbox s1 when the worker dies
    import time
    time.sleep(1.0)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    import subprocess
    import sys
    workdir = tmp_path / "worker-0"
    assert (workdir / "sandbox").exists()
    log = open(tmp_path / "restart.log", "wb")  # noqa: SIM115
    q = subprocess.Popen([sys.executable, "-m", "vinework", "worker", "localhost", str(m.port),
                          "--cores", "2", "--workdir", str(workdir), "--timeout", "30"],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        t = vine.Task("echo again")
        t.set_cores(1)
        m.submit(t)
        [done] = wait_all(m, 1, 60)
        assert done.id == t.id and done.output == "again\n", (done.result, done.output)
        m.cancel_by_task_id(blocker.id)
    finally:
        from conftest import stop_process
        stop_process(q)
        log.close()


# ---------------------------------------------------------------------- the pieces alone
def test_store_from_refuses_links_and_specials(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"))
    assert stat.S_IMODE(os.stat(cache.dir).st_mode) == 0o700
    box = tmp_path / "box"
    box.mkdir()
    os.symlink("/etc/hostname", box / "abs")
    os.symlink("../outside", box / "rel")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_text("x")
    os.symlink(str(tmp_path / "outside"), box / "ld")
    os.mkfifo(box / "fifo")
    for rel, why in (("abs", "symbolic link"), ("rel", "symbolic link"),
                     ("ld/f", "symbolic link"), ("fifo", "fifo")):
        with pytest.raises(CacheError, match=why):
            cache.store_from("n", str(box / rel), root=str(box))
    assert (tmp_path / "outside" / "f").exists()
    (box / "ok").write_text("fine")
    assert cache.store_from("n", str(box / "ok"), root=str(box)) == 4
    assert cache.lookup("n") and not (box / "ok").exists()


def test_copy_tree_keeps_links_and_refuses_specials(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x").write_text("x")
    os.chmod(src / "sub" / "x", 0o751)
    os.symlink("/etc", src / "etc")
    copy_tree(str(src), str(tmp_path / "dst"))
    assert os.readlink(tmp_path / "dst" / "etc") == "/etc"
    assert stat.S_IMODE(os.stat(tmp_path / "dst" / "sub" / "x").st_mode) == 0o751
    os.mkfifo(src / "p")
    with pytest.raises(TreeError):
        copy_tree(str(src), str(tmp_path / "dst2"))
    assert not (tmp_path / "dst2").exists()


def test_a_watched_output_is_never_followed_nor_blocks(manager: vine.Manager, workers: Any,
                                                       tmp_path: Path) -> None:
    m = manager
    _one_worker(m, workers)
    secret = tmp_path / "secret"
    secret.write_text("do not stream me\n")
    local = tmp_path / "log"
    t = vine.Task(f"ln -s {tmp_path} d; sleep 2; rm d; mkdir d; echo mine > d/secret")
    t.add_output(m.declare_file(str(local)), "d/secret", watch=True)
    m.submit(t)
    import time
    deadline = time.monotonic() + 1.8
    while time.monotonic() < deadline:
        if local.exists():
            assert "do not stream" not in local.read_text()
        time.sleep(0.05)
    [back] = wait_all(m, 1, 30)
    assert back.successful() and local.read_text() == "mine\n", (back.result, back.output)
    # a fifo in its place must not block the worker (it would, opened for reading)
    u = vine.Task("mkfifo log; sleep 1.5; rm log; echo end > log")
    u.add_output(m.declare_file(str(local)), "log", watch=True)
    m.submit(u)
    [back] = wait_all(m, 1, 30)
    assert back.successful() and local.read_text() == "end\n", (back.result, back.output)


@pytest.mark.parametrize("make", ["ln -s {secret} made", "ln -s {outside} d",
                                  "mkfifo made; echo x",
                                  "rm -f .vinework-output; mkfifo .vinework-output; exit 1"])
def test_a_minitask_result_is_never_followed(manager: vine.Manager, workers: Any,
                                             tmp_path: Path, make: str) -> None:
    m = manager
    _one_worker(m, workers)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "made"
    secret.write_text("not yours\n")
    source = "d/made" if "{outside}" in make else "made"
    made = m.declare_minitask(vine.Task(make.format(secret=secret, outside=outside)), source)
    t = vine.Task("cat in")
    t.add_input(made, "in")
    t.set_max_forsaken(0)
    m.submit(t)
    [done] = wait_all(m, 1, 30)
    assert not done.successful() and "not yours" not in done.output, (done.result, done.output)
    story = "\n".join(m.file_story(made))
    assert any(w in story for w in ("symbolic link", "not a file", "exited with 1")), story
    assert secret.read_text() == "not yours\n"
