"""Warm interpreters for PythonTasks: a fork server, and direct executors.

Two ways to run a call, both without paying an interpreter start-up:
"direct" (the default): a pool of warm executor processes, one per core, each
running one call at a time in-process and restoring its working directory,
environment and output afterwards; "fork": a fork server that runs each call
in a forked child, for full isolation of process state.

The worker starts one fork server process (``python -m vinework.worker.forkserver FD``)
that has cloudpickle (and any hoisted modules, such as numpy) already imported.
For each PythonTask it forks a child, which changes into the task's sandbox,
unpickles ``(fn, args, kwargs)``, calls it, and sends back the pickled result
(plain pickle when it can, else cloudpickle; inline if small, else written to a file)
or the exception with its traceback text. Forking a warm process costs about a
millisecond; a fresh interpreter costs tens. The server is single-threaded and keeps little memory,
so forks stay cheap.

The task's environment (``taskenv.py``): ``env_pairs`` are set and
``unset_names`` removed in ``os.environ`` for the call (and ``tempfile``'s
cached directory is forgotten, so ``TMPDIR`` applies); a forked child keeps
them; a direct executor sets each call's environment from its own at the call's start
(whatever an earlier call left or changed is undone then).

What a call used (``measured``: [wall s, cpu s, max rss MB]): in a forked child,
the wall time from fork to reap and the child's ``wait4`` rusage; in a direct
executor, the wall time of the call, its ``time.process_time`` and the
executor's own peak RSS (it lives across calls: the peak of any earlier call
may show).

Internal wire (worker <-> fork server, over a socketpair): length-prefixed
msgpack arrays.
    ["run", task_id, sandbox, payload, out_path, inline_max, env_pairs, unset_names]
    ["kill", task_id]        ["hoist", [module, ...]]
    reply: ["done", task_id, status, kind, data, traceback_text, measured]
      status: the child's wait status; kind: "inline" | "file" | "error" | "crash"
"""

from __future__ import annotations

import importlib
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from typing import Any

import msgpack

from ..netio import READ_SIZE
from ..pickling import RawResult, dumps_exception, dumps_value, loads_call

_LEN = struct.Struct(">I")


