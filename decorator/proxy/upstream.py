"""Connections to the app: a keep-alive pool and the response-side protocol.

Owns connecting (with a timeout), parsing the app's responses with httptools and handing each event
to the exchange that owns the connection (an UpstreamOwner), idle reuse LIFO with an idle timeout.
Must not import rules, actions or telemetry.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from typing import Any, Protocol

import httptools

from decorator.errors import UpstreamError
from decorator.proxy.http import HOP_BY_HOP

# on_header lower()s only names of these lengths (hop-by-hop names and content-length). It spells
# them as a literal, which the compiled build tests as C integers; this keeps the literal honest.
if frozenset(len(n) for n in HOP_BY_HOP | {b"content-length"}) != {2, 7, 10, 14, 16, 17}:
    raise ImportError("upstream.on_header's name lengths no longer match HOP_BY_HOP")
# Linux only: acknowledge at once. Set after a read that left a response unfinished, so an app
# whose Nagle algorithm holds its second send until our ACK is not stalled by our delayed ACK.
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

_monotonic = time.monotonic


class UpstreamOwner(Protocol):
    """What an exchange implements to own an upstream connection; it gets every event of it."""

    def up_headers(self, status: int, keep_alive: bool, headers: list[tuple[bytes, bytes]],
                   hop: list[tuple[bytes, bytes]], content_length: int) -> None: ...
    def up_body(self, data: bytes) -> None: ...
    def up_complete(self) -> None: ...
    def up_eof(self) -> None: ...
    def up_upgrade(self, rest: bytes) -> None: ...
    def up_lost(self, answered: bool, reused: bool) -> None: ...
    def up_failed(self, message: str) -> None: ...
    def up_pause_writing(self) -> None: ...
    def up_resume_writing(self) -> None: ...
    def up_flush(self) -> None: ...


class UpstreamConnection:
    """One connection to the app. While `owner` is set, every parser event goes to it."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.owner: UpstreamOwner | None = None
        self.closed = False
        self.reused = False
        self.paused = False
        self.idle_since = 0.0
        self.last_read = 0.0
        self.tunnel_to: asyncio.Transport | None = None   # after a 101: raw bytes go straight there
        self._sock: Any = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._hop: list[tuple[bytes, bytes]] = []   # hop-by-hop fields of the head being parsed
        self._cl = -1                                # its Content-Length, -1 when absent
        self._in_head = True
        self._mid = False           # a response has begun and not ended
        self._skip_body = False     # HEAD request: llhttp cannot know the response has no body
        self._answered = False      # any byte of a response since the request was sent
        self._ended = False         # a response ended during the current read

    # ---- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if _QUICKACK is not None:
            self._sock = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        if self.tunnel_to is not None:
            self.tunnel_to.write(data)
            return
        owner = self.owner
        if owner is None:
            # An idle pooled connection must not talk: whatever it says cannot be framed.
            self.close()
            return
        self._answered = True
        self.last_read = _monotonic()
        self._ended = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            if self.owner is not None:
                self.owner.up_upgrade(data[offset:])
        except httptools.HttpParserError as e:
            if self.owner is not None:
                self.owner.up_failed(f"invalid response from the app: {e}")
            self.close()
            return
        if self._mid and self._sock is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                self._sock = None
        if not self._ended and self.owner is not None:
            self.owner.up_flush()  # a response that ended in this read was flushed by its end

    def eof_received(self) -> bool | None:
        if self.tunnel_to is not None:
            if self.tunnel_to.can_write_eof():
                self.tunnel_to.write_eof()
            return True
        # A response without a length ends here; the owner decides whether that is complete.
        if self.owner is not None:
            self.owner.up_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        owner = self.owner
        self.owner = None
        if owner is not None:
            owner.up_lost(self._answered, self.reused)
        else:
            self.pool.forget(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.up_pause_writing()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.up_resume_writing()

    # ---- httptools callbacks: record, then hand over
    def on_message_begin(self) -> None:
        if self.owner is None:
            # A response begins on a connection that is back in the pool (its bytes came in the same
            # read as the end of the previous one): the rest would reach whoever takes it next.
            self.pool.discard(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            if len(name) in (2, 7, 10, 14, 16, 17):  # lower() only names that may be hop-by-hop or framing
                low = name.lower()
                if low in HOP_BY_HOP:
                    # As received: llhttp decided the framing on the raw value ("chunked\t" is not
                    # chunked to it), and check_response must not read it differently.
                    self._hop.append((low, value))
                    return
                if low == b"content-length":
                    self._cl = int(value)  # llhttp has checked the digits and duplicates
            if value and (value[-1] == 32 or value[-1] == 9):  # llhttp keeps trailing whitespace
                value = value.rstrip(b" \t")
            self._headers.append((name, value))
        # else: a trailer field after a chunked body; trailers are not forwarded

    def on_headers_complete(self) -> None:
        self._in_head = False
        headers = self._headers
        hop = self._hop
        cl = self._cl
        self._headers = []
        self._hop = []
        self._cl = -1
        parser = self.parser
        status = parser.get_status_code()
        if self.owner is not None:
            # llhttp's keep-alive verdict covers the version, Connection: close and close-framed bodies.
            self.owner.up_headers(status, parser.should_keep_alive(), headers, hop, cl)
        self._mid = status >= 200
        if status < 200:
            # An interim 1xx: the final head follows (after a 101, the raw tunnel does). Either
            # way its on_message_complete is not the end of the exchange.
            self._in_head = True

    def on_body(self, body: bytes) -> None:
        if self._skip_body:
            # A body after a HEAD response is a broken app; never reuse this connection.
            self.pool.discard(self)
            return
        if self.owner is not None:
            self.owner.up_body(body)

    def on_message_complete(self) -> None:
        if self._in_head:
            return  # the end of a 1xx (on_headers_complete set _in_head again)
        self._mid = False
        self._ended = True
        if self.owner is not None:
            self.owner.up_complete()

    # ---- used by the owner
    def send(self, data: bytes, head_request: bool) -> None:
        self._skip_body = head_request
        self._answered = False
        self._in_head = True
        self.transport.write(data)  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        """More of the request (its body) after send()."""
        self.transport.write(data)  # type: ignore[union-attr]

    def head_done_for_head_request(self) -> None:
        """After the head of a HEAD response: the message is over; reset llhttp for the next one."""
        self._mid = False
        self.parser = httptools.HttpResponseParser(self)

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections to one app address, reused most-recent-first."""

    def __init__(self, host: str, port: int, connect_timeout: float, max_idle: int, idle_timeout: float) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: collections.deque[UpstreamConnection] = collections.deque()
        self.stats = {"connects": 0, "connect_errors": 0, "reuses": 0}

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                self.stats["reuses"] += 1
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
                self.connect_timeout)
        except TimeoutError:
            self.stats["connect_errors"] += 1
            raise UpstreamError(f"connecting to the app at {self.host}:{self.port} timed out") from None
        except OSError as e:
            self.stats["connect_errors"] += 1
            raise UpstreamError(f"cannot connect to the app at {self.host}:{self.port}: "
                                f"{e.strerror or e}") from None
        self.stats["connects"] += 1
        proto.reused = False
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        conn.owner = None
        if conn.paused:
            conn.resume_reading()
        if conn.closed:
            return
        if len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = _monotonic()
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        conn.owner = None
        conn.close()
        self.forget(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def sweep(self, now: float) -> None:
        """Close connections idle longer than the idle timeout (oldest are at the left)."""
        idle = self.idle
        limit = now - self.idle_timeout
        while idle and idle[0].idle_since < limit:
            idle.popleft().close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()
