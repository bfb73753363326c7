"""The process of one library instance: functions loaded once, FunctionCalls run on demand.

A worker starts it as ``python -m vinework.worker.libprocess FD`` (after the
library's ``init_command``, if any) in the library's own sandbox, with its
stdout and stderr going to the library's log file. Over the socketpair end
``FD`` it talks length-prefixed msgpack arrays (``forkserver.pack`` and
``Framer``):

    worker -> library:
      ["setup", payload, exec_mode]   first, once
      ["call", call_id, function, args, sandbox, out_path, inline_max, env, unset, mode]
        (mode: "" = the library's; "fork" or "direct" for this call)
      ["kill", call_id]               (fork mode: kills that call's child)
    library -> worker:
      ["ready", pid]  or  ["failed", traceback_text]  (then it exits)
      ["done", call_id, kind, data, traceback_text, measured]
        kind: "inline" (data: the cloudpickled result) | "file" (data: its size; the
        bytes are in out_path) | "error" (data: the pickled exception) | "crash"

Set-up unpickles the library's functions (cloudpickle, so lambdas, closures
and functions of ``__main__`` travel by value), imports its hoisted modules,
and runs the context function once: the dict it returns is what
``vinework.utils.load_variable_from_library(name)`` reads (``CONTEXT`` here).

Exec modes. "direct": a call runs in this process, one at a time in arrival
order, so what one call changes (globals, the context) the next one sees; a
call that exits the process (``sys.exit``, ``os._exit``, a crash) ends the
library, and the worker reports it (TaskVine's "library exit"). "fork": each
call runs in a child forked from the process as set-up left it, so every call
starts from that state and a call that exits only ends its child (its result
is then the ``SystemExit``).

Calls with no sandbox run in the library's directory with its environment;
a call with files gets a sandbox of its own, changed into (and back) for the
call. Replies are written in batches: in fork mode, all that are ready at each
turn of the server's loop; in direct mode, by a writer thread (``_ReplyWriter``):
at once when the library waits for requests, and what piled up while calls ran
in one send.
"""

from __future__ import annotations

import collections
import os
import pickle
import resource
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

import cloudpickle

from ..netio import READ_SIZE
from ..pickling import dumps_exception, dumps_value
from .forkserver import Framer, _apply_env, _environ_snapshot, _kill, _restore_environ, pack

# what the library's context function returned (load_variable_from_library reads it)
CONTEXT: dict[str, Any] = {}
RUNNING = False  # True in a library process (load_variable_from_library checks it)


def set_up(payload: bytes) -> dict[str, Any]:
    """Load the library: hoisted modules, functions, context. Returns the functions."""
    lib = cloudpickle.loads(payload)
    for mod in lib.get("modules", []):
        __import__(mod)
    for mod in lib.get("optional_modules", []):
        try:
            __import__(mod)
        except Exception:  # (a module of the caller's the worker cannot import)
            pass
    functions: dict[str, Any] = dict(lib["functions"])
    main = sys.modules.get("__main__")
    for name, obj in lib.get("objects", {}).items():  # hoisted classes and values
        if main is not None:
            setattr(main, name, obj)
    ctx = lib.get("context")
    if ctx is not None:
        fn, args, kwargs = ctx
        made = fn(*list(args or ()), **dict(kwargs or {}))
        if made is not None:
            if not isinstance(made, dict):
                raise TypeError("the library's context function must return a dict of "
                                f"variables (or None), not {type(made).__name__}")
            CONTEXT.update(made)
    return functions


def run_call(fn: Any, args_blob: bytes, out_path: str, inline_max: int) -> list[Any]:
    """Call ``fn`` with the unpickled (args, kwargs); the reply [kind, data, traceback]."""
    try:
        args, kwargs = pickle.loads(args_blob)
        value = fn(*args, **kwargs)
    except Exception as e:
        return _error(e)
    try:
        data = dumps_value(value)
    except Exception as e:
        err = TypeError(f"the return value could not be pickled: {e}")
        return ["error", cloudpickle.dumps(err), f"{err}\n{traceback.format_exc()}"]
    if out_path and (inline_max < 0 or len(data) > inline_max):
        with open(out_path, "wb") as f:
            f.write(data)
        return ["file", len(data), ""]
    return ["inline", data, ""]


def _error(e: BaseException) -> list[Any]:
    return ["error", dumps_exception(e), traceback.format_exc()]


def _in_sandbox(fn: Any, req: list[Any], home: str, base_env: dict[Any, Any]) -> list[Any]:
    """A direct call with a sandbox or an environment of its own: enter, call, restore."""
    args, sandbox, out_path, inline_max, env, unset = req[3:9]
    try:
        if sandbox:
            os.chdir(sandbox)
        _apply_env(env, unset)
        return run_call(fn, args, out_path, inline_max)
    finally:
        os.chdir(home)
        _restore_environ(base_env)


