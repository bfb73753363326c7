"""``vinework status HOST:PORT`` (and TaskVine's ``vine_status``): ask a running manager
what it is doing, on its own port, and print it as tables (or JSON).

The query is one short connection (``StatusQuery``, see ``protocol/messages.py``
and ``manager/handshake.py``): the manager answers from its loop thread without
disturbing its work, and the client never counts as a worker. With a password
set at the manager, ``--password FILE`` must give the same one; the client also
checks the manager's proof of it. ``--ssl`` (and ``--ssl-ca FILE``) for a
manager with TLS. ``--json`` prints the snapshot (``observe/status.py``) for
scripts; ``--watch [SECONDS]`` redraws the tables in place until Ctrl-C.

Errors (cannot connect, refused, a bad answer) are one line on stderr and exit
status 1; bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time
from typing import Any

from ..protocol import PROTOCOL_VERSION, FrameDecoder, ProtocolError, encode
from ..protocol.auth import manager_proof, new_nonce, read_password_file, same, worker_proof
from ..protocol.messages import Challenge, Proof, StatusQuery, StatusReply

QUERY_TIMEOUT = 10.0
REPLY_LIMIT = 64 * 1024 * 1024


class StatusError(Exception):
    """A status query that got no status, and why (one line)."""


def parse_address(words: list[str]) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST PORT`` or ``PORT`` (on localhost).

    Raises:
        ValueError: none of these forms.
    """
    if len(words) == 1 and ":" in words[0]:
        host, _, port = words[0].rpartition(":")
        host = host.strip("[]")
    elif len(words) == 2:
        host, port = words
    elif len(words) == 1:
        host, port = "localhost", words[0]
    else:
        raise ValueError("give the manager as HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"not a manager address: {' '.join(words)!r} (HOST:PORT)")
    return host, int(port)


def _read(sock: socket.socket, dec: FrameDecoder) -> object:
    while True:
        msg = dec.next_message()
        if msg is not None:
            return msg
        data = sock.recv(1 << 20)
        if not data:
            raise StatusError("the manager closed the connection without an answer "
                              "(a manager with TLS needs --ssl; or not a vinework manager of this version)")
        dec.receive_data(data)


def query(host: str, port: int, what: str = "all", password: bytes | None = None,
          tls: ssl.SSLContext | None = None,
          timeout: float = QUERY_TIMEOUT) -> dict[str, Any]:
    """Ask the manager at ``host:port`` for its status; the decoded JSON dict.

    Raises:
        StatusError: cannot connect, refused (password, unknown ``what``), or a bad answer.
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise StatusError(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host)
        nonce = new_nonce()
        sock.sendall(encode(StatusQuery(version=PROTOCOL_VERSION, what=what, nonce=nonce)))
        dec = FrameDecoder(max_frame=REPLY_LIMIT)
        msg = _read(sock, dec)
        if isinstance(msg, Challenge):
            if password is None:
                sock.sendall(encode(Proof(proof="")))
                _read(sock, dec)  # (the refusal)
                raise StatusError(f"{host}:{port} requires a password (--password FILE)")
            if not same(msg.proof, manager_proof(password, nonce, msg.nonce)):
                raise StatusError(f"{host}:{port} could not prove it knows the password")
            sock.sendall(encode(Proof(proof=worker_proof(password, msg.nonce, nonce))))
            msg = _read(sock, dec)
        if not isinstance(msg, StatusReply):
            raise StatusError(f"unexpected answer from {host}:{port}: {type(msg).__name__}")
        if msg.error:
            raise StatusError(f"{host}:{port} refused: {msg.error}")
        snap = json.loads(msg.json)
        if not isinstance(snap, dict):
            raise StatusError(f"bad answer from {host}:{port}: not a JSON object")
        return snap
    except ssl.SSLError as e:  # (before ValueError: a failed verification is both)
        raise StatusError(f"TLS with {host}:{port} failed: {e.reason or e}") from None
    except (ProtocolError, ValueError) as e:
        raise StatusError(f"bad answer from {host}:{port}: {e}") from None
    except OSError as e:
        raise StatusError(f"connection to {host}:{port} failed: "
                          f"{e.strerror or e or type(e).__name__}") from None
    finally:
        sock.close()


# ---------------------------------------------------------------------- tables
def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def render(snap: dict[str, Any]) -> Any:
    """The snapshot as a group of rich tables (workers, tasks, categories, files,
    recoveries and transfers)."""
    from rich.console import Group
    from rich.table import Table

    st = snap.get("stats", {})
    man = snap.get("manager", {})
    head = Table(title=f"manager {man.get('name') or ''} port {man.get('port', '?')}".strip(),
                 show_header=True, expand=False)
    for c in ("workers", "waiting", "running", "done", "failed", "recovered",
              "bytes sent", "bytes received", "peer bytes"):
        head.add_column(c, justify="right")
    t = snap.get("tasks", {})
    head.add_row(str(st.get("workers_connected", 0)), str(t.get("waiting", 0)),
                 str(t.get("running", 0)), str(t.get("done", 0)), str(t.get("failed", 0)),
                 str(st.get("tasks_recovery", 0)), _size(st.get("bytes_sent", 0)),
                 _size(st.get("bytes_received", 0)), _size(st.get("bytes_peer", 0)))

    workers = Table(title="workers")
    for c in ("worker", "host", "cores", "memory MB", "cache", "files", "running", "done",
              "bytes in", "bytes out"):
        workers.add_column(c, justify="left" if c in ("worker", "host") else "right")
    for w in snap.get("workers", []):
        workers.add_row(
            w["worker_id"] + (" (draining)" if w.get("draining") else ""), w["hostname"],
            f"{w['cores_inuse']}/{w['cores_total']}",
            f"{w['memory_inuse']}/{w['memory_total']}", _size(w["cache_bytes"]),
            str(w["files"]), str(w["tasks_running"]), str(w["tasks_done"]),
            _size(w["bytes_in"]), _size(w["bytes_out"]))

    states = Table(title="tasks by state")
    by_state = t.get("by_state", {})
    for s in by_state:
        states.add_column(s.lower(), justify="right")
    states.add_row(*(str(v) for v in by_state.values()))

    cats = Table(title="tasks by category")
    for c in ("category", "waiting", "running", "finished", "failed"):
        cats.add_column(c, justify="left" if c == "category" else "right")
    for c in t.get("categories", []):
        cats.add_row(c["category"] or "(default)", str(c["waiting"]), str(c["running"]),
                     str(c["finished"]), str(c["failed"]))

    files = Table(title="files by where they live")
    for c in ("where", "files", "bytes"):
        files.add_column(c, justify="left" if c == "where" else "right")
    for where, row in snap.get("files", {}).items():
        files.add_row(where.replace("_", " "), str(row["files"]), _size(row["bytes"]))

    rec = snap.get("recoveries", {})
    tr = snap.get("transfers", {})
    moving = Table(title="recoveries and transfers in flight")
    for c in ("recovery runs", "recovering now", "files lost", "in flight", "peer",
              "from manager", "from URLs", "to manager"):
        moving.add_column(c, justify="right")
    moving.add_row(str(rec.get("tasks_recovery", 0)), str(rec.get("recovering_now", 0)),
                   str(rec.get("files_lost", 0)), str(tr.get("in_flight", 0)),
                   str(tr.get("peer", 0)), str(tr.get("from_manager", 0)),
                   str(tr.get("from_url", 0)), str(tr.get("to_manager", 0)))
    parts: list[Any] = [head, workers, states, cats, files, moving]
    rows = tr.get("rows", [])
    if rows:
        flights = Table(title="transfers")
        for c in ("file", "from", "to", "seconds"):
            flights.add_column(c)
        for r in rows[:20]:
            flights.add_row(r["name"], r["source"], r["dest"], f"{r['seconds']:.1f}")
        parts.append(flights)
    return Group(*parts)


# ---------------------------------------------------------------------- command
def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Show what a running vinework "
                                "manager is doing (workers, tasks, files, transfers).")
    p.add_argument("address", nargs="+", help="the manager: HOST:PORT (or HOST PORT)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--watch", nargs="?", type=float, const=2.0, default=None,
                   metavar="SECONDS", help="redraw in place every SECONDS (2) until Ctrl-C")
    p.add_argument("--password", metavar="FILE", help="the manager's password file")
    p.add_argument("--ssl", action="store_true", help="the manager uses TLS")
    p.add_argument("--ssl-ca", metavar="FILE",
                   help="verify the manager's certificate with this CA (with --ssl)")
    p.add_argument("--timeout", type=float, default=QUERY_TIMEOUT,
                   help="seconds to wait for the answer (10)")
    return p


def main(argv: list[str], prog: str = "vinework status") -> int:
    """Run the command; the exit status (0 ok, 1 no status, 2 bad arguments)."""
    args = _parser(prog).parse_args(argv)
    try:
        host, port = parse_address(args.address)
        if args.watch is not None and not args.watch > 0:
            raise ValueError("--watch takes a positive number of seconds")
        if not args.timeout > 0:
            raise ValueError("--timeout takes a positive number of seconds")
        password = read_password_file(args.password) if args.password else None
        tls = None
        if args.ssl or args.ssl_ca:
            from ..tlsconf import manager_client_context
            tls = manager_client_context(args.ssl_ca)
    except (ValueError, OSError, ssl.SSLError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2

    def ask() -> dict[str, Any]:
        return query(host, port, password=password, tls=tls, timeout=args.timeout)

    try:
        if args.watch is None:
            snap = ask()
            if args.json:
                print(json.dumps(snap, indent=1))
            else:
                from rich.console import Console
                Console().print(render(snap))
            return 0
        return _watch(ask, args.watch, args.json)
    except StatusError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except (KeyError, TypeError, AttributeError) as e:
        print(f"{prog}: bad answer from {host}:{port}: missing or odd field {e}",
              file=sys.stderr)
        return 1


def _watch(ask: Any, every: float, as_json: bool) -> int:
    if as_json:  # one JSON object per line, for scripts
        while True:
            print(json.dumps(ask()), flush=True)
            time.sleep(every)
    from rich.live import Live
    with Live(render(ask()), auto_refresh=False) as live:
        while True:
            time.sleep(every)
            live.update(render(ask()), refresh=True)
