"""The tunnel: the listening server and the client connection protocol.

Owns accepting clients, parsing their requests (httptools callbacks only record), the pipelining
queue, flow control in both directions, timeouts, Upgrade tunnels, linger-close after errors and
graceful drain. Each parsed request becomes a Flow (exchange.py), which does the rest. Forwarding
starts after feed_data returns (llhttp reports some framing errors after on_headers_complete).
Must not import rules, actions or telemetry.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import socket
import struct
import time
from typing import Any

import httptools

from decorator.proxy import replies
from decorator.proxy.http import FramingError, check_request
from decorator.proxy.exchange import REQ_DONE, RESP_NONE, RESP_REPLY, Downstream, Flow, Host
from decorator.proxy.hooks import ChainedHooks, Exchange, Hooks, hook_name
from decorator.proxy.limits import Limits
from decorator.proxy.upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger("decorator.proxy")
access_log = logging.getLogger("decorator.access")

_monotonic = time.monotonic
_LOW_HEX = tuple(f"{i:02x}" for i in range(256))


class RequestIds:
    """X-Request-Id values for requests that came without one: 16 random hex digits per process, then
    a counter; 32 hex digits like nginx's $request_id, unique across restarts and pods without 128
    random bits per request. The counter's last two digits come from a table and the rest is formatted
    once per 256 ids, so an id costs one concatenation."""

    __slots__ = ("block", "low_hex", "n", "prefix")

    def __init__(self) -> None:
        self.low_hex = _LOW_HEX
        self.reseed()

    def reseed(self) -> None:
        self.prefix = f"{random.getrandbits(64):016x}"
        self.n = 0
        self.block = self.prefix + "0" * 14

    def next(self) -> str:
        self.n += 1
        n = self.n
        low = n & 0xFF
        if low == 0:
            self.block = f"{self.prefix}{n >> 8:014x}"
        return self.block + self.low_hex[low]


_ids = RequestIds()
os.register_at_fork(after_in_child=_ids.reseed)  # a forked worker must not repeat its parent's ids


def new_request_id() -> str:
    return _ids.next()


# Reading from the client pauses for any of these reasons; it resumes when none is left.
_P_UPSTREAM = 1      # the app's socket buffer is full (slow app): stop reading the upload
_P_BUFFER = 2        # body buffered while the upstream connection is being made
_P_PIPELINE = 4      # too many pipelined requests waiting
_P_UPGRADE = 8       # upgrade requested: wait for the app's 101
_P_REJECTED = 16     # the stream is unrecoverable; answer what came before, then close

_LINGER_RESET = struct.pack("ii", 1, 0)   # SO_LINGER on, 0 s: close() sends RST
_PIPELINE_MAX = 16                 # requests queued behind the one in flight


class _Discard(list):
    """Where trailer fields go: they are not forwarded, and an endless trailer must not pile up."""

    def append(self, item: Any) -> None:
        pass


_TRAILERS = _Discard()


class _Reject(Exception):
    """Raised from an httptools callback to stop parsing; the connection answers `status` and closes."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class ProxyServer(Host):
    """Listens for clients and forwards to one app. `hooks` may be swapped at any time (reload)."""

    def __init__(self, target: tuple[str, int] | None, limits: Limits | None = None, hooks: Hooks | None = None,
                 access_log: bool = False) -> None:
        """`target` None: no app behind this server (the admin port); what no hook answers gets 404."""
        limits = limits or Limits()
        Host.__init__(self, limits, UpstreamPool(target[0], target[1], limits.connect_timeout,
                                                 limits.max_idle_upstream, limits.upstream_idle_timeout
                                                 ) if target is not None else None)
        self.hooks = hooks
        self.access_log = access_log
        self.target = target
        self.connections: set[ClientConnection] = set()
        self.port = 0
        self.stats = {"connections_total": 0, "connections_refused": 0, "exchanges": 0, "in_flight": 0,
                      "bad_requests": 0, "upstream_errors": 0, "upstream_timeouts": 0, "hook_errors": 0,
                      "replies": 0}
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task | None = None
        self.idle = asyncio.Event()  # set while no client connection is open (drain waits on it)
        self.idle.set()

    @property
    def hooks(self) -> Hooks | None:
        return self.active_hooks

    @hooks.setter
    def hooks(self, hooks: Hooks | None) -> None:
        # One assignment: exchanges in flight keep the Hooks object they started with.
        if isinstance(hooks, ChainedHooks):
            hooks.on_error = self.hook_failed  # a failing part is logged by name and counted here
        self.active_hooks = hooks

    @property
    def upstream_stats(self) -> dict[str, int]:
        return self.pool.stats if self.pool is not None else {}

    async def start(self, host: str = "127.0.0.1", port: int = 0, sock: Any = None) -> None:
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: ClientConnection(self), sock=sock, backlog=4096)
        else:
            self._server = await loop.create_server(lambda: ClientConnection(self), host, port,
                                                    backlog=4096, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        lim = self.limits
        step = max(0.05, min(1.0, lim.header_timeout / 4, lim.upstream_timeout / 4, lim.idle_timeout / 4,
                             lim.body_timeout / 4))
        while True:
            await asyncio.sleep(step)
            now = _monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now)
            if self.pool is not None:
                self.pool.sweep(now)

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.idle.set()

    async def shutdown(self, drain_timeout: float = 15.0) -> bool:
        """Stop accepting, let in-flight exchanges finish (bounded), then close everything.

        Returns True when everything finished within the timeout.
        """
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.drain()
        clean = True
        if self.connections:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), drain_timeout)
            except TimeoutError:
                clean = False
                log.warning("drain timeout (%.1fs): closing %d connection(s) with exchanges in flight",
                            drain_timeout, len(self.connections))
                for conn in list(self.connections):
                    conn.abort()
        if self._ticker is not None:
            self._ticker.cancel()
        if self.pool is not None:
            self.pool.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except TimeoutError:
                pass
        return clean

    def hook_failed(self, fn: Any, ex: Exchange) -> None:
        """A hook raised: log it by name with its traceback, count it; the exchange goes on without it."""
        self.stats["hook_errors"] += 1
        log.exception("hook %s failed for %s %s (request %s); continuing without it",
                      hook_name(fn), ex.method, ex.target, ex.request_id)

    def log_access(self, ex: Exchange, now: float) -> None:
        access_log.info('%s "%s %s HTTP/%s" %d %d %.1fms rid=%s%s', ex.client, ex.method, ex.target,
                        ex.version, ex.status, ex.bytes_out, (now - ex.t_start) * 1000,
                        ex.request_id, f" error={ex.error}" if ex.error else "")