class _Replies:
    """Replies of a fork library not yet written (flushed at each turn of its loop)."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.buf = bytearray()

    def add(self, frame: list[Any]) -> None:
        self.buf += pack(frame)

    def flush(self) -> None:
        if self.buf:
            self.ctl.sendall(self.buf)
            self.buf.clear()


class _ReplyWriter:
    """Replies of a direct library, written by a thread of their own: a reply goes out as
    soon as the writer gets the interpreter (at once when the calls wait for requests,
    within the switch interval while a long call runs), and replies that pile up meanwhile
    go out in one ``send``. Frames are whole in every send; their order may differ from
    the calls' (the worker matches replies by call id)."""

    def __init__(self, ctl: socket.socket) -> None:
        self.ctl = ctl
        self.buf = bytearray()
        self.cv = threading.Condition()
        self.send_lock = threading.Lock()
        self.broken = False
        self.sending = 0  # batches taken by the writer and not yet sent
        threading.Thread(target=self._run, name="vinework-replies", daemon=True).start()

    def add(self, frame: list[Any]) -> None:
        data = pack(frame)
        with self.cv:
            self.buf += data
            self.cv.notify()

    def _take(self) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def _send(self, data: bytes) -> None:
        with self.send_lock:
            if self.broken:
                return
            try:
                self.ctl.sendall(data)
            except OSError:
                self.broken = True  # the worker is gone: the main loop sees the end

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.buf:
                    self.cv.wait()
                data = self._take()
                self.sending += 1
            self._send(data)
            with self.cv:
                self.sending -= 1
                self.cv.notify_all()

    def flush(self, timeout: float = 5.0) -> None:
        """Send what is buffered now, from the calling thread, and wait for the writer's
        batch in progress (before the process ends)."""
        with self.cv:
            data = self._take()
        if data:
            self._send(data)
        with self.cv:
            self.cv.wait_for(lambda: not self.sending, timeout)


def serve_direct(ctl: socket.socket, framer: Framer, functions: dict[str, Any],
                 pending: list[list[Any]]) -> None:
    """Run calls in this process, one at a time (see the module docstring)."""
    home = os.getcwd()
    base_env = _environ_snapshot()
    out = _ReplyWriter(ctl)
    queue = collections.deque(pending)
    while True:
        if not queue:
            data = ctl.recv(READ_SIZE)
            if not data:
                out.flush()
                return
            queue.extend(framer.feed(data))
            continue
        req = queue.popleft()
        if req[0] != "call":
            continue
        call_id, fname = req[1], req[2]
        fn = lookup(functions, fname)
        t0, c0 = time.monotonic(), time.process_time()
        try:
            if fn is None:
                reply = _missing(fname, functions)
            elif len(req) > 9 and req[9] == "fork":
                reply = _fork_and_wait(fn, req)
            elif req[4] or req[7] or req[8]:
                reply = _in_sandbox(fn, req, home, base_env)
            else:
                reply = run_call(fn, req[3], req[5], req[6])
        except BaseException:  # the call exits the library: what is done goes out first
            out.flush()
            raise
        out.add(["done", call_id, *reply,
                 [time.monotonic() - t0, time.process_time() - c0,
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0]])


MAP_PREFIX = "vinework.map:"  # (manager/mapping.py's remote_map and remote_pair)


def lookup(functions: dict[str, Any], fname: str) -> Any:
    """The function a call names: one of the library's, or ``vinework.map:<name>`` (that
    function applied to every element of the call's one argument, a list)."""
    fn = functions.get(fname)
    if fn is None and fname.startswith(MAP_PREFIX):
        inner = functions.get(fname[len(MAP_PREFIX):])
        if inner is not None:
            def apply_each(items: list[Any]) -> list[Any]:
                return [inner(x) for x in items]
            fn = functions[fname] = apply_each
    return fn


def _missing(fname: str, functions: dict[str, Any]) -> list[Any]:
    err = LookupError(f"the library has no function {fname!r} (it has: "
                      f"{', '.join(sorted(functions)) or 'none'})")
    return ["error", cloudpickle.dumps(err), f"LookupError: {err}\n"]


