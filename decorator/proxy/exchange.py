"""One exchange in the tunnel: its state machine, its upstream connection's events, its replies.

Owns the life of one request/response pair after its head was parsed: request hooks, getting an
upstream connection, forwarding the body, the response head and hooks, streaming or replacing the
response, completion. Three sides, each with named states and the legal moves listed in one table
(as h11's _state.py does); an illegal move raises ExchangeStateError. The client connection
(tunnel.py) owns the socket, parsing, pipelining and timeouts. Must not import rules or telemetry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from decorator.errors import UpstreamError
from decorator.proxy import replies
from decorator.proxy.driver import (
    NOT_CALLED,
    clean_headers,
    complete_phase,
    request_phase,
    response_phase,
)
from decorator.proxy.http import (
    LAST_CHUNK,
    FramingError,
    RequestFraming,
    ResponseFraming,
    add_headers,
    check_response,
    chunk,
    status_line,
)
from decorator.proxy.hooks import MAX_RESENDS, Exchange, Hooks, Reply, Retry
from decorator.proxy.upstream import UpstreamConnection

log = logging.getLogger("decorator.proxy")

_monotonic = time.monotonic

# ---- the state machine ---------------------------------------------------------------------------
# Request side: what the client has sent of this request.
REQ_BODY = 0          # head parsed, body still arriving
REQ_DONE = 1          # the whole request is read (or it had no body)
# Upstream side: the app's connection for this exchange.
UP_NONE = 0           # not asked for yet (queued, request hooks running)
UP_CONNECTING = 1     # waiting for a new connection
UP_WAITING = 2        # request sent; no response head yet
UP_BODY = 3           # the app's body is streaming to the client
UP_DISCARD = 4        # the app's answer is read and dropped: a reply replaced it
UP_TUNNEL = 5         # after 101: raw bytes both ways
UP_DONE = 6           # released to the pool or closed
# Response side: what the client has been sent.
RESP_NONE = 0         # nothing yet (interim 1xx heads do not count)
RESP_APP = 1          # the app's head went out; its body follows
RESP_REPLY = 2        # the sidecar's reply head went out (a hook's reply or an error page)
RESP_TUNNEL = 3       # the 101 went out; the connection is a raw tunnel
RESP_DONE = 4         # a whole response went out
RESP_ABORTED = 5      # the connection was cut (client gone, or a response broken mid-body)

SIDES = ("request", "upstream", "response")
STATE_NAMES = (
    ("body", "done"),
    ("none", "connecting", "waiting", "body", "discard", "tunnel", "done"),
    ("none", "app", "reply", "tunnel", "done", "aborted"),
)


def _moves(side: int, table: dict[int, tuple[int, ...]]) -> tuple[int, ...]:
    """{state: allowed next states} -> one bitmask per state (a move is legal if its bit is set)."""
    return tuple(sum(1 << to for to in table.get(s, ())) for s in range(len(STATE_NAMES[side])))


# Every legal move, in one place. Anything else is a bug in the tunnel and raises.
MOVES = (
    _moves(0, {REQ_BODY: (REQ_DONE,)}),
    # UP_DONE -> UP_CONNECTING: a response hook's Retry after the sidecar's own 502/504.
    _moves(1, {UP_NONE: (UP_CONNECTING, UP_WAITING, UP_DONE),
               UP_CONNECTING: (UP_WAITING, UP_DONE),
               UP_WAITING: (UP_CONNECTING, UP_WAITING, UP_BODY, UP_DISCARD, UP_TUNNEL, UP_DONE),
               UP_BODY: (UP_DISCARD, UP_DONE),
               UP_DISCARD: (UP_DONE,),
               UP_TUNNEL: (UP_DONE,),
               UP_DONE: (UP_CONNECTING,)}),
    _moves(2, {RESP_NONE: (RESP_APP, RESP_REPLY, RESP_TUNNEL, RESP_ABORTED),
               RESP_APP: (RESP_DONE, RESP_ABORTED),
               RESP_REPLY: (RESP_DONE, RESP_ABORTED),
               RESP_TUNNEL: (RESP_DONE, RESP_ABORTED)}),
)


class ExchangeStateError(RuntimeError):
    """A move the transition table does not allow: a bug in the tunnel, never a client's doing."""


