"""The tunnel: accepts clients, parses their requests, forwards them to the app and streams answers back.

Owns the client-side protocol, the exchange lifecycle (request -> hooks -> upstream -> hooks -> client),
pipelining, back-pressure in both directions, timeouts, Upgrade tunnels and graceful drain.
httptools callbacks only record; forwarding starts after feed_data returns (llhttp reports some
framing errors after on_headers_complete). Must not import rules, actions or telemetry.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import random
import time
from typing import Any

import httptools

from decorator.errors import UpstreamError
from decorator.proxy import http
from decorator.proxy.hooks import Exchange, Hooks, Reply
from decorator.proxy.upstream import UpstreamConnection, UpstreamPool
from decorator.proxy.limits import Limits

log = logging.getLogger("decorator.proxy")
access_log = logging.getLogger("decorator.access")

_monotonic = time.monotonic
_next_id = itertools.count(1).__next__
# X-Request-Id when the client sent none: 16 random hex digits per process, then a counter; 32 hex
# digits like nginx's $request_id, unique across restarts and pods without 128 random bits per request.
_ID_PREFIX = f"{random.getrandbits(64):016x}"


def new_request_id() -> str:
    return f"{_ID_PREFIX}{_next_id():016x}"


# Reading from the client pauses for any of these reasons; it resumes when none is left.
_P_UPSTREAM = 1      # the app's socket buffer is full (slow app): stop reading the upload
_P_BUFFER = 2        # body buffered while the upstream connection is being made
_P_PIPELINE = 4      # too many pipelined requests waiting
_P_UPGRADE = 8       # upgrade requested: wait for the app's 101
_P_REJECTED = 16     # the stream is unrecoverable; answer what came before, then close

_BUFFER_HIGH = 256 * 1024          # request body bytes held before the app is connected
_PIPELINE_MAX = 16                 # requests queued behind the one in flight
_DISCARD_MAX = 1024 * 1024         # app body bytes we read and drop after a Reply replaced it
_FILE_CHUNK = 256 * 1024
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class _Flow(Exchange):
    """An Exchange plus the tunnel's own bookkeeping for it."""

    __slots__ = (
        "bmethod",
        "body_buf",
        "body_done",
        "buffered",
        "burl",
        "close_after",
        "connect_task",
        "discarded",
        "discarding",
        "done",
        "forwarding",
        "framing",
        "head_sent",
        "hooks",
        "out_chunked",
        "reject",
        "reply_done",
        "resp",
        "retried",
        "t_last_up",
        "t_sent",
        "up",
        "up_head",
        "upgrade_buf",
    )

    def __init__(self, method: bytes, url: bytes, version: str, framing: http.RequestFraming | None,
                 client: str, request_id: str) -> None:
        _exchange_init(self, method.decode("latin-1"), url.decode("latin-1"), version,
                       framing.headers if framing is not None else [], client, "http", request_id)
        self.framing = framing
        self.hooks: Hooks | None = None
        self.bmethod = method
        self.burl = url
        self.up: UpstreamConnection | None = None
        self.body_buf: list[bytes] | None = None   # request body held until the app is connected
        self.buffered = 0
        self.body_done = False
        self.forwarding = False
        self.t_sent = 0.0
        self.t_last_up = 0.0
        self.resp: http.ResponseFraming | None = None
        self.out_chunked = False
        self.close_after = False
        self.discarding = False
        self.discarded = 0
        self.reply_done = False
        self.head_sent = False
        self.reject: tuple[int, str] | None = None
        self.upgrade_buf = b""
        self.retried = False
        self.up_head = b""
        self.connect_task: asyncio.Task | None = None
        self.done = False


class _Discard(list):
    """Where trailer fields go: they are not forwarded, and an endless trailer must not pile up."""

    def append(self, item: Any) -> None:
        pass


_TRAILERS = _Discard()


_exchange_init = Exchange.__init__