def _fork_and_wait(fn: Any, req: list[Any]) -> list[Any]:
    """A "fork" call in a direct library: run it in a child and wait for it."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(fn, req, w)
    os.close(w)
    buf = bytearray()
    while chunk := os.read(r, READ_SIZE):
        buf += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    frames = Framer().feed(bytes(buf))
    if frames:
        return list(frames[0])
    return ["crash", b"", f"the call's process ended (status {status})"]


def _child(fn: Any, req: list[Any], wfd: int) -> None:
    """In a forked child: run one call, write its reply, exit (never returns)."""
    code = 0
    try:
        os.setpgid(0, 0)
        _die_with_parent()  # (a call must not outlive its library)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        fname, args, sandbox, out_path, inline_max, env, unset = req[2:9]
        if sandbox:
            os.chdir(sandbox)
        if env or unset:
            _apply_env(env, unset)
        try:
            reply = run_call(fn, args, out_path, inline_max) if fn is not None else None
        except BaseException as e:  # SystemExit of a call ends only this child
            reply = _error(e)
        if reply is None:
            reply = ["error", b"", f"LookupError: the library has no function {fname!r}\n"]
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        view = memoryview(pack(reply))
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


def serve_fork(ctl: socket.socket, framer: Framer, functions: dict[str, Any],
               pending: list[list[Any]]) -> None:
    """Run each call in a child forked from the set-up process."""
    ctl.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, None)
    children: dict[int, tuple[int, int, bytearray, float]] = {}  # rfd -> (call, pid, buf, t0)
    by_call: dict[int, int] = {}
    out = _Replies(ctl)
    home = os.getcwd()
    base_env = _environ_snapshot()

    def start(req: list[Any]) -> None:
        if req[0] == "kill":
            pid = by_call.get(req[1])
            if pid is not None:
                _kill(pid)
            return
        if req[0] != "call":
            return
        if len(req) > 9 and req[9] == "direct":  # this call in the server process itself
            fn = lookup(functions, req[2])
            t0, c0 = time.monotonic(), time.process_time()
            if fn is None:
                reply = _missing(req[2], functions)
            elif req[4] or req[7] or req[8]:
                reply = _in_sandbox(fn, req, home, base_env)
            else:
                reply = run_call(fn, req[3], req[5], req[6])
            out.add(["done", req[1], *reply, [time.monotonic() - t0,
                                              time.process_time() - c0, 0.0]])
            return
        r, w = os.pipe()
        t0 = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            ctl.close()
            _child(lookup(functions, req[2]), req, w)
        os.close(w)
        os.set_blocking(r, False)
        children[r] = (req[1], pid, bytearray(), t0)
        by_call[req[1]] = pid
        sel.register(r, selectors.EVENT_READ, req[1])

    for req in pending:
        start(req)
    while True:
        for key, _ in sel.select():
            if key.fileobj is ctl:
                try:
                    data = ctl.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    for pid in by_call.values():
                        _kill(pid)
                    return
                for req in framer.feed(data):
                    start(req)
                continue
            rfd = key.fd
            call_id, pid, buf, t0 = children[rfd]
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
            by_call.pop(call_id, None)
            _, status, usage = os.wait4(pid, 0)
            measured = [time.monotonic() - t0, usage.ru_utime + usage.ru_stime,
                        usage.ru_maxrss / 1024.0]
            frames = Framer().feed(bytes(buf))
            if frames:
                kind, data, tb = frames[0]
            else:
                kind, data, tb = "crash", b"", f"the call's process ended (status {status})"
            out.add(["done", call_id, kind, data, tb, measured])
        ctl.setblocking(True)
        try:
            out.flush()
        finally:
            ctl.setblocking(False)


def _die_with_parent() -> None:
    """Linux: be killed when the worker that started us dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(fd: int) -> int:
    _die_with_parent()
    ctl = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    framer = Framer()
    frames: list[list[Any]] = []
    while not frames:
        data = ctl.recv(READ_SIZE)
        if not data:
            return 0
        frames = framer.feed(data)
    first, pending = frames[0], frames[1:]
    if first[0] != "setup":
        ctl.sendall(pack(["failed", f"expected a setup request, got {first[0]!r}"]))
        return 2
    _, payload, mode = first[:3]
    global RUNNING
    RUNNING = True
    try:
        functions = set_up(payload)
    except BaseException:
        tb = traceback.format_exc()
        sys.stderr.write(f"vinework library: set-up failed:\n{tb}")
        sys.stderr.flush()
        ctl.sendall(pack(["failed", tb]))
        return 1
    print(f"vinework library: ready (pid {os.getpid()}, {mode} mode, functions "
          f"{', '.join(sorted(functions))})", flush=True)
    ctl.sendall(pack(["ready", os.getpid()]))
    if mode == "fork":
        serve_fork(ctl, framer, functions, pending)
    else:
        serve_direct(ctl, framer, functions, pending)
    return 0


if __name__ == "__main__":
    # make this module's CONTEXT the one load_variable_from_library finds
    sys.modules.setdefault("vinework.worker.libprocess", sys.modules[__name__])
    sys.exit(main(int(sys.argv[1])))