def check_move(side: int, current: int, new: int) -> None:
    if not (MOVES[side][current] >> new) & 1:
        raise ExchangeStateError(f"{SIDES[side]}: {STATE_NAMES[side][current]} -> "
                                 f"{STATE_NAMES[side][new]} is not a legal move")


_REQ_MOVES, _UP_MOVES, _RESP_MOVES = MOVES


# ---- tuning --------------------------------------------------------------------------------------
BUFFER_HIGH = 256 * 1024           # request body bytes held before the app is connected
_DISCARD_MAX = 1024 * 1024         # app body bytes read and dropped after a reply replaced them
_FILE_CHUNK = 256 * 1024
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_ERROR_NAMES = {502: "upstream", 504: "upstream_timeout"}


class Host:
    """What an exchange needs of the server it runs in (tunnel.ProxyServer is the one): the hooks new
    exchanges take, the upstream pool, limits, counters, and where hook failures and access lines go."""

    def __init__(self, limits: Any, pool: Any) -> None:
        self.active_hooks: Hooks | None = None
        self.pool = pool
        self.limits = limits
        self.stats: dict[str, int] = {}
        self.draining = False
        self.access_log = False
        # hook_failed bound once: the phases take it on every exchange (a bound method each time otherwise).
        self.on_hook_error = self.hook_failed

    def hook_failed(self, fn: Any, ex: Exchange) -> None:
        raise NotImplementedError

    def log_access(self, ex: Exchange, now: float) -> None:
        raise NotImplementedError


