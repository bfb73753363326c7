"""TLS for vinework's connections, with the standard ``ssl`` module.

``Manager(ssl=True)`` makes a throwaway key and self-signed certificate for the
run (with the ``cryptography`` package when it is installed, else the
``openssl`` command, as TaskVine does); ``ssl=(key_file, cert_file)`` uses a
given pair. Workers started with ``--ssl`` then speak TLS to the manager: with
``--ssl-ca FILE`` they verify the manager's certificate against that CA
bundle (or the certificate itself), without it they encrypt but cannot tell
the manager from an impostor (TaskVine's behaviour; a password still proves
the manager knows it).

Peer transfers (between workers, and with the manager's transfer server) run
over TLS too: the manager makes a second throwaway pair for them and gives it
to each worker in its ``Welcome``, over the TLS control connection once the
worker has authenticated; every transfer server presents it and every client
accepts only it (pinned: ``peer_client_context``). The control connection's
own key never leaves the manager.

Files are written 0600 in a directory only the owner can enter.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import tempfile


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def throwaway_pair(directory: str, name: str = "vinework") -> tuple[str, str]:
    """Make a key and a self-signed certificate (for ``name`` and this host) in
    ``directory``; return (key file, cert file).

    Raises:
        RuntimeError: neither the cryptography package nor the openssl command works.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key_path = os.path.join(directory, f"{name}.key")
    cert_path = os.path.join(directory, f"{name}.pem")
    host = socket.gethostname()
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return _openssl_pair(key_path, cert_path, host)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host),
                                                        x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _openssl_pair(key_path: str, cert_path: str, host: str) -> tuple[str, str]:
    try:
        r = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key_path, "-out",
             cert_path, "-days", "30", "-subj", f"/CN={host}"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"ssl=True needs the cryptography package or the openssl "
                           f"command to make a certificate: {e}") from None
    if r.returncode != 0:
        raise RuntimeError("openssl could not make a certificate: "
                           + r.stderr.decode("utf-8", "replace")[-500:])
    os.chmod(key_path, 0o600)
    return key_path, cert_path


def server_context(key_file: str, cert_file: str) -> ssl.SSLContext:
    """The context a server presents ``cert_file`` with.

    Raises:
        ssl.SSLError, OSError: the pair cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def manager_client_context(ca_file: str | None) -> ssl.SSLContext:
    """What a worker connects to its manager with: verified against ``ca_file`` (a CA
    bundle, or the manager's certificate itself), or unverified without one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    if ca_file:
        ctx.load_verify_locations(ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_client_context(cert_pem: str) -> ssl.SSLContext:
    """What a transfer client accepts: only the session's peer certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the certificate is pinned: any address may present it
    ctx.load_verify_locations(cadata=cert_pem)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def peer_server_context(key_pem: str, cert_pem: str, directory: str) -> ssl.SSLContext:
    """A transfer server's context from the PEM texts the manager sent (written 0600
    in a private temporary directory under ``directory`` only while loading)."""
    with tempfile.TemporaryDirectory(dir=directory) as d:
        key, cert = os.path.join(d, "peer.key"), os.path.join(d, "peer.pem")
        _write_private(key, key_pem.encode())
        _write_private(cert, cert_pem.encode())
        return server_context(key, cert)


def manager_tls(arg: object, directory: str) -> tuple[ssl.SSLContext, str, str]:
    """What ``Manager(ssl=arg)`` needs: the control connection's server context and
    the peer pair's key and certificate PEM texts.

    Args:
        arg: True (a throwaway pair made in ``directory``) or (key file, cert file).

    Raises:
        ValueError: ``arg`` is neither.
        RuntimeError, ssl.SSLError, OSError: a pair cannot be made or loaded.
    """
    if arg is True:
        key, cert = throwaway_pair(directory, "manager")
    elif isinstance(arg, tuple | list) and len(arg) == 2 and all(isinstance(x, str)
                                                                 for x in arg):
        key, cert = str(arg[0]), str(arg[1])
    else:
        raise ValueError(f"ssl must be True or (key_file, cert_file), got {arg!r}")
    ctx = server_context(key, cert)
    pkey, pcert = throwaway_pair(directory, "peer")
    with open(pkey) as f, open(pcert) as g:
        return ctx, f.read(), g.read()