class ClientConnection(Downstream):
    """One client connection: parses requests and runs their exchanges one at a time, in order."""

    def __init__(self, server: ProxyServer) -> None:
        Downstream.__init__(self, server)
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.paused = 0
        self.write_paused_since = 0.0
        self.tunnel_to: UpstreamConnection | None = None   # after a 101: raw bytes go there
        self.queue: collections.deque[Flow] = collections.deque()
        self.parsing: Flow | None = None
        self.last_read = 0.0
        self.idle_since = 0.0
        self.head_start = 0.0
        self.in_head = True
        self.head_bytes = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._writable: asyncio.Future | None = None
        self.lingering = False
        self.got_eof = False    # the client half-closed: nothing to linger for

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        srv = self.server
        srv.stats["connections_total"] += 1
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        self.client_b = self.client.encode("latin-1")
        self.xff_line = b"X-Forwarded-For: " + self.client_b + b"\r\n"
        now = _monotonic()
        self.head_start = now
        self.last_read = now
        if len(srv.connections) >= self.limits.max_connections or srv.draining:
            srv.stats["connections_refused"] += 1
            transport.write(replies.simple_response(503, "too many connections" if not srv.draining
                                                    else "shutting down", close=True))
            transport.close()
            self.closed = True
            return
        srv.connections.add(self)
        srv.idle.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connection_closed(self)
        flow = self.active
        if flow is not None:
            flow.client_lost()
        self.queue.clear()
        w = self._writable
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        self.got_eof = True
        if self.lingering:
            self.transport.close()  # type: ignore[union-attr]
            return False
        up = self.tunnel_to
        if up is not None:
            if up.transport is not None and up.transport.can_write_eof():
                up.transport.write_eof()
            return True
        if self.active is None and not self.queue:
            self.transport.close()  # type: ignore[union-attr]
            return False
        flow = self.parsing
        if flow is not None and flow.resp_state == RESP_NONE:
            # The body can never be completed: answer now rather than hold the exchange (and the
            # app's connection, with the partial request on it) until the body timeout.
            self._reject(400, "the client closed the connection before the end of the request body")
            return True
        # A half-closed client still waits for its answers; close after them.
        self.draining = True
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_since = _monotonic()
        flow = self.active
        if flow is not None and flow.up is not None:
            flow.up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        flow = self.active
        if flow is not None and flow.up is not None:
            flow.up.resume_reading()
        w = self._writable
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = _monotonic()
        self.last_read = now
        if self.closed:
            return  # lingering after an error: input is read and dropped
        if self.tunnel_to is not None:
            self.tunnel_to.write(data)
            return
        if self.in_head:
            if not self.head_start:
                self.head_start = now
            self.head_bytes += len(data)  # reset by on_headers_complete when the head ends in this read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            offset = e.args[0] if e.args else len(data)
            flow = self.queue[-1] if self.queue else self.active
            if flow is not None:
                flow.upgrade_buf = data[offset:]
                flow.close_after = True
            self._pause(_P_UPGRADE)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, (_Reject, FramingError)):
                self._reject(cause.status, cause.message)
            else:
                raise
            return
        except httptools.HttpParserError as e:
            self._reject(400, f"malformed request: {e}")
            return
        if self.in_head and self.head_bytes:
            if self.head_bytes > self.limits.max_header_size:
                # An unfinished head this big: llhttp would keep going, and we would keep its fields.
                if len(self._url) > self.limits.max_header_size or not self._headers:
                    self._reject(414, "request target too long")
                else:
                    self._reject(431, "request header block too large")
                return
            if self._url and not self._headers and data[-1:] == b"\n" and _no_version(self._url, data):
                # "GET /x\r\n": a request line without a version (HTTP/0.9); llhttp waits for more.
                self._reject(400, "the request line has no HTTP version")
                return
        if self.active is None and self.queue:
            self._start_next()
        if self.out:
            self.flush()

    # ------------------------------------------------------------------ httptools callbacks
    # Size and count limits are checked once per head, not per field: data_received bounds what
    # an unfinished head may hold (head_bytes), on_headers_complete checks the exact figures.
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))  # after a chunked body: a trailer, into _TRAILERS

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_start = 0.0
        headers = self._headers
        url = self._url
        lim = self.limits
        if self.head_bytes + len(headers) > lim.max_header_size:
            # Over the limit by the read sizes (which may include body bytes; a field counts one
            # byte more below than its shortest form on the wire): count exactly.
            if len(url) > lim.max_header_size:
                raise _Reject(414, "request target too long")
            if _head_size(url, headers) > lim.max_header_size:
                raise _Reject(431, "request header block too large")
        self.head_bytes = 0
        if len(headers) > lim.max_headers:
            raise _Reject(431, f"more than {lim.max_headers} header fields")
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        framing = check_request(method, version, headers)  # FramingError -> callback error
        # State for the next head is reset here rather than in on_message_begin: one callback less.
        self._url = b""
        self._headers = _TRAILERS if framing.chunked else []
        if not url or url[0] != 47:  # not origin-form ("/..."): a byte test, no method call
            url = _origin_form(url, method)
        rid = framing.request_id
        # Flow.__new__ then the typed _open: the compiled build skips __init__'s argument parsing.
        flow = Flow.__new__(Flow)
        flow._open(self, method, url, version, framing, rid.decode("latin-1") if rid else new_request_id())
        self.parsing = flow
        self.queue.append(flow)
        if len(self.queue) > _PIPELINE_MAX:
            self._pause(_P_PIPELINE)

    def on_body(self, body: bytes) -> None:
        self.parsing.request_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        flow = self.parsing
        self.parsing = None
        self.in_head = True
        if self._headers is _TRAILERS:
            self._headers = []
        if flow is not None:
            flow.request_done()

    # ------------------------------------------------------------------ exchanges, in order
    def _start_next(self) -> None:
        srv = self.server
        while self.queue and self.active is None and not self.closed:
            flow = self.queue.popleft()
            self.active = flow
            srv.stats["exchanges"] += 1
            srv.stats["in_flight"] += 1
            if self.paused & _P_PIPELINE and len(self.queue) <= _PIPELINE_MAX // 2:
                self._resume(_P_PIPELINE)
            flow.start()  # may finish at once (a reply) and start the next itself

    def exchange_finished(self, flow: Flow) -> None:
        """A Flow is over: close, linger-close, or go on with the next pipelined request."""
        if self.active is flow:
            self.active = None
        if self.closed:
            return
        srv = self.server
        body_unread = flow.req_state != REQ_DONE
        if flow.close_after or body_unread or self.draining or srv.draining or flow.upgraded:
            if self.queue and not (flow.close_after or body_unread or flow.upgraded):
                pass  # draining: answer what the client already sent (it pipelined it before we knew)
            elif flow.reject is not None or (flow.replaced and 400 <= flow.status < 500 and self.paused):
                self._linger_close()
                return
            else:
                self.close()
                return
        self.idle_since = _monotonic()
        if self.queue:
            self._start_next()
            if self.out:
                self.flush()

    # ------------------------------------------------------------------ used by Flow
    def flush(self) -> None:
        out = self.out
        if not out or self.transport is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if not self.closed or not self.transport.is_closing():
            self.transport.write(data)

    async def writable(self) -> None:
        """Wait until the client's socket buffer has room again (or the client is gone)."""
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()
        await self._writable

    def pause_for_buffer(self) -> None:
        self._pause(_P_BUFFER)

    def resume_after_buffer(self) -> None:
        self._resume(_P_BUFFER)

    def pause_for_upstream(self) -> None:
        self._pause(_P_UPSTREAM)

    def resume_for_upstream(self) -> None:
        self._resume(_P_UPSTREAM)

    def become_tunnel(self, up: UpstreamConnection, rest: bytes, early: bytes) -> None:
        """After the app's 101: raw bytes both ways from now on."""
        self.flush()
        self.tunnel_to = up
        up.tunnel_to = self.transport
        if rest:
            self.transport.write(rest)  # type: ignore[union-attr]
        if early:
            up.write(early)
        self._resume(_P_UPGRADE)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        t = self.transport
        if t is not None:
            # A reset, not a FIN: for a body that ends with the connection (HTTP/1.0 clients) a FIN
            # would say "that was all of it"; a reset says it was cut.
            sock = t.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
            t.abort()
        self.closed = True

    # ------------------------------------------------------------------ helpers
    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _reject(self, status: int, message: str) -> None:
        """The request stream cannot be parsed any further: answer in order, then close."""
        self.server.stats["bad_requests"] += 1
        self._pause(_P_REJECTED)
        flow = self.parsing
        if flow is not None and flow is self.active:
            # Broken mid-body while forwarding: the app must not see a complete request.
            flow.error = "bad_request_body"
            if flow.resp_state != RESP_NONE and flow.resp_state != RESP_REPLY:
                self.abort()
                return
            if flow.resp_state == RESP_NONE:
                flow.send_error(status, message)
            flow.close_after = True
            self.flush()
            return
        if flow is None or flow.up_state != 0:
            flow = Flow(self, b"-", b"-", "1.1", None, new_request_id())
            self.queue.append(flow)
        flow.reject = (status, message)
        flow.close_after = True
        if self.active is None:
            self._start_next()
            self.flush()

    def _linger_close(self) -> None:
        """Close after an error without losing the answer: closing with unread input sends a RST,
        which can destroy the response in the client's buffer. Send FIN, read and drop for a while."""
        self.closed = True
        self.lingering = True
        t = self.transport
        if t is None:
            return
        if self.got_eof:
            # The client has sent all it will (its EOF came first): no input can follow to cause
            # a reset, and no second EOF would come to end the lingering.
            t.close()
            return
        try:
            if t.can_write_eof():
                t.write_eof()
        except (OSError, RuntimeError):
            t.close()
            return
        self.paused = 0
        t.resume_reading()
        asyncio.get_running_loop().call_later(2.0, t.close)

    def drain(self) -> None:
        """Shutdown: close now if idle, else after the exchange in flight."""
        self.draining = True
        if self.active is None and not self.queue and self.transport is not None:
            self.transport.close()

    def check_timeouts(self, now: float) -> None:
        if self.closed or self.tunnel_to is not None:
            return
        lim = self.limits
        flow = self.active
        if flow is None:
            if self.head_start:
                if now - self.head_start > lim.header_timeout:
                    if self.head_bytes or self._url:
                        self.transport.write(replies.simple_response(408))  # type: ignore[union-attr]
                    self.close()
            elif now - self.idle_since > lim.idle_timeout:
                self.close()
            return
        if flow.check_timeout(now):
            return
        if flow.req_state != REQ_DONE and not self.paused and now - self.last_read > lim.body_timeout:
            flow.error = "client_body_timeout"
            if flow.resp_state == RESP_NONE:
                flow.send_error(408, None)
                self.flush()
            else:
                self.abort()
            return
        if self.write_paused and now - self.write_paused_since > lim.idle_timeout:
            flow.error = "client_too_slow"
            self.abort()


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """A head's size as counted for the limit: the target, and each field with its ': ' and CRLF."""
    size = len(url)
    for n, v in headers:
        size += len(n) + len(v) + 4
    return size


def _no_version(url: bytes, data: bytes) -> bool:
    """Whether the line `data` ends with is a request line with no version: "METHOD target".
    Only asked while no header of the current head was parsed, so that line is its request line."""
    line = data[data.rfind(b"\n", 0, len(data) - 1) + 1:].split()
    return len(line) == 2 and line[1] == url


def _origin_form(url: bytes, method: bytes) -> bytes:
    """absolute-form (RFC 9112 §3.2.2) -> origin-form; '*' stays for OPTIONS."""
    if url == b"*" and method == b"OPTIONS":
        return url
    low = url[:8].lower()
    if low.startswith((b"http://", b"https://")):
        rest = url.split(b"://", 1)[1]
        slash = rest.find(b"/")
        return rest[slash:] if slash >= 0 else b"/"
    raise _Reject(400, "request target must be a path")
