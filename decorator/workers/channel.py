"""The supervisor <-> worker channel: one Unix socket pair per worker, messages as framed pickles.

Owns the framing (4-byte big-endian length, then a pickle of a dict with a "t" key) and the
listening socket every worker opens (SO_REUSEPORT). Both ends are this package's own processes
started from the same interpreter, so pickle is safe here. Imports only the standard library.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from typing import Any

_HEAD = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024  # a rule set with big pages fits; a corrupt length does not allocate GBs


def frame(msg: dict[str, Any]) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(body)) + body


async def receive(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at end of stream (the other side is gone)."""
    try:
        head = await reader.readexactly(_HEAD.size)
        (n,) = _HEAD.unpack(head)
        if n > MAX_MESSAGE:
            raise ValueError(f"worker channel: message of {n} bytes")
        return pickle.loads(await reader.readexactly(n))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def listen_socket(host: str, port: int, listen: bool = False) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (and SO_REUSEADDR), non-blocking.

    Every worker binds its own: the kernel spreads new connections across the listening ones.
    The supervisor binds one without listening to hold the port (and learn it when `port` is 0):
    a socket that does not listen takes no connections."""
    family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        if listen:
            sock.listen(4096)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