def pack(obj: list[Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


class Framer:
    """Incremental splitter of length-prefixed msgpack arrays."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (n,) = _LEN.unpack_from(self.buf, 0)
            if len(self.buf) < 4 + n:
                break
            out.append(msgpack.unpackb(bytes(self.buf[4 : 4 + n]), raw=False))
            del self.buf[: 4 + n]
        return out


def call_payload(payload: bytes, out_path: str, inline_max: int) -> list[Any]:
    """Unpickle ``(fn, args, kwargs)``, call it, and build the reply [kind, data, traceback]."""
    import cloudpickle

    try:
        fn, args, kwargs = loads_call(payload)
        value = fn(*args, **kwargs)
    except BaseException as e:  # the task's own failure, SystemExit included
        return ["error", dumps_exception(e), traceback.format_exc()]
    try:
        data = value.data if type(value) is RawResult else dumps_value(value)
    except Exception as e:
        tb = traceback.format_exc()
        err = TypeError(f"the return value could not be pickled: {e}")
        return ["error", cloudpickle.dumps(err), f"{err}\n{tb}"]
    if out_path and (inline_max < 0 or len(data) > inline_max):
        with open(out_path, "wb") as f:
            f.write(data)
        return ["file", len(data), ""]
    return ["inline", data, ""]


def _redirect_output(sandbox: str) -> None:
    out = os.open(os.path.join(sandbox, ".vinework-output"),
                  os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)


def _environ_snapshot() -> dict[Any, Any]:
    """The process environment as ``os.environ`` holds it (encoded: comparing it needs no
    decoding of every variable, which costs ~100 us per call)."""
    data = getattr(os.environ, "_data", None)
    return dict(data) if isinstance(data, dict) else dict(os.environ)


def _restore_environ(base: dict[Any, Any]) -> None:
    """Put the environment back as ``base`` (after a direct call changed it), touching only
    the variables that differ."""
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):  # not CPython's os.environ: the slow, general way
        if os.environ != base:
            os.environ.clear()
            os.environ.update(base)
        return
    if data == base:
        return
    for k in [k for k in data if k not in base]:
        os.unsetenv(k)
        del data[k]
    for k, v in base.items():
        if data.get(k) != v:
            os.putenv(k, v)
            data[k] = v


def _apply_env(env: list[list[str]], unset: list[str]) -> None:
    for k, v in env:
        os.environ[k] = v
    for name in unset:
        os.environ.pop(name, None)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def _call_environ(base: dict[Any, Any], env: list[list[str]], unset: list[str]
                  ) -> dict[Any, Any]:
    """The environment one call runs in, in the form :func:`_environ_snapshot` gives
    (CPython's encoded one): ``base`` with ``env`` set, in order, and the ``unset``
    names removed."""
    if isinstance(getattr(os.environ, "_data", None), dict):
        key, value = os.environ.encodekey, os.environ.encodevalue  # type: ignore[attr-defined]
    else:
        key = value = str
    target = dict(base)
    for k, v in env:
        target[key(k)] = value(v)
    for name in unset:
        target.pop(key(name), None)
    return target


def _child(sandbox: str, payload: bytes, out_path: str, inline_max: int,
           env: list[list[str]], unset: list[str], wfd: int) -> None:
    """Run in the forked child: never returns."""
    code = 0
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.chdir(sandbox)
        _apply_env(env, unset)
        _redirect_output(sandbox)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        reply = call_payload(payload, out_path, inline_max)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        body = pack(reply)
        view = memoryview(body)
        while view:
            n = os.write(wfd, view)
            view = view[n:]
    except BaseException:
        code = 70
        try:
            os.write(2, traceback.format_exc().encode())
        except Exception:
            pass
    os._exit(code)


def serve_direct(fd: int) -> None:
    """A warm executor: run one call at a time in this process, no fork.

    The working directory and stdout/stderr are restored after every call; each
    call's environment is made from the executor's own at its start, whatever the
    previous call left (only the variables that differ are touched). A call that
    kills the process (``os._exit``, a crash) is seen by the worker as end-of-file
    and reported; the worker starts a fresh executor.
    """
    ctl = socket.socket(fileno=fd)
    framer = Framer()
    home = os.getcwd()
    base_env = _environ_snapshot()
    saved_out, saved_err = os.dup(1), os.dup(2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        data = ctl.recv(READ_SIZE)
        if not data:
            return
        for req in framer.feed(data):
            if req[0] == "hoist":
                _restore_environ(base_env)
                _hoist(req[1])
                continue
            if req[0] != "run":
                continue
            _, task_id, sandbox, payload, out_path, inline_max, env, unset = req
            t0, c0 = time.monotonic(), time.process_time()
            try:
                os.chdir(sandbox)
                # from whatever the last call left to this call's environment, touching
                # only the variables that differ (most are the same from call to call)
                _restore_environ(_call_environ(base_env, env, unset))
                tempfile.tempdir = None  # gettempdir() reads TMPDIR again
                _redirect_output(sandbox)
                reply = call_payload(payload, out_path, inline_max)
            except BaseException:  # the sandbox itself was unusable
                reply = ["error", b"", traceback.format_exc()]
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:
                        pass
                os.dup2(saved_out, 1)
                os.dup2(saved_err, 2)
                os.chdir(home)
            measured = [time.monotonic() - t0, time.process_time() - c0,
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0]
            ctl.sendall(pack(["done", task_id, 0, *reply, measured]))


def _hoist(modules: list[str]) -> None:
    for mod in modules:
        try:
            importlib.import_module(mod)
        except Exception:
            pass


def serve(fd: int) -> None:
    """The fork server's main loop on the socketpair end ``fd``."""
    ctl = socket.socket(fileno=fd)
    ctl.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "ctl")
    framer = Framer()
    # rfd -> (task_id, pid, buf, fork time)
    children: dict[int, tuple[int, int, bytearray, float]] = {}
    by_task: dict[int, int] = {}  # task_id -> pid
    outbuf = bytearray()
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def flush() -> None:
        nonlocal outbuf
        while outbuf:
            try:
                n = ctl.send(outbuf)
            except BlockingIOError:
                ctl.setblocking(True)
                ctl.sendall(outbuf)
                ctl.setblocking(False)
                n = len(outbuf)
            del outbuf[:n]

    while True:
        for key, _ in sel.select():
            if key.data == "ctl":
                try:
                    data = ctl.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    for pid in by_task.values():
                        _kill(pid)
                    return
                for req in framer.feed(data):
                    op = req[0]
                    if op == "run":
                        _, task_id, sandbox, payload, out_path, inline_max, env, unset = req
                        r, w = os.pipe()
                        t0 = time.monotonic()
                        pid = os.fork()
                        if pid == 0:
                            os.close(r)
                            ctl.close()
                            _child(sandbox, payload, out_path, inline_max, env, unset, w)
                        os.close(w)
                        os.set_blocking(r, False)
                        children[r] = (task_id, pid, bytearray(), t0)
                        by_task[task_id] = pid
                        sel.register(r, selectors.EVENT_READ, "child")
                    elif op == "kill":
                        victim = by_task.get(req[1])
                        if victim is not None:
                            _kill(victim)
                    elif op == "hoist":
                        _hoist(req[1])
            else:
                rfd = key.fd
                task_id, pid, buf, t0 = children[rfd]
                try:
                    chunk = os.read(rfd, READ_SIZE)
                except BlockingIOError:
                    continue
                if chunk:
                    buf += chunk
                    continue
                sel.unregister(rfd)
                os.close(rfd)
                del children[rfd]
                by_task.pop(task_id, None)
                _, status, usage = os.wait4(pid, 0)
                measured = [time.monotonic() - t0, usage.ru_utime + usage.ru_stime,
                            usage.ru_maxrss / 1024.0]
                frames = Framer().feed(bytes(buf))
                if frames:
                    kind, data, tb = frames[0]
                else:
                    kind, data, tb = "crash", b"", ""
                outbuf += pack(["done", task_id, status, kind, data, tb, measured])
        flush()


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    # python -m vinework.worker.forkserver FD fork|direct [MODULE...]
    _hoist(sys.argv[3:])
    import cloudpickle  # noqa: F401  (warm it before the first call)

    if sys.argv[2] == "direct":
        serve_direct(int(sys.argv[1]))
    else:
        serve(int(sys.argv[1]))
