"""Authentication: the manager-worker challenge-response, and transfer tokens.

Pure functions (no I/O); the secret never crosses the wire.

**Handshake** (protocol version 5). The worker opens with ``Hello`` carrying a
fresh random nonce ``nw`` (and nothing it keeps in its cache: that is sent
only once both sides are known). The manager answers ``Challenge`` with its
own nonce ``nm`` and, when it has a password, its proof
``HMAC(pw, "vinework-manager" | nw | nm)``. The worker checks that proof (a
worker with a password refuses a manager that cannot give it; a worker without
one refuses a manager that asks for one) and answers ``Proof`` with
``HMAC(pw, "vinework-worker" | nm | nw)``, which the manager checks before
anything else happens: a peer that fails is dropped, and never receives a
task, a file, a file name, or counts as a worker. Each side's proof binds both
nonces, so a recorded exchange cannot be replayed, and proofs are compared in
constant time (``hmac.compare_digest``). Without a password both proofs are
empty and the handshake only carries the nonces.

**Transfer tokens**. Every transfer server (the manager's and each worker's)
serves a file only to a request carrying a token the manager issued for that
file: ``EXPIRY.MAC`` with ``MAC = HMAC(key, name | EXPIRY)``. The key is a
random key of the manager's session, given to each worker in its ``Welcome``
once it has authenticated (over the control connection, TLS-protected when
TLS is on). Knowing a transfer port is not enough to read a file, and a token
names one file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time

NONCE_BYTES = 16
TOKEN_LIFETIME = 6 * 3600.0  # seconds a transfer token stays valid
MAX_PASSWORD = 1 << 16


def new_nonce() -> str:
    """A fresh random nonce (hex)."""
    return os.urandom(NONCE_BYTES).hex()


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def manager_proof(password: bytes, worker_nonce: str, manager_nonce: str) -> str:
    """What the manager sends to prove it knows the password."""
    return _mac(password, "vinework-manager", worker_nonce, manager_nonce)


def worker_proof(password: bytes, manager_nonce: str, worker_nonce: str) -> str:
    """What the worker sends to prove it knows the password."""
    return _mac(password, "vinework-worker", manager_nonce, worker_nonce)


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two proofs or MACs."""
    return hmac.compare_digest(a.encode(), b.encode())


def make_token(key: bytes, name: str, now: float | None = None,
               lifetime: float = TOKEN_LIFETIME) -> str:
    """A token that lets its holder fetch ``name`` from any transfer server of the
    session until it expires."""
    expiry = int((time.time() if now is None else now) + lifetime)
    return f"{expiry}.{_mac(key, name, str(expiry))[:40]}"


def check_token(key: bytes | None, name: str, token: str, now: float | None = None) -> bool:
    """True if ``token`` was issued with ``key`` for ``name`` and has not expired."""
    if not key or not isinstance(token, str) or token.count(".") != 1 or len(token) > 80:
        return False
    expiry, mac = token.split(".")
    if not expiry.isdigit() or int(expiry) < (time.time() if now is None else now):
        return False
    return same(mac, _mac(key, name, expiry)[:40])


CACHE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


def valid_cache_name(name: str) -> bool:
    """True for a name a cache may hold (what every file name on the wire must be)."""
    return CACHE_NAME.fullmatch(name) is not None


def read_password_file(path: str) -> bytes:
    """A password from a file (TaskVine's ``--password FILE``): its bytes, without a
    trailing newline.

    Raises:
        ValueError: the file cannot be read, is empty, or is larger than 64 KiB.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSWORD + 1)
    except OSError as e:
        raise ValueError(f"cannot read the password file {path!r}: {e.strerror}") from None
    data = data.rstrip(b"\r\n")
    if not data:
        raise ValueError(f"the password file {path!r} is empty")
    if len(data) > MAX_PASSWORD:
        raise ValueError(f"the password file {path!r} is larger than 64 KiB")
    return data