class Downstream:
    """What an exchange needs of its client connection (tunnel.ClientConnection is the one): the
    output buffer, a few switches, and the calls below. The exchange calls them; the connection
    calls the exchange's start(), request_body(), request_done(), check_timeout(), client_lost()."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.out: list[bytes] = []
        self.transport: Any = None
        self.client = ""
        self.client_b = b""
        self.xff_line = b""     # this connection's X-Forwarded-For line, made once
        self.closed = False
        self.draining = False
        self.write_paused = False
        self.active: Flow | None = None

    def flush(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def exchange_finished(self, flow: Flow) -> None:
        raise NotImplementedError

    def pause_for_buffer(self) -> None:
        raise NotImplementedError

    def resume_after_buffer(self) -> None:
        raise NotImplementedError

    def pause_for_upstream(self) -> None:
        raise NotImplementedError

    def resume_for_upstream(self) -> None:
        raise NotImplementedError

    def become_tunnel(self, up: UpstreamConnection, rest: bytes, early: bytes) -> None:
        raise NotImplementedError


class Flow(Exchange):
    """An Exchange plus the tunnel's handling of it, on its client connection `conn`."""

    __slots__ = (
        "bmethod",
        "body_buf",
        "buffered",
        "burl",
        "close_after",
        "conn",
        "connect_task",
        "discarded",
        "finished",
        "framing",
        "hooks",
        "out_chunked",
        "reject",
        "req_state",
        "resp",
        "resp_state",
        "retried",
        "server",
        "t_last_up",
        "t_sent",
        "up",
        "up_head",
        "up_state",
        "upgrade_buf",
    )

    def __init__(self, conn: Downstream, method: bytes, url: bytes, version: str,
                 framing: RequestFraming | None, request_id: str) -> None:
        self._open(conn, method, url, version, framing, request_id)

    def _open(self, conn: Downstream, method: bytes, url: bytes, version: str,
              framing: RequestFraming | None, request_id: str) -> None:
        # __init__'s body: exchange.pxd types its arguments, which it cannot do for __init__.
        self._begin(method.decode("latin-1"), url.decode("latin-1"), version,
                    framing.headers if framing is not None else [], conn.client, "http", request_id)
        self.conn = conn
        self.server = conn.server
        self.framing = framing
        self.hooks: Hooks | None = None
        self.bmethod = method
        self.burl = url
        self.up: UpstreamConnection | None = None
        self.body_buf: list[bytes] | None = None   # request body held until the app is connected
        self.buffered = 0
        self.req_state = REQ_DONE if framing is None or not framing.has_body else REQ_BODY
        self.up_state = UP_NONE
        self.resp_state = RESP_NONE
        self.t_sent = 0.0
        self.t_last_up = 0.0
        self.resp: ResponseFraming | None = None
        self.out_chunked = False
        self.close_after = framing is None or not framing.keep_alive
        self.discarded = 0
        self.reject: tuple[int, str] | None = None
        self.upgrade_buf = b""
        self.retried = 0                           # times the request was sent to the app again
        self.up_head = b""
        self.connect_task: asyncio.Task | None = None
        self.finished = False

    def set_target(self, target: str) -> None:
        Exchange.set_target(self, target)
        self.burl = target.encode("ascii")  # what _upstream_head puts on the app's request line

    # ---- moves (the table lookup inline, not a call: these run several times per exchange)
    def _req(self, new: int) -> None:
        if not (_REQ_MOVES[self.req_state] >> new) & 1:
            check_move(0, self.req_state, new)
        self.req_state = new

    def _up(self, new: int) -> None:
        if not (_UP_MOVES[self.up_state] >> new) & 1:
            check_move(1, self.up_state, new)
        self.up_state = new

    def _resp(self, new: int) -> None:
        if not (_RESP_MOVES[self.resp_state] >> new) & 1:
            check_move(2, self.resp_state, new)
        self.resp_state = new

    def state_names(self) -> tuple[str, str, str]:
        """(request, upstream, response) state names, for logs and tests."""
        return (STATE_NAMES[0][self.req_state], STATE_NAMES[1][self.up_state],
                STATE_NAMES[2][self.resp_state])

    # ---- from the client connection
    def start(self) -> None:
        """This exchange's turn: request hooks, then a reply or the app."""
        if self.reject is not None:
            status, message = self.reject
            self.send_error(status, message)
            return
        hooks = self.server.active_hooks
        self.hooks = hooks
        if hooks is not None and hooks.on_request is not None:
            r = request_phase(hooks, self, self.server.on_hook_error)
            if r is None:
                self._clean_request_headers()  # a hook had the headers
            elif r is not NOT_CALLED:
                if type(r) is Reply:
                    self.send_reply(r)
                    return
                asyncio.ensure_future(self._await_request_hooks(r))
                return
        self._forward()

    async def _await_request_hooks(self, pending: Any) -> None:
        try:
            r = await pending
        except Exception:
            self.server.hook_failed(self.hooks.on_request, self)  # type: ignore[union-attr]
            r = None
        if self.finished or self.conn.closed:
            return
        if r is not None:
            self.send_reply(r)
        else:
            self._clean_request_headers()
            self._forward()
        self.conn.flush()

    def _clean_request_headers(self) -> None:
        """After a hook had the request headers: framing stays the tunnel's; forwarding headers
        are read again from what the hook left."""
        try:
            headers = clean_headers(self.request_headers)
        except Exception:
            self.server.hook_failed(self.hooks.on_request, self)  # type: ignore[union-attr]
            headers = list(self.framing.headers)  # type: ignore[union-attr]
        framing = self.framing
        if framing.content_length >= 0:  # type: ignore[union-attr]
            headers.append((b"Content-Length", b"%d" % framing.content_length))  # type: ignore[union-attr]
        self.request_headers = headers
        framing.has_xff = self.request_header(b"x-forwarded-for") is not None  # type: ignore[union-attr]
        framing.has_xfp = self.request_header(b"x-forwarded-proto") is not None  # type: ignore[union-attr]
        rid = self.request_header(b"x-request-id")
        framing.request_id = rid  # type: ignore[union-attr]
        if rid is not None:
            self.request_id = rid.decode("latin-1")

    def request_body(self, body: bytes) -> None:
        self.bytes_in += len(body)
        st = self.up_state
        if st >= UP_WAITING:
            if self.up is not None and st != UP_DONE:
                self.up.write(chunk(body) if self.framing.chunked else body)  # type: ignore[union-attr]
            return  # else the app is gone: the rest is read and dropped
        if self.resp_state != RESP_NONE or self.reject is not None:
            return  # answered already: the body is read and dropped
        if self.body_buf is None:
            self.body_buf = []
        self.body_buf.append(body)
        self.buffered += len(body)
        if self.buffered > BUFFER_HIGH:
            self.conn.pause_for_buffer()

    def request_done(self) -> None:
        if self.req_state == REQ_DONE:
            return
        self._req(REQ_DONE)
        if self.up is not None and self.framing.chunked and UP_WAITING <= self.up_state < UP_DONE:  # type: ignore[union-attr]
            self.up.write(LAST_CHUNK)
        if self.conn.active is self and self.resp_state >= RESP_DONE:
            self._maybe_finish()

    def client_lost(self) -> None:
        """The client connection is gone: the exchange ends here (counted as client_closed)."""
        if self.finished:
            return
        self.error = self.error or "client_closed"
        if self.resp_state < RESP_DONE:
            self._resp(RESP_ABORTED)
        self._finish()

    # ---- getting the app
    def _forward(self) -> None:
        if self.server.pool is None:
            self.send_error(404, "nothing here")  # no app behind this server (the admin port)
            return
        self.up_head = self._upstream_head()
        conn = self.server.pool.take_idle()
        if conn is not None:
            self._attach(conn)
        else:
            self._up(UP_CONNECTING)
            self.connect_task = asyncio.ensure_future(self._connect())

    def _upstream_head(self) -> bytes:
        """The request head for the app: the client's fields, then this hop's, joined once."""
        framing = self.framing
        headers = self.request_headers
        if framing.has_xff:
            # The received value plus this hop, in place.
            client_b = self.conn.client_b
            headers = [(k, v + b", " + client_b) if k.lower() == b"x-forwarded-for" else (k, v)
                       for k, v in headers]
            xff = b""
        else:
            xff = self.conn.xff_line
        parts = [self.bmethod, b" ", self.burl, b" HTTP/1.1\r\n"]
        add_headers(parts, headers)
        parts.append(xff)
        if not framing.has_xfp:
            parts.append(b"X-Forwarded-Proto: http\r\n")
        if framing.request_id is None:
            parts += (b"X-Request-Id: ", self.request_id.encode("latin-1"), b"\r\n")
        if framing.host is None:
            # An HTTP/1.0 request without Host goes on as HTTP/1.1, which must have one (RFC 9112
            # §3.2): the app's own address, as nginx sends $proxy_host.
            pool = self.server.pool
            parts.append(b"Host: %s:%d\r\n" % (pool.host.encode("latin-1"), pool.port))
        if framing.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if framing.upgrade is not None:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", framing.upgrade, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _connect(self) -> None:
        srv = self.server
        try:
            up = await srv.pool.connect()
        except UpstreamError as e:
            self.connect_task = None
            srv.stats["upstream_errors"] += 1
            self.error = "upstream_connect"
            if not self.conn.closed and not self.finished:
                self.send_error(502, str(e))
                self.conn.flush()
            return
        except Exception:  # a bug: keep its traceback, but never leave the client hanging
            self.connect_task = None
            log.exception("connecting to the app failed unexpectedly (request %s)", self.request_id)
            self.error = "internal"
            if not self.conn.closed and not self.finished:
                self.send_error(502, "internal error while connecting to the app")
                self.conn.flush()
            return
        self.connect_task = None
        if self.conn.closed or self.finished or self.up_state != UP_CONNECTING:
            srv.pool.release(up)
            return
        self._attach(up)

    def _attach(self, up: UpstreamConnection) -> None:
        self._up(UP_WAITING)
        self.up = up
        up.owner = self
        framing = self.framing
        data = self.up_head
        if self.body_buf:
            body = b"".join(self.body_buf)
            self.body_buf = None
            self.buffered = 0
            data += chunk(body) if framing.chunked else body  # type: ignore[union-attr]
            if self.req_state == REQ_DONE and self.hooks is not None and len(body) <= self.hooks.keep_bodies:
                self.body_buf = [body]  # kept: for a Retry, and for ex.kept_body()
        if self.req_state == REQ_DONE and framing.chunked:  # type: ignore[union-attr]
            data += LAST_CHUNK
        self.t_sent = self.t_last_up = _monotonic()
        up.send(data, head_request=self.bmethod == b"HEAD")
        conn = self.conn
        if conn.write_paused:
            up.pause_reading()
        conn.resume_after_buffer()

    def _release_upstream(self, reusable: bool) -> None:
        """The app's connection is done with: back to the pool when it can carry another exchange."""
        up = self.up
        if self.up_state != UP_DONE:
            self._up(UP_DONE)
        if up is None:
            return
        self.up = None
        pool = self.server.pool
        if reusable and not up.closed:
            pool.release(up)
        else:
            pool.discard(up)

    # ---- events from the upstream connection (UpstreamOwner)
    def up_headers(self, status: int, keep_alive: bool, headers: list[tuple[bytes, bytes]],
                   hop: list[tuple[bytes, bytes]], content_length: int) -> None:
        up = self.up
        self.t_last_up = up.last_read  # type: ignore[union-attr]
        if status < 200:
            if status < 100:
                # llhttp reads any digits ("HTTP/1.1 20", "000"); RFC 9110 §15 has three, 1xx-5xx.
                self.up_failed(f"the app sent an invalid status code {status}")
                return
            if status != 101:
                # Interim responses (100 Continue, 103 Early Hints) go to HTTP/1.1 clients as they are.
                if self.version == "1.1" and self.up_state == UP_WAITING:
                    parts = [status_line(status)]
                    add_headers(parts, headers)
                    parts.append(b"\r\n")
                    self.conn.out.append(b"".join(parts))
                return
            if self.framing.upgrade is None:  # type: ignore[union-attr]
                # RFC 9110 §15.2.2: only to a protocol the client asked for. Relaying it would
                # leave the client waiting for a response that will never come.
                self.up_failed("the app switched protocols without an upgrade request")
                return
        try:
            rf = check_response(keep_alive, status, headers, hop, content_length)
        except FramingError as e:
            self.up_failed(e.message)
            return
        self.resp = rf
        head_only = self.bmethod == b"HEAD" or status == 204 or status == 304
        self.status = status
        self.response_headers = rf.headers
        self.t_response = self.t_last_up
        if self.bmethod == b"HEAD":
            up.head_done_for_head_request()  # type: ignore[union-attr]
        hooks = self.hooks
        if hooks is not None and hooks.on_response_head is not None:  # most exchanges: no call at all
            reply = response_phase(hooks, self, self.server.on_hook_error)
            if reply is None:
                self._clean_response_headers(rf)  # a hook had the headers
            elif reply is not NOT_CALLED:
                if type(reply) is not Retry:
                    self._up(UP_DISCARD)
                    self.send_reply(reply)
                    if head_only:  # no app body will follow: the exchange ends with the reply
                        self._release_upstream(rf.keep_alive and self.req_state == REQ_DONE)
                        self._maybe_finish()
                    return
                if self._resend():
                    return
                self._clean_response_headers(rf)  # not possible: as if the hook returned None
        self._write_response_head(rf)
        if head_only:
            self._release_upstream(rf.keep_alive and self.req_state == REQ_DONE)
            self._maybe_finish()

    def _clean_response_headers(self, rf: ResponseFraming) -> None:
        """After a hook had the response headers: the body's framing stays what the app sent."""
        try:
            headers = clean_headers(self.response_headers)
        except Exception:
            self.server.hook_failed(self.hooks.on_response_head, self)  # type: ignore[union-attr]
            headers = [(k, v) for k, v in rf.headers if k.lower() != b"content-length"]
        if rf.content_length >= 0 and not rf.chunked:
            headers.append((b"Content-Length", b"%d" % rf.content_length))
        self.response_headers = headers

    def _write_response_head(self, rf: ResponseFraming) -> None:
        status = self.status
        conn = self.conn
        parts = [status_line(status)]
        add_headers(parts, self.response_headers)
        no_body = self.bmethod == b"HEAD" or status == 204 or status == 304 or status == 101
        client11 = self.version == "1.1"
        if status == 101:
            parts.append(b"Connection: Upgrade\r\n")
        elif not no_body:
            if rf.chunked or rf.content_length < 0:
                if client11:
                    parts.append(b"Transfer-Encoding: chunked\r\n")
                    self.out_chunked = True
                else:
                    self.close_after = True  # HTTP/1.0: the body ends when we close
        elif rf.chunked and self.bmethod == b"HEAD" and client11:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if status != 101:
            if self.close_after or conn.draining or self.server.draining:
                self.close_after = True
                parts.append(b"Connection: close\r\n")
            elif not client11:
                parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        conn.out.append(b"".join(parts))
        if status == 101:
            self._resp(RESP_TUNNEL)
        else:
            self._resp(RESP_APP)
            if no_body:
                self._resp(RESP_DONE)
            else:
                self._up(UP_BODY)

    def up_body(self, data: bytes) -> None:
        if self.up_state == UP_DISCARD:
            self.discarded += len(data)
            if self.discarded > _DISCARD_MAX and self.up is not None:
                self._release_upstream(False)
                self._maybe_finish()
            return
        self.bytes_out += len(data)
        out = self.conn.out
        out.append(chunk(data) if self.out_chunked else data)
        if len(out) > 64:
            self.conn.flush()

    def up_complete(self) -> None:
        if self.up is None:
            return
        rf = self.resp
        if self.up_state == UP_BODY:
            if self.out_chunked:
                self.conn.out.append(LAST_CHUNK)
            self._resp(RESP_DONE)
            if rf.keep_alive and self.req_state == REQ_DONE:  # type: ignore[union-attr]
                # The common end of an exchange.
                up = self.up
                self.up = None
                self._up(UP_DONE)
                self.server.pool.release(up)
                self._finish()
                return
        self._release_upstream(rf is not None and rf.keep_alive and self.req_state == REQ_DONE)
        self._maybe_finish()

    def up_eof(self) -> None:
        """The app closed its side: that ends a response framed by close, and nothing else."""
        rf = self.resp
        if rf is None or self.up_state == UP_TUNNEL:
            return
        if not rf.chunked and rf.content_length < 0 and self.up_state in (UP_BODY, UP_DISCARD):
            rf.keep_alive = False
            self.up_complete()
            self.conn.flush()

    def up_flush(self) -> None:
        if self.conn.out:
            self.conn.flush()

    def up_upgrade(self, rest: bytes) -> None:
        if self.up is None or self.resp_state != RESP_TUNNEL:
            return
        self._up(UP_TUNNEL)
        self.upgraded = True
        self.conn.become_tunnel(self.up, rest, self.upgrade_buf)
        self.upgrade_buf = b""

    def up_pause_writing(self) -> None:
        self.conn.pause_for_upstream()

    def up_resume_writing(self) -> None:
        self.conn.resume_for_upstream()

    def up_failed(self, message: str) -> None:
        self.server.stats["upstream_errors"] += 1
        self.error = self.error or "upstream_protocol"
        log.warning("%s %s: %s (request %s)", self.method, self.target, message, self.request_id)
        self._release_upstream(False)
        rs = self.resp_state
        if rs == RESP_NONE:
            self.send_error(502, None)
        elif rs in (RESP_APP, RESP_TUNNEL):
            self.conn.abort()  # the client must not take a broken body for a whole one
        else:
            self._maybe_finish()  # a reply is (being) sent: the app's failure changes nothing

    def up_lost(self, answered: bool, reused: bool) -> None:
        self.up = None
        st = self.up_state
        if st == UP_TUNNEL:
            self._up(UP_DONE)
            self._resp(RESP_DONE)
            self._finish()
            self.conn.close()
            return
        if st in (UP_DISCARD, UP_DONE):
            if st != UP_DONE:
                self._up(UP_DONE)
            self._maybe_finish()
            return
        if st == UP_WAITING:
            # A pooled connection the app had already closed: retry once when nothing is lost by it.
            if reused and not answered and not self.retried and self.bytes_in == 0 and self.bmethod in _IDEMPOTENT:
                self.retried = 1
                self._up(UP_CONNECTING)
                self._connect_again()
                return
            self.server.stats["upstream_errors"] += 1
            self.error = "upstream_closed"
            self._up(UP_DONE)
            self.send_error(502, None)
            return
        # UP_BODY: broken mid-body. The client must see a truncated response, not a complete one.
        self.error = "upstream_closed"
        self.server.stats["upstream_errors"] += 1
        self._up(UP_DONE)
        self.conn.flush()
        self.conn.abort()

    def _connect_again(self) -> None:
        up = self.server.pool.take_idle()
        if up is not None:
            self._attach(up)
        else:
            self.connect_task = asyncio.ensure_future(self._connect())

    def can_resend(self) -> bool:
        """Whether the request can go to the app again now (a response hook's Retry): nothing of a
        response went to the client and the app can be given the whole request once more."""
        if (self.resp_state != RESP_NONE or self.finished or self.replaced or self.conn.closed
                or self.retried >= MAX_RESENDS or self.framing is None or self.framing.upgrade is not None):
            return False
        if self.t_sent == 0.0:
            return True  # the app never got any of it: the body so far is still in body_buf
        return self.req_state == REQ_DONE and (self.bytes_in == 0 or self.body_buf is not None)

    def kept_body(self) -> bytes | None:
        """The body, when it was complete and kept as the app was asked (Hooks.keep_bodies)."""
        if self.req_state != REQ_DONE:
            return None
        if self.bytes_in == 0:
            return b""
        if self.t_sent == 0.0 or self.body_buf is None:
            return None  # answered before the app was asked (the body was dropped), or not kept
        return self.body_buf[0] if len(self.body_buf) == 1 else b"".join(self.body_buf)

    def _resend(self) -> bool:
        """A response hook returned Retry: drop this answer (and its connection) and ask the app
        again. False when the request cannot be sent again (then the answer goes out)."""
        if not self.can_resend():
            return False
        self.retried += 1
        up = self.up
        if up is not None:
            self.up = None
            self.server.pool.discard(up)  # its unread answer goes with it
        self.status = 0
        self.response_headers = None
        self.resp = None
        self.t_response = 0.0
        self.error = None
        self._up(UP_CONNECTING)
        self._connect_again()
        return True

    # ---- replies made here: hooks' replies and the sidecar's own errors
    def send_reply(self, reply: Reply) -> None:
        """Answer with `reply` instead of the app (the app's answer, if any, is read and dropped)."""
        srv = self.server
        conn = self.conn
        srv.stats["replies"] += 1
        self.replaced = True
        status = reply.status
        self.status = status
        self.t_response = _monotonic()
        try:
            headers = clean_headers(reply.headers)
        except TypeError:
            log.exception("a reply's headers are not (bytes, bytes) pairs (request %s)", self.request_id)
            headers = []
        self.response_headers = headers
        if self.up_state == UP_NONE:
            self._up(UP_DONE)  # answered before the app was asked
        if self.req_state != REQ_DONE:
            self.close_after = True  # the rest of the request body is not worth reading
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
                self.error = self.error or "reply_file"
                self.send_error(500, None)
                return
        no_body = self.bmethod == b"HEAD" or status == 204 or status == 304 or status < 200
        if self.close_after or conn.draining or srv.draining:
            self.close_after = True
        head = replies.reply_head(status, reply.reason.encode("latin-1") if reply.reason else None, headers,
                                  -1 if status == 204 or status == 304 or status < 200 else size,
                                  self.close_after, self.version != "1.1")
        self._resp(RESP_REPLY)
        if no_body or fd is None:
            if fd is not None:
                os.close(fd)
            if no_body:
                conn.out.append(head)
            else:
                conn.out.append(head + reply.body)
                self.bytes_out += size
            self._resp(RESP_DONE)
            self._maybe_finish()
            return
        conn.out.append(head)
        conn.flush()
        asyncio.ensure_future(self._stream_file(fd, size))

    async def _stream_file(self, fd: int, size: int) -> None:
        conn = self.conn
        try:
            left = size
            while left > 0 and not conn.closed:
                if conn.write_paused:
                    await conn.writable()
                    continue
                data = os.read(fd, min(_FILE_CHUNK, left))
                if not data:
                    break  # the file shrank: the client sees a short body and the connection closes
                left -= len(data)
                self.bytes_out += len(data)
                conn.transport.write(data)
            if left > 0:
                self.close_after = True
                self.error = self.error or "reply_file_short"
        finally:
            os.close(fd)
        if conn.closed or self.finished:
            return
        self._resp(RESP_DONE)
        self._maybe_finish()

    def send_error(self, status: int, detail: str | None) -> None:
        """The sidecar's own error answer. `detail` (the cause) goes to the log; the client gets
        the general wording of replies.MESSAGES, unless a response hook replaces the page."""
        self.error = self.error or _ERROR_NAMES.get(status, f"http_{status}")
        if status >= 500 and detail is not None:
            log.warning("%s %s -> %d: %s (request %s)", self.method, self.target, status, detail,
                        self.request_id)
        if self.up is not None or self.up_state not in (UP_NONE, UP_DONE):
            if self.connect_task is not None:
                self.connect_task.cancel()
                self.connect_task = None
            self._release_upstream(False)
        message = replies.MESSAGES.get(status, "") if status >= 500 or detail is None else detail
        reply = Reply(status, [(b"Content-Type", b"text/plain; charset=utf-8")], replies.error_body(status, message))
        hooks = self.hooks
        if status >= 500 and hooks is not None:
            # Rules may replace the sidecar's own 502/504 as they would the app's (a friendly 5xx
            # page), or ask for the request to be sent again (Retry, e.g. after a connect failure).
            self.status = status
            self.response_headers = reply.headers
            custom = response_phase(hooks, self, self.server.on_hook_error)
            if custom is not None and custom is not NOT_CALLED:
                if type(custom) is not Retry:
                    reply = custom
                elif self._resend():
                    return
        if status in (400, 408, 414, 431) or self.req_state != REQ_DONE:
            self.close_after = True
        self.send_reply(reply)

    # ---- the end
    def _maybe_finish(self) -> None:
        if self.finished or self.resp_state < RESP_DONE:
            return
        if self.up_state != UP_DONE and self.up_state != UP_NONE:
            return  # the app's answer is still being read (and dropped)
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        now = _monotonic()
        self.t_end = now
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        if self.up_state != UP_DONE and self.up_state != UP_NONE:
            self._release_upstream(False)
        srv = self.server
        srv.stats["in_flight"] -= 1
        conn = self.conn
        if conn.out and not conn.closed:
            conn.flush()
        hooks = self.hooks
        if hooks is not None and hooks.on_complete is not None:
            complete_phase(hooks, self, srv.on_hook_error)
        if srv.access_log:
            srv.log_access(self, now)
        conn.exchange_finished(self)

    def check_timeout(self, now: float) -> bool:
        """Timeouts of the app's side; True when the exchange was ended by one."""
        lim = self.server.limits
        conn = self.conn
        up = self.up
        if up is None:
            return False
        if self.up_state == UP_WAITING:
            if now - self.t_sent > lim.upstream_timeout:
                self.server.stats["upstream_timeouts"] += 1
                self.error = "upstream_timeout"
                self.send_error(504, f"no response head within {lim.upstream_timeout:g}s")
                conn.flush()
                return True
        elif (not conn.write_paused and self.up_state != UP_TUNNEL
              and now - max(self.t_last_up, up.last_read) > lim.upstream_timeout):
            self.error = "upstream_timeout"
            conn.abort()  # stalled mid-body
            return True
        return False
