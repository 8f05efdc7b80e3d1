"""An authenticated connection between the host and one worker rank, carrying wire messages.

Both sides prove that they hold the group's secret without sending it, then every frame carries
a keyed hash of its direction, its sequence number and its bytes, so a process that does not hold
the secret can neither join, nor forge, replay or reorder a message (and nothing it sends is ever
unpickled: see wire.py). Handshake, with 32-byte random nonces:

    host -> worker   HELLO | host_nonce
    worker -> host   worker_nonce | mac(secret, "worker", host_nonce, worker_nonce)
    host -> worker   "OK" | mac(secret, "host", host_nonce, worker_nonce)    or "DENY" and close

Frames: 8-byte payload length | 32-byte mac(session key, direction, sequence, payload) | payload.
The traffic is authenticated, not encrypted: across machines, run it inside a private network.

Python's multiprocessing.connection has an HMAC handshake too, but its `recv()` unpickles and on
this Python it signs with MD5, so we keep the few lines of our own.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import time

from ..errors import OmniInputError
from . import wire

HELLO = b"OMNI-WORKER-1"
NONCE = 32
MAC = 32
HANDSHAKE_TIMEOUT = 10.0  # seconds a worker waits for the host's greeting and verdict
ADMISSION_TIMEOUT = 5.0  # seconds in all a connecting peer has to prove itself and greet the host
MAX_FRAME = 1 << 40


class ConnectionClosed(EOFError):
    """The other side went away."""


class AuthenticationFailed(ConnectionError):
    """The other side does not hold the secret (or is not an Omni worker/host at all)."""


def _mac(key: bytes, *parts: bytes) -> bytes:
    digest = hashlib.blake2b(key=hashlib.sha256(key).digest(), digest_size=MAC, person=b"omni-workers")
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _read_exactly(sock: socket.socket, size: int, deadline: float | None = None) -> bytes:
    """`size` bytes; with a `deadline` (time.monotonic()), all of them by then, however they trickle in."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out")
            sock.settimeout(left)
        count = sock.recv_into(view[got:], size - got)
        if count == 0:
            raise ConnectionClosed("connection closed")
        got += count
    return bytes(buffer)


class Connection:
    """One authenticated peer. `fileno()` makes it waitable with multiprocessing.connection.wait."""

    def __init__(self, sock: socket.socket, session_key: bytes, is_host: bool):
        sock.settimeout(None)
        self.sock = sock
        self._key = session_key
        self._send_label, self._recv_label = (b"h2w", b"w2h") if is_host else (b"w2h", b"h2w")
        self._sent = 0
        self._received = 0
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message) -> None:
        payload = wire.encode(message)
        mac = _mac(self._key, self._send_label, self._sent.to_bytes(8, "big"), payload)
        self._sent += 1
        self.sock.sendall(len(payload).to_bytes(8, "big") + mac + payload)

    def recv(self, deadline: float | None = None):
        """The next message; with a `deadline`, socket.timeout when it is not all there by then (the
        connection is then unusable: close it)."""
        header = _read_exactly(self.sock, 8 + MAC, deadline)
        size = int.from_bytes(header[:8], "big")
        if size > MAX_FRAME:
            raise AuthenticationFailed("frame too large")
        payload = _read_exactly(self.sock, size, deadline)
        if deadline is not None:
            self.sock.settimeout(None)
        expected = _mac(self._key, self._recv_label, self._received.to_bytes(8, "big"), payload)
        if not hmac.compare_digest(expected, header[8:]):
            raise AuthenticationFailed("a message failed authentication (altered, replayed or foreign)")
        self._received += 1
        return wire.decode(payload)

    def poll(self) -> bool:
        """True when a frame (or the end of the connection) is waiting to be read."""
        import select

        return bool(select.select([self.sock], [], [], 0)[0])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


def accept(sock: socket.socket, secrets: dict[str, bytes], deadline: float | None = None) -> tuple[Connection, str]:
    """Authenticate a freshly accepted socket against any of `secrets` ({name: secret}).

    Returns the connection and the name of the secret the peer proved; raises AuthenticationFailed
    (after telling the peer DENY) when it proves none, or has not answered by `deadline`
    (time.monotonic(); default HANDSHAKE_TIMEOUT from now).
    """
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT if deadline is None else deadline
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    try:
        host_nonce = os.urandom(NONCE)
        sock.sendall(HELLO + host_nonce)
        answer = _read_exactly(sock, NONCE + MAC, deadline)
        worker_nonce, proof = answer[:NONCE], answer[NONCE:]
        for name, secret in secrets.items():
            if hmac.compare_digest(proof, _mac(secret, b"worker", host_nonce, worker_nonce)):
                sock.sendall(b"OK" + _mac(secret, b"host", host_nonce, worker_nonce))
                return Connection(sock, _mac(secret, b"session", host_nonce, worker_nonce), is_host=True), name
        sock.sendall(b"DENY")
        raise AuthenticationFailed("the peer does not hold the worker secret")
    except AuthenticationFailed:
        raise
    except socket.timeout:
        raise AuthenticationFailed("it did not authenticate in time") from None
    except (OSError, EOFError) as exc:
        raise AuthenticationFailed(f"handshake failed: {exc}") from None


def connect(host: str, port: int, secret: bytes, timeout: float = HANDSHAKE_TIMEOUT) -> Connection:
    """Connect to the host and authenticate both ways. Raises OSError when nobody listens there,
    AuthenticationFailed when the host refuses our secret or cannot prove its own."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        greeting = _read_exactly(sock, len(HELLO) + NONCE)
        if greeting[:len(HELLO)] != HELLO:
            raise AuthenticationFailed(f"{host}:{port} is not an Omni Diffusion host")
        host_nonce, worker_nonce = greeting[len(HELLO):], os.urandom(NONCE)
        sock.sendall(worker_nonce + _mac(secret, b"worker", host_nonce, worker_nonce))
        verdict = _read_exactly(sock, 2)
        if verdict != b"OK":
            raise AuthenticationFailed("the host refused this worker's secret")
        if not hmac.compare_digest(_read_exactly(sock, MAC), _mac(secret, b"host", host_nonce, worker_nonce)):
            raise AuthenticationFailed(f"{host}:{port} could not prove it holds the secret")
        return Connection(sock, _mac(secret, b"session", host_nonce, worker_nonce), is_host=False)
    except BaseException:
        sock.close()
        raise


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on exactly `host` (127.0.0.1 unless the user asked for another address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a rebuilt group takes the same port at once
    try:
        sock.bind((host, port))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


SECRET_VARIABLE = "OMNI_WORKER_SECRET"
MIN_SECRET_LENGTH = 16


def remote_secret() -> bytes:
    """The secret the user shares between the ComfyUI machine and its remote workers."""
    value = os.environ.get(SECRET_VARIABLE, "")
    if len(value) < MIN_SECRET_LENGTH:
        raise OmniInputError(
            SECRET_VARIABLE, "(not set)" if not value else f"({len(value)} characters)",
            "ranks on other machines must prove they hold a secret shared with this one, so that nobody else "
            "who reaches the rendezvous port can join the group",
            f"set the same {SECRET_VARIABLE} of at least {MIN_SECRET_LENGTH} characters (for example the output "
            "of: python -c \"import secrets; print(secrets.token_hex(16))\") in the environment of ComfyUI and "
            "of every omni-diffusion worker")
    return value.encode()