class _Reject(Exception):
    """Raised from an httptools callback to stop parsing; the connection answers `status` and closes."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class ProxyServer:
    """Listens for clients and forwards to one app. `hooks` may be swapped at any time (reload)."""

    def __init__(self, target: tuple[str, int], limits: Limits | None = None, hooks: Hooks | None = None,
                 access_log: bool = False) -> None:
        self.limits = limits or Limits()
        self.hooks = hooks
        self.access_log = access_log
        self.target = target
        self.pool = UpstreamPool(target[0], target[1], self.limits.connect_timeout,
                                 self.limits.max_idle_upstream, self.limits.upstream_idle_timeout)
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.port = 0
        self.stats = {"connections_total": 0, "connections_refused": 0, "exchanges": 0, "in_flight": 0,
                      "bad_requests": 0, "upstream_errors": 0, "upstream_timeouts": 0, "hook_errors": 0,
                      "replies": 0}
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def upstream_stats(self) -> dict[str, int]:
        return self.pool.stats

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
            self.pool.sweep(now)

    def _connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._idle.set()

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
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), drain_timeout)
            except TimeoutError:
                clean = False
                log.warning("drain timeout (%.1fs): closing %d connection(s) with exchanges in flight",
                            drain_timeout, len(self.connections))
                for conn in list(self.connections):
                    conn.abort()
        if self._ticker is not None:
            self._ticker.cancel()
        self.pool.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except TimeoutError:
                pass
        return clean

    def call_hook(self, fn, flow: Exchange):
        try:
            return fn(flow)
        except Exception:
            self.hook_failed(fn, flow)
            return None

    def hook_failed(self, fn, flow: Exchange) -> None:
        """A hook raised: log it with its traceback, count it; the exchange goes on without it."""
        self.stats["hook_errors"] += 1
        log.exception("hook %s failed for %s %s (request %s); continuing without it",
                      getattr(fn, "__qualname__", fn), flow.method, flow.target, flow.request_id)


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, runs exchanges one at a time, in order."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client = ""
        self.client_b = b""
        self.closed = False
        self.paused = 0
        self.write_paused = False
        self.write_paused_since = 0.0
        self.upgraded = False
        self.draining = False
        self.active: _Flow | None = None
        self.queue: collections.deque[_Flow] = collections.deque()
        self.parsing: _Flow | None = None
        self.out: list[bytes] = []
        self.last_read = 0.0
        self.idle_since = 0.0
        self.head_start = 0.0
        self.in_head = True
        self.head_bytes = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._drain_waiter: asyncio.Future | None = None
        self.lingering = False

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        srv = self.server
        srv.stats["connections_total"] += 1
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        self.client_b = self.client.encode("latin-1")
        now = _monotonic()
        self.head_start = now
        self.last_read = now
        if len(srv.connections) >= self.limits.max_connections or srv.draining:
            srv.stats["connections_refused"] += 1
            transport.write(http.simple_response(503, "too many connections" if not srv.draining
                                                 else "shutting down", close=True))
            transport.close()
            self.closed = True
            return
        srv.connections.add(self)
        srv._idle.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connection_closed(self)
        flow = self.active
        if flow is not None and not flow.done:
            flow.error = flow.error or "client_closed"
            if flow.connect_task is not None:
                flow.connect_task.cancel()
            self._finish(flow, reusable=False)
        self.queue.clear()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def eof_received(self) -> bool:
        if self.lingering:
            self.transport.close()  # type: ignore[union-attr]
            return False
        if self.upgraded:
            flow = self.active
            up = flow.up.transport if flow is not None and flow.up is not None else None
            if up is not None and up.can_write_eof():
                up.write_eof()
            return True
        if self.active is None and not self.queue:
            self.transport.close()  # type: ignore[union-attr]
            return False
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
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = _monotonic()
        self.last_read = now
        if self.closed:
            return  # lingering after an error: input is read and dropped
        if self.upgraded:
            flow = self.active
            if flow is not None and flow.up is not None and flow.up.transport is not None:
                flow.up.transport.write(data)
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
            if isinstance(cause, (_Reject, http.FramingError)):
                self._reject(cause.status, cause.message)
            else:
                raise
            return
        except httptools.HttpParserError as e:
            self._reject(400, f"malformed request: {e}")
            return
        if self.in_head and self.head_bytes > self.limits.max_header_size:
            # An unfinished head this big: llhttp would keep going, and we would keep its fields.
            if len(self._url) > self.limits.max_header_size or not self._headers:
                self._reject(414, "request target too long")
            else:
                self._reject(431, "request header block too large")
            return
        if self.active is None and self.queue:
            self._start_next()
        if self.out:
            self._flush()

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
            if len(url) + sum(len(n) + len(v) + 4 for n, v in headers) > lim.max_header_size:
                raise _Reject(431, "request header block too large")
        self.head_bytes = 0
        if len(headers) > lim.max_headers:
            raise _Reject(431, f"more than {lim.max_headers} header fields")
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        framing = http.check_request(method, version, headers)  # FramingError -> callback error
        # State for the next head is reset here rather than in on_message_begin: one callback less.
        self._url = b""
        self._headers = _TRAILERS if framing.chunked else []
        if not url.startswith(b"/"):
            url = _origin_form(url, method)
        rid = framing.request_id
        flow = _Flow(method, url, version, framing, self.client,
                     rid.decode("latin-1") if rid else new_request_id())
        if not framing.keep_alive:
            flow.close_after = True
        if not framing.has_body:
            flow.body_done = True
        self.parsing = flow
        self.queue.append(flow)
        if len(self.queue) > _PIPELINE_MAX:
            self._pause(_P_PIPELINE)

    def on_body(self, body: bytes) -> None:
        flow = self.parsing
        flow.bytes_in += len(body)
        if flow.forwarding:
            if flow.up is not None:
                flow.up.transport.write(http.chunk(body) if flow.framing.chunked else body)
            return
        if flow.reply_done or flow.reject is not None:
            return  # answered already: the body is read and dropped
        if flow.body_buf is None:
            flow.body_buf = []
        flow.body_buf.append(body)
        flow.buffered += len(body)
        if flow.buffered > _BUFFER_HIGH:
            self._pause(_P_BUFFER)

    def on_message_complete(self) -> None:
        flow = self.parsing
        self.parsing = None
        self.in_head = True
        if self._headers is _TRAILERS:
            self._headers = []
        if flow is None:
            return
        if flow.framing.has_body:
            flow.body_done = True
            if flow.forwarding and flow.up is not None and flow.framing.chunked:
                flow.up.transport.write(http.LAST_CHUNK)
            if flow.reply_done and flow.done is False and flow is self.active:
                self._maybe_finish(flow)

    # ------------------------------------------------------------------ exchange lifecycle
    def _start_next(self) -> None:
        while self.queue and self.active is None and not self.closed:
            flow = self.queue.popleft()
            self.active = flow
            srv = self.server
            srv.stats["exchanges"] += 1
            srv.stats["in_flight"] += 1
            if self.paused & _P_PIPELINE and len(self.queue) <= _PIPELINE_MAX // 2:
                self._resume(_P_PIPELINE)
            if flow.reject is not None:
                status, message = flow.reject
                self._send_error(flow, status, message)
                return
            hooks = srv.hooks
            flow.hooks = hooks
            if hooks is not None and hooks.on_request is not None and (
                    hooks.request_heads is None or _heads_want(hooks.request_heads, flow.method, flow.path)):
                before = flow.request_headers
                n_before = len(before)
                try:
                    reply = hooks.on_request(flow)
                except Exception:
                    srv.hook_failed(hooks.on_request, flow)
                    reply = None
                if reply is not None:
                    self._send_reply(flow, reply)
                    continue
                if flow.request_headers is not before or len(before) != n_before:
                    _sanitize(flow)
            flow.up_head = self._upstream_head(flow)
            conn = srv.pool.take_idle()
            if conn is not None:
                self._attach(flow, conn)
            else:
                flow.connect_task = asyncio.ensure_future(self._connect(flow))
            return

    def _upstream_head(self, flow: _Flow) -> bytes:
        """The request head for the app: the client's fields, then this hop's, serialised once."""
        framing = flow.framing
        headers = flow.request_headers
        extra = []
        if not framing.has_xff:
            extra.append((b"X-Forwarded-For", self.client_b))
        else:
            # The received value plus this hop, in place.
            headers = [(k, v + b", " + self.client_b) if k.lower() == b"x-forwarded-for" else (k, v)
                       for k, v in headers]
        if not framing.has_xfp:
            extra.append((b"X-Forwarded-Proto", b"http"))
        if framing.request_id is None:
            extra.append((b"X-Request-Id", flow.request_id.encode("latin-1")))
        if framing.chunked:
            extra.append((b"Transfer-Encoding", b"chunked"))
        if framing.upgrade is not None:
            extra += [(b"Connection", b"Upgrade"), (b"Upgrade", framing.upgrade)]
        return b"%s %s HTTP/1.1\r\n%s\r\n" % (flow.bmethod, flow.burl, http.serialize_headers(headers + extra))

    async def _connect(self, flow: _Flow) -> None:
        try:
            conn = await self.server.pool.connect()
        except UpstreamError as e:
            flow.connect_task = None
            self.server.stats["upstream_errors"] += 1
            flow.error = "upstream_connect"
            if not self.closed and flow is self.active:
                self._send_error(flow, 502, str(e))
            return
        except Exception:  # a bug: keep its traceback, but never leave the client hanging
            flow.connect_task = None
            log.exception("connecting to the app failed unexpectedly (request %s)", flow.request_id)
            flow.error = "internal"
            if not self.closed and flow is self.active:
                self._send_error(flow, 502, "internal error while connecting to the app")
            return
        flow.connect_task = None
        if self.closed or flow is not self.active or flow.done:
            self.server.pool.release(conn)
            return
        self._attach(flow, conn)

    def _attach(self, flow: _Flow, conn: UpstreamConnection) -> None:
        flow.up = conn
        conn.owner = self
        framing = flow.framing
        if flow.body_buf:
            body = b"".join(flow.body_buf)
            flow.body_buf = None
            flow.buffered = 0
            data = flow.up_head + (http.chunk(body) if framing.chunked else body)
        else:
            data = flow.up_head
        if flow.body_done and framing.chunked:
            data += http.LAST_CHUNK
        flow.forwarding = True
        flow.t_sent = flow.t_last_up = _monotonic()
        conn.send(data, head_request=flow.bmethod == b"HEAD")
        if self.write_paused:
            conn.pause_reading()
        if self.paused & _P_BUFFER:
            self._resume(_P_BUFFER)

    # ---- events from the upstream connection (UpstreamConnection calls these)
    def up_headers(self, conn: UpstreamConnection, status: int, version: str,
                   headers: list[tuple[bytes, bytes]], hop: list[tuple[bytes, bytes]], cl: int) -> None:
        flow = self.active
        if flow is None or flow.up is not conn:
            return
        flow.t_last_up = conn.last_read
        if status < 200 and status != 101:
            # Interim responses (100 Continue, 103 Early Hints) go to HTTP/1.1 clients as they are.
            if flow.version == "1.1" and not flow.discarding:
                self.out.append(http.status_line(status) + http.serialize_headers(headers) + b"\r\n")
            return
        try:
            rf = http.check_response(version, status, headers, hop, cl)
        except http.FramingError as e:
            self.up_failed(e.message)
            return
        flow.resp = rf
        flow.status = status
        flow.response_headers = rf.headers
        flow.t_response = flow.t_last_up
        if flow.bmethod == b"HEAD":
            conn.head_done_for_head_request()
        hooks = flow.hooks
        if (hooks is not None and hooks.on_response_head is not None
                and (hooks.response_statuses is None or status in hooks.response_statuses)
                and (hooks.response_heads is None or _heads_want(hooks.response_heads, status, flow.path))):
            n_before = len(rf.headers)
            try:
                reply = hooks.on_response_head(flow)
            except Exception:
                self.server.hook_failed(hooks.on_response_head, flow)
                reply = None
            if reply is not None:
                flow.discarding = True
                self._send_reply(flow, reply)
                if flow.bmethod == b"HEAD" or status in (204, 304):
                    # No app body will follow: the exchange ends with the reply.
                    self._upstream_done(flow, reusable=rf.keep_alive and flow.body_done)
                    self._maybe_finish(flow)
                return
            if flow.response_headers is not rf.headers or len(rf.headers) != n_before:
                flow.response_headers = [(k, v) for k, v in flow.response_headers
                                         if k.lower() not in http.HOP_BY_HOP]
        self._write_response_head(flow, rf)
        if flow.bmethod == b"HEAD" or status in (204, 304):
            self._upstream_done(flow, reusable=rf.keep_alive and flow.body_done)
            self._maybe_finish(flow)

    def _write_response_head(self, flow: _Flow, rf: http.ResponseFraming) -> None:
        status = flow.status
        parts = [http.status_line(status), http.serialize_headers(flow.response_headers)]
        no_body = flow.bmethod == b"HEAD" or status in (204, 304) or status == 101
        client11 = flow.version == "1.1"
        if status == 101:
            parts.append(b"Connection: Upgrade\r\n")
        elif not no_body:
            if rf.chunked or rf.content_length < 0:
                if client11:
                    parts.append(b"Transfer-Encoding: chunked\r\n")
                    flow.out_chunked = True
                else:
                    flow.close_after = True  # HTTP/1.0: the body ends when we close
        elif rf.chunked and flow.bmethod == b"HEAD" and client11:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if status != 101:
            if flow.close_after or self.draining or self.server.draining:
                flow.close_after = True
                parts.append(b"Connection: close\r\n")
            elif not client11:
                parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self.out.append(b"".join(parts))
        flow.head_sent = True

    def up_body(self, data: bytes) -> None:
        flow = self.active
        if flow is None:
            return
        if flow.discarding:
            flow.discarded += len(data)
            if flow.discarded > _DISCARD_MAX and flow.up is not None:
                self._upstream_done(flow, reusable=False)
                self._maybe_finish(flow)
            return
        flow.bytes_out += len(data)
        self.out.append(http.chunk(data) if flow.out_chunked else data)
        if len(self.out) > 64:
            self._flush()

    def up_complete(self) -> None:
        flow = self.active
        if flow is None or flow.up is None:
            return
        rf = flow.resp
        if not flow.discarding:
            if flow.out_chunked:
                self.out.append(http.LAST_CHUNK)
            if not flow.replaced and rf is not None and rf.keep_alive and flow.body_done:
                # The common end of an exchange, without the general paths' checks.
                conn = flow.up
                flow.up = None
                self.server.pool.release(conn)
                self._finish(flow, reusable=True)
                return
        self._upstream_done(flow, reusable=rf is not None and rf.keep_alive and flow.body_done)
        self._maybe_finish(flow)

    def up_eof(self, conn: UpstreamConnection) -> None:
        """The app closed its side: that ends a response framed by close, and nothing else."""
        flow = self.active
        if flow is None or flow.up is not conn or flow.resp is None or flow.upgraded:
            return
        rf = flow.resp
        if not rf.chunked and rf.content_length < 0 and (flow.head_sent or flow.discarding):
            rf.keep_alive = False
            self.up_complete()
            self._flush()

    def up_flush(self) -> None:
        if self.out:
            self._flush()

    def up_upgrade(self, rest: bytes) -> None:
        flow = self.active
        if flow is None or flow.up is None or flow.status != 101:
            return
        conn = flow.up
        self._flush()
        self.upgraded = True
        flow.upgraded = True
        conn.tunnel_to = self.transport
        if rest:
            self.transport.write(rest)  # type: ignore[union-attr]
        if flow.upgrade_buf:
            conn.transport.write(flow.upgrade_buf)
            flow.upgrade_buf = b""
        self._resume(_P_UPGRADE)

    def up_pause_writing(self) -> None:
        self._pause(_P_UPSTREAM)

    def up_resume_writing(self) -> None:
        self._resume(_P_UPSTREAM)

    def up_failed(self, message: str) -> None:
        flow = self.active
        if flow is None:
            return
        self.server.stats["upstream_errors"] += 1
        flow.error = flow.error or "upstream_protocol"
        self._upstream_done(flow, reusable=False)
        if flow.head_sent or flow.reply_done:
            self.abort()
        else:
            self._send_error(flow, 502, message)

    def up_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        flow = self.active
        if flow is None or flow.up is not conn:
            return
        if flow.upgraded:
            flow.up = None
            self._finish(flow, reusable=False)
            if self.transport is not None:
                self.transport.close()
            return
        flow.up = None
        if flow.discarding:
            self._maybe_finish(flow)
            return
        if not flow.head_sent and not flow.reply_done:
            # A pooled connection the app had already closed: retry once when nothing is lost by it.
            if (conn.reused and not conn._got_bytes and not flow.retried and flow.bytes_in == 0
                    and flow.bmethod in _IDEMPOTENT):
                flow.retried = True
                flow.forwarding = False
                self.server.pool.forget(conn)
                nxt = self.server.pool.take_idle()
                if nxt is not None:
                    self._attach(flow, nxt)
                else:
                    flow.connect_task = asyncio.ensure_future(self._connect(flow))
                return
            self.server.stats["upstream_errors"] += 1
            flow.error = "upstream_closed"
            self._send_error(flow, 502, "the app closed the connection without answering")
            return
        # Broken mid-body: the client must see a truncated response, not a complete-looking one.
        flow.error = "upstream_closed"
        self.server.stats["upstream_errors"] += 1
        self._flush()
        self.abort()

    def _upstream_done(self, flow: _Flow, reusable: bool) -> None:
        conn = flow.up
        if conn is None:
            return
        flow.up = None
        pool = self.server.pool
        if reusable and not conn.closed:
            pool.release(conn)
        else:
            pool.discard(conn)

    # ---- replies made here: hooks' replies and the proxy's own errors
    def _send_reply(self, flow: _Flow, reply: Reply) -> None:
        self.server.stats["replies"] += 1
        flow.replaced = True
        flow.status = reply.status
        flow.t_response = _monotonic()
        headers = [(k, v) for k, v in reply.headers if k.lower() not in http.FRAMING]
        flow.response_headers = headers
        if not flow.body_done:
            flow.close_after = True  # the rest of the request body is not worth reading
        size = len(reply.body)
        fd = None
        if reply.file is not None:
            try:
                fd = os.open(reply.file, os.O_RDONLY)
                size = os.fstat(fd).st_size
            except OSError as e:
                if fd is not None:
                    os.close(fd)
                log.error("reply file %s cannot be read: %s", reply.file, e)
                self._send_error(flow, 500, "the configured response file cannot be read")
                return
        no_body = flow.bmethod == b"HEAD" or reply.status in (204, 304) or reply.status < 200
        parts = [http.status_line(reply.status, reply.reason.encode("latin-1") if reply.reason else None),
                 http.serialize_headers(headers)]
        if reply.status not in (204, 304) and reply.status >= 200:
            parts.append(b"Content-Length: %d\r\n" % size)
        if flow.close_after or self.draining or self.server.draining:
            flow.close_after = True
            parts.append(b"Connection: close\r\n")
        elif flow.version != "1.1":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        flow.head_sent = True
        if no_body:
            if fd is not None:
                os.close(fd)
            self.out.append(b"".join(parts))
            flow.reply_done = True
            self._maybe_finish(flow)
            return
        if fd is None:
            self.out.append(b"".join(parts) + reply.body)
            flow.bytes_out += size
            flow.reply_done = True
            self._maybe_finish(flow)
            return
        self.out.append(b"".join(parts))
        self._flush()
        asyncio.ensure_future(self._stream_file(flow, fd, size))

    async def _stream_file(self, flow: _Flow, fd: int, size: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            left = size
            while left > 0 and not self.closed:
                if self.write_paused:
                    self._drain_waiter = loop.create_future()
                    await self._drain_waiter
                    self._drain_waiter = None
                    continue
                data = os.read(fd, min(_FILE_CHUNK, left))
                if not data:
                    break  # the file shrank: the client sees a short body and the connection closes
                left -= len(data)
                flow.bytes_out += len(data)
                self.transport.write(data)  # type: ignore[union-attr]
            if left > 0:
                flow.close_after = True
                flow.error = flow.error or "reply_file_short"
        finally:
            os.close(fd)
        if self.closed:
            return
        flow.reply_done = True
        self._maybe_finish(flow)

    def _send_error(self, flow: _Flow, status: int, message: str) -> None:
        flow.error = flow.error or {502: "upstream", 504: "upstream_timeout"}.get(status, f"http_{status}")
        if status >= 500:
            log.warning("%s %s -> %d: %s (request %s)", flow.method, flow.target, status, message,
                        flow.request_id)
        self._upstream_done(flow, reusable=False)
        if status == 400 or status == 431 or status == 414 or status == 408 or not flow.body_done:
            flow.close_after = True
        reply = Reply(status, [(b"Content-Type", b"text/plain; charset=utf-8")], http.error_body(status, message))
        hooks = flow.hooks
        flow.discarding = True
        if (hooks is not None and hooks.on_response_head is not None and status >= 500
                and (hooks.response_statuses is None or status in hooks.response_statuses)
                and (hooks.response_heads is None or _heads_want(hooks.response_heads, status, flow.path))):
            # Rules may replace the proxy's own 502/504 as they would the app's (a friendly 5xx page).
            flow.status = status
            flow.response_headers = reply.headers
            custom = self.server.call_hook(hooks.on_response_head, flow)
            if custom is not None:
                reply = custom
        self._send_reply(flow, reply)
        flow.replaced = True

    def _maybe_finish(self, flow: _Flow) -> None:
        if flow.done or flow.up is not None:
            return
        if flow.discarding and not flow.reply_done:
            return
        if flow.replaced and not flow.reply_done:
            return
        self._finish(flow, reusable=True)

    def _finish(self, flow: _Flow, reusable: bool) -> None:
        if flow.done:
            return
        flow.done = True
        now = _monotonic()
        flow.t_end = now
        if flow.up is not None:
            self._upstream_done(flow, reusable=False)
        if flow.connect_task is not None:
            flow.connect_task.cancel()
            flow.connect_task = None
        srv = self.server
        srv.stats["in_flight"] -= 1
        if self.out and not self.closed:
            self._flush()
        hooks = flow.hooks
        if hooks is not None and hooks.on_complete is not None:
            try:
                hooks.on_complete(flow)
            except Exception:
                srv.hook_failed(hooks.on_complete, flow)
        if srv.access_log:
            access_log.info('%s "%s %s HTTP/%s" %d %d %.1fms rid=%s%s', flow.client, flow.method, flow.target,
                            flow.version, flow.status, flow.bytes_out, (now - flow.t_start) * 1000,
                            flow.request_id, f" error={flow.error}" if flow.error else "")
        if self.active is flow:
            self.active = None
        if self.closed:
            return
        if flow.close_after or not flow.body_done or self.draining or srv.draining or flow.upgraded:
            if self.queue and not (flow.close_after or not flow.body_done or flow.upgraded):
                pass  # draining: answer what the client already sent (it pipelined it before we knew)
            elif flow.reject is not None or (flow.replaced and 400 <= flow.status < 500 and self.paused):
                self._linger_close()
                return
            else:
                self.transport.close()  # type: ignore[union-attr]
                self.closed = True
                return
        self.idle_since = now
        if self.queue:
            self._start_next()
            if self.out:
                self._flush()

    # ------------------------------------------------------------------ helpers
    def _flush(self) -> None:
        out = self.out
        if not out or self.transport is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if not self.closed or not self.transport.is_closing():
            self.transport.write(data)

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
        if flow is None or flow is self.active or flow.forwarding:
            if flow is not None and (flow is self.active):
                # Broken mid-body while forwarding: the app must not see a complete request.
                flow.error = "bad_request_body"
                if flow.up is not None:
                    self._upstream_done(flow, reusable=False)
                if flow.head_sent or flow.reply_done:
                    self.abort()
                    return
                self._send_error(flow, status, message)
                return
            flow = _Flow(b"-", b"-", "1.1", None, self.client, new_request_id())
            self.queue.append(flow)
        flow.reject = (status, message)
        flow.close_after = True
        flow.body_done = True
        if self.active is None:
            self._start_next()
            self._flush()

    def _linger_close(self) -> None:
        """Close after an error without losing the answer: closing with unread input sends a RST,
        which can destroy the response in the client's buffer. Send FIN, read and drop for a while."""
        self.closed = True
        self.lingering = True
        t = self.transport
        if t is None:
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

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def check_timeouts(self, now: float) -> None:
        if self.closed or self.upgraded:
            return
        lim = self.limits
        flow = self.active
        if flow is None:
            if self.head_start:
                if now - self.head_start > lim.header_timeout:
                    if self.head_bytes or self._url:
                        self.transport.write(http.simple_response(408, "request head not received in time"))
                    self.transport.close()  # type: ignore[union-attr]
                    self.closed = True
            elif now - self.idle_since > lim.idle_timeout:
                self.transport.close()  # type: ignore[union-attr]
                self.closed = True
            return
        if flow.up is not None and flow.t_response == 0.0 and flow.forwarding:
            if now - flow.t_sent > lim.upstream_timeout:
                self.server.stats["upstream_timeouts"] += 1
                flow.error = "upstream_timeout"
                self._send_error(flow, 504, f"the app did not answer within {lim.upstream_timeout:g}s")
                self._flush()
                return
        elif (flow.up is not None and not self.write_paused
              and now - max(flow.t_last_up, flow.up.last_read) > lim.upstream_timeout):
            flow.error = "upstream_timeout"
            self.abort()  # stalled mid-body
            return
        if not flow.body_done and not self.paused and now - self.last_read > lim.body_timeout:
            flow.error = "client_body_timeout"
            if not flow.head_sent:
                self._send_error(flow, 408, "request body not received in time")
                self._flush()
            else:
                self.abort()
            return
        if self.write_paused and now - self.write_paused_since > lim.idle_timeout:
            flow.error = "client_too_slow"
            self.abort()


def _heads_want(heads: dict, key: Any, path: str) -> bool:
    """Whether a hook's path-head promise (Hooks.request_heads / response_heads) lets it act here."""
    want = heads.get(key, heads.get("*"))
    if want is None:
        return True
    i = path.find("/", 1)  # hooks.path_head(path), without a second call per exchange
    return (path if i < 0 else path[:i]) in want


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


def _sanitize(flow: _Flow) -> None:
    """After a hook edited request headers: framing stays the tunnel's; forwarding headers are re-read."""
    framing = flow.framing
    flow.request_headers = [(k, v) for k, v in flow.request_headers
                            if k.lower() not in http.HOP_BY_HOP and k.lower() != b"content-length"]
    if framing.content_length >= 0:
        flow.request_headers.append((b"Content-Length", b"%d" % framing.content_length))
    framing.has_xff = flow.request_header(b"x-forwarded-for") is not None
    framing.has_xfp = flow.request_header(b"x-forwarded-proto") is not None
    rid = flow.request_header(b"x-request-id")
    framing.request_id = rid
    if rid is not None:
        flow.request_id = rid.decode("latin-1")
