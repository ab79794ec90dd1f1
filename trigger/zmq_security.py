"""ZeroMQ CURVE: encryption and authentication of the daemon's sockets with key files.

Key files are ZeroMQ's certificate format (``trigger keygen`` or ``zmq.auth.create_certificates``
write ``NAME.key``, the public key to hand out, and ``NAME.key_secret``, the pair to keep). The
side that binds is the CURVE server; a connecting client must know the server's public key. A
server that names a directory of client public keys runs a ZAP authenticator (pyzmq's
``ThreadAuthenticator``) that lets only those clients in; without one, any client holding the
server's public key may connect, and traffic is still encrypted.
"""

from __future__ import annotations

from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise ValueError("this libzmq was built without CURVE support")


def _pair(secret_key_file: str | Path) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(secret_key_file)
    if secret is None:
        raise ValueError(f"{secret_key_file} holds no secret key (use the NAME.key_secret file)")
    return public, secret


def make_client(sock: zmq.Socket, server_key: str | Path, secret_key_file: str | Path) -> None:
    """Make ``sock`` a CURVE client of the server whose public key file is ``server_key``."""
    _require_curve()
    server_public, _ = zmq.auth.load_certificate(server_key)
    sock.curve_publickey, sock.curve_secretkey = _pair(secret_key_file)
    sock.curve_serverkey = server_public


def make_server(sock: zmq.Socket, secret_key_file: str | Path) -> None:
    """Make ``sock`` (before it binds) a CURVE server with the key pair in ``secret_key_file``."""
    _require_curve()
    sock.curve_publickey, sock.curve_secretkey = _pair(secret_key_file)
    sock.curve_server = True


def start_authenticator(ctx: zmq.Context, clients: str | Path) -> ThreadAuthenticator:
    """Let only clients whose public key file is in the directory ``clients`` into the CURVE
    server sockets of ``ctx``; the caller stops the returned authenticator."""
    _require_curve()
    directory = Path(clients)
    if not directory.is_dir():
        raise ValueError(f"CURVE client key directory {directory} does not exist")
    if not any(directory.glob("*.key")):
        raise ValueError(f"CURVE client key directory {directory} holds no public key file (*.key)")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(directory))
    return auth
