"""The `requests` target: hostile client byte streams through a real ProxyServer on loopback to a real
in-process app, judged by h11.

Oracle: every request the app receives must be one that h11 also parses from the client's bytes, in
order, with the same method, target, headers (less this hop's own: hop-by-hop fields, those named in
Connection, X-Forwarded-*, a generated X-Request-Id) and body. Whatever the proxy refuses is fine.
Plus: every input ends (no hang), nothing is left open or in flight, and the proxy still serves.
Clients run concurrently, each from its own loopback address (127.0.0.x), which the app reads back
from X-Forwarded-For to know whose request it got.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from dataclasses import dataclass

import h11

from decorator.proxy.http import HOP_BY_HOP
from decorator.proxy.limits import Limits
from decorator.proxy.tunnel import ProxyServer
from fuzz.common import client_socket_options, HTTP_TOKENS, ErrorLog, Result, campaign, corpus, mutated, settle, splits

BATCH = 48                      # inputs per hypothesis example, run concurrently (one connection each)
INPUT_TIMEOUT = 10.0            # an input not answered and closed in this long is a hang
_BIG = 1 << 20                  # h11's incomplete-event limit: above the proxy's own head limit


# ----------------------------------------------------------------------------- the reference: h11
@dataclass(frozen=True)
class Req:
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]   # compared fields, lower-case names, in order
    body: bytes


def _connection_named(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for n, v in headers:
        if n == b"connection":
            named.update(t.strip(b" \t") for t in v.lower().split(b","))
    return named


_NOT_COMPARED = HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id"}


def compared(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    named = _connection_named(headers)
    return tuple((n, v) for n, v in headers if n not in _NOT_COMPARED and n not in named)


def origin_form(target: bytes) -> bytes:
    low = target[:8].lower()
    if low.startswith((b"http://", b"https://")):
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        return rest[slash:] if slash >= 0 else b"/"
    return target


_SPACES = re.compile(rb"  +")


def _tolerated(data: bytes) -> bytes:
    """Two leniencies of llhttp that h11 lacks, both harmless here because the proxy writes its own
    request line: empty lines (CR, LF) before a request line are skipped (RFC 9112 §2.2 says a
    server SHOULD), and runs of spaces in the request line read as one (§3 allows splitting on
    whitespace). Everything else is h11's strict reading."""
    data = data.lstrip(b"\r\n")
    end = data.find(b"\n")
    line = data[:end] if end >= 0 else data
    if b"  " in line:
        data = _SPACES.sub(b" ", line) + data[len(line):]
    return data


def reference(data: bytes) -> list[Req]:
    """The requests h11 reads from a client's bytes, in order, up to the first it cannot read.

    h11 stops after one HTTP/1.0 request even with `Connection: keep-alive`; the proxy keeps such
    connections open (RFC 9112 §9.3), so each request is read by a fresh h11 connection from the
    bytes the previous one left, while the previous request was a keep-alive one."""
    out: list[Req] = []
    while data:
        data = _tolerated(data)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_BIG)
        conn.receive_data(data)
        conn.receive_data(b"")
        req = None
        body = bytearray()
        try:
            while True:
                ev = conn.next_event()
                if isinstance(ev, h11.Request):
                    req = ev
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
                else:  # NEED_DATA, PAUSED, ConnectionClosed: no complete request
                    return out
        except h11.RemoteProtocolError:
            return out
        headers = [(n.lower(), v) for n, v in req.headers.raw_items()]
        out.append(Req(req.method, origin_form(req.target), compared(headers), bytes(body)))
        tokens = _connection_named(headers)
        upgrade = b"upgrade" in tokens and any(n == b"upgrade" for n, _ in headers)  # both, or no upgrade
        if req.method == b"CONNECT" or upgrade or b"close" in tokens:
            return out
        if req.http_version == b"1.0" and b"keep-alive" not in tokens:
            return out
        data = conn.trailing_data[0]
    return out


def _added_host(got: Req, ref: Req, app_host: bytes) -> bool:
    """The one documented difference: an HTTP/1.0 request without Host goes on as HTTP/1.1, with
    the app's address as its Host (RFC 9112 §3.2)."""
    if any(n == b"host" for n, _ in ref.headers):
        return False
    return got == Req(ref.method, ref.target, ((b"host", app_host), *ref.headers), ref.body) or \
        got == Req(ref.method, ref.target, (*ref.headers, (b"host", app_host)), ref.body)


# ----------------------------------------------------------------------------- the app
class App(asyncio.Protocol):
    """A strict app: h11 reads what the proxy sends; each complete request is recorded under the
    client address the proxy appended to X-Forwarded-For, and answered 200 `ok` (keep-alive)."""

    def __init__(self, seen: dict[bytes, list[Req]], problems: list[str]) -> None:
        self.seen = seen
        self.problems = problems
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_BIG)
        self.transport: asyncio.Transport | None = None
        self.req: h11.Request | None = None
        self.body = bytearray()
        self.raw = bytearray()   # the last bytes received, to show in a finding

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.raw += data
        if len(self.raw) > 4096:
            del self.raw[:-1024]
        conn = self.conn
        conn.receive_data(data)
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                    return
                if isinstance(ev, h11.Request):
                    self.req = ev
                    self.body = bytearray()
                elif isinstance(ev, h11.Data):
                    self.body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    self._answer()
        except h11.RemoteProtocolError as e:
            # The proxy wrote something a strict parser refuses: always a finding.
            self.problems.append(f"the app could not parse what the proxy sent ({e}): {bytes(self.raw[-300:])!r}")
            self.transport.abort()  # type: ignore[union-attr]

    def _answer(self) -> None:
        req = self.req
        headers = [(n.lower(), v) for n, v in req.headers.raw_items()]  # type: ignore[union-attr]
        xff = [v for n, v in headers if n == b"x-forwarded-for"]
        who = xff[-1].rsplit(b",", 1)[-1].strip() if xff else b"?"
        self.seen.setdefault(who, []).append(Req(req.method, req.target, compared(headers), bytes(self.body)))
        conn = self.conn
        data = conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"2")]))
        if req.method != b"HEAD":  # type: ignore[union-attr]
            data += conn.send(h11.Data(data=b"ok"))
        data += conn.send(h11.EndOfMessage())
        self.transport.write(data)  # type: ignore[union-attr]
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            self.transport.close()  # type: ignore[union-attr]
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            self.transport.close()  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- hostile requests
_METHODS = [b"GET", b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"get", b"G\x00T", b"CONNECT",
            b"M-SEARCH", b"GET\t", b"", b"PRI", b"X" * 40]
_TARGETS = [b"/", b"/a/b?c=d&e", b"/%00", b"/caf\xc3\xa9", b"http://h/x", b"HTTPS://h", b"*", b"x", b"//a", b"/a b",
            b"/a\tb", b"/?" + b"q" * 300, b"/\x7f", b"/#f"]
_VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/11", b"http/1.1", b"HTTP/1.1 ", b""]
_NAMES = [b"Host", b"host", b"HOST", b"X-A", b"Accept", b"Cookie", b"X-Forwarded-For", b"X-Request-Id", b"Keep-Alive",
          b"TE", b"Trailer", b"Proxy-Connection", b"Upgrade", b"Expect", b"Content-Length", b"Transfer-Encoding",
          b"Connection", b"X A", b"X:A", b"", b"X-\xff", b"X-\x00", b"Content-Length ", b" Host", b"X-A\t"]
_VALUES = [b"x", b"", b" padded ", b"a, b", b"\t", b"\xff\xfe", b"a\x00b", b"a\rb", b"a\nb", b"a\r\n b", b"x" * 200,
           b"chunked", b"close", b"keep-alive", b"X-A", b"upgrade", b"100-continue", b"5", b"0", b"-1", b"+5",
           b"5, 5", b"5,6", b"0x5", b"99999999999999999999", b"gzip, chunked", b"chunked, gzip", b"identity",
           b"Chunked", b" chunked", b"chunked\x00", b"1.2.3.4", b"websocket"]
_EOLS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n", b" \r\n"]


def _chunked_body(r: random.Random, eol: bytes) -> bytes:
    parts = []
    for _ in range(r.randint(0, 3)):
        data = r.randbytes(r.randint(0, 20))
        size = r.choice([b"%x" % len(data)] * 6 + [b"%X" % len(data), b"%x;ext=1" % len(data),
                                     b"%x " % len(data), b"-1", b"0x%x" % len(data), b"%x\x00" % len(data),
                                     b"%x" % (len(data) + 1), b"ffffffffffffffffff"])
        parts.append(size + eol + data + r.choice([eol, eol, b"", b"x\r\n"]))
    parts.append(b"0" + eol)
    for _ in range(r.randint(0, 2)):
        parts.append(r.choice(_NAMES) + b": " + r.choice(_VALUES) + eol)
    parts.append(eol)
    return b"".join(parts)


def one_request(r: random.Random) -> bytes:
    """A request from a grammar with hostile choices: every field drawn from a list of plausible
    and broken spellings, framing headers correct most of the time and contradictory some."""
    eol = r.choice(_EOLS)
    line = r.choice(_METHODS) + b" " + r.choice(_TARGETS)
    version = r.choice(_VERSIONS)
    if version:
        line += b" " + version
    head = [line]
    if r.randint(0, 9):
        head.append(b"Host: example.test")
    body = b""
    framing = r.randint(0, 9)
    if framing < 3:
        body = r.randbytes(r.randint(0, 40))
        head.append(b"Content-Length: %d" % len(body))
    elif framing < 5:
        body = _chunked_body(r, eol)
        head.append(b"Transfer-Encoding: chunked")
    for _ in range(r.randint(0, 5)):
        name = r.choice(_NAMES)
        sep = r.choice([b": ", b": ", b":", b" : ", b":\t", b": \t"])
        head.append(name + sep + r.choice(_VALUES))
    if r.randint(0, 6) == 0:
        head.append(b" folded continuation")  # obs-fold after the last field
    if r.randint(0, 4) == 0:
        i = r.randint(1, len(head) - 1) if len(head) > 1 else 0
        head.insert(i, r.choice(head))  # a duplicate field (or request line)
    if framing == 9:
        body = r.randbytes(r.randint(0, 10))  # a body no field announces
    return eol.join(head) + eol + eol + body


def client_input(r: random.Random, seeds: list[bytes]) -> tuple[bytes, list[bytes]]:
    kind = r.randint(0, 9)
    if kind < 5:
        data = b"".join(one_request(r) for _ in range(r.randint(1, 4)))
        if r.randint(0, 4) == 0:
            data = mutated(r, [data], HTTP_TOKENS, 3)
    elif kind < 9 and seeds:
        data = mutated(r, seeds, HTTP_TOKENS)
    else:
        data = r.randbytes(r.randint(0, 200))
    return data, splits(r, data)


# ----------------------------------------------------------------------------- the campaign
class Harness:
    """A proxy and its app on loopback, and the clients that send inputs through them."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.seen: dict[bytes, list[Req]] = {}
        self.problems: list[str] = []
        self.proxy: ProxyServer | None = None
        self.app_server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.app_server = await loop.create_server(lambda: App(self.seen, self.problems), "127.0.0.1", 0)
        app_port = self.app_server.sockets[0].getsockname()[1]
        self.app_host = b"127.0.0.1:%d" % app_port
        # Short timeouts: an input that stalls is a hang after INPUT_TIMEOUT, and none may reach it.
        self.proxy = ProxyServer(("127.0.0.1", app_port), Limits(header_timeout=3, body_timeout=3,
                                                                 upstream_timeout=5, idle_timeout=5))
        await self.proxy.start("127.0.0.1", 0)

    async def stop(self) -> None:
        await self.proxy.shutdown(1.0)  # type: ignore[union-attr]
        self.app_server.close()  # type: ignore[union-attr]

    async def send(self, source: str, parts: list[bytes]) -> bytes | None:
        """Write the parts (separate sends), half-close, read to EOF. None: no EOF in time."""
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_socket_options(s)
        try:
            s.bind((source, 0))
            await loop.sock_connect(s, ("127.0.0.1", self.proxy.port))  # type: ignore[union-attr]
            got = bytearray()
            try:
                for i, p in enumerate(parts):
                    if i:
                        await asyncio.sleep(0)  # let the proxy read what came so far
                    await loop.sock_sendall(s, p)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the proxy closed early (it refused the stream): read what it said
            async with asyncio.timeout(INPUT_TIMEOUT):
                while True:
                    try:
                        data = await loop.sock_recv(s, 65536)
                    except ConnectionError:
                        break
                    if not data:
                        break
                    got += data
            return bytes(got)
        except TimeoutError:
            return None
        finally:
            s.close()

    async def batch(self, inputs: list[tuple[bytes, list[bytes]]]) -> None:
        self.seen.clear()
        sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(len(inputs))]
        answers = await asyncio.gather(*(self.send(src, parts) for src, (_, parts) in zip(sources, inputs)))
        await self.settle()
        res = self.result
        for src, (data, _), answer in zip(sources, inputs, answers):
            res.inputs += 1
            if answer is None:
                res.fail("hang: no end of the answer within %.0fs" % INPUT_TIMEOUT, data)
                continue
            got = self.seen.pop(src.encode(), [])
            if not got:
                continue
            ref = reference(data)
            for i, r in enumerate(got):
                if i >= len(ref):
                    res.fail(f"the app received request {i + 1} ({r.method!r} {r.target!r}) that h11 does not "
                             f"read from the client's bytes", data)
                    break
                if r != ref[i] and not _added_host(r, ref[i], self.app_host):
                    res.fail(f"request {i + 1} differs from h11's reading: app {r} vs h11 {ref[i]}", data)
                    break
        if self.seen:
            res.fail(f"the app received requests from unknown clients: {sorted(self.seen)}", b"")
        for p in self.problems:
            res.fail(p, b"")
        self.problems.clear()
        await self.still_serves()

    async def settle(self) -> None:
        await settle(self.proxy, self.result)
        for _ in range(3):
            await asyncio.sleep(0)

    async def still_serves(self) -> None:
        good = b"GET /still-serving HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await self.send("127.0.0.254", [good])
        self.seen.pop(b"127.0.0.254", None)
        if not answer or not answer.startswith(b"HTTP/1.1 200 "):
            self.result.fail(f"the proxy stopped serving: {answer[:80] if answer else answer!r}", b"")


def run(inputs: int, seed: int | None = None) -> Result:
    result = Result("requests")
    seeds = corpus("requests")
    loop = new_loop()
    harness = Harness(result)
    with ErrorLog(result):
        loop.run_until_complete(harness.start())
        try:
            # The corpus itself first, whole and unsplit, then the campaign.
            for i in range(0, min(len(seeds), inputs), BATCH):
                loop.run_until_complete(harness.batch([(s, [s]) for s in seeds[i:min(i + BATCH, inputs)]]))
            campaign(result, inputs, seed, BATCH, lambda r: client_input(r, seeds),
                     lambda batch: loop.run_until_complete(harness.batch(batch)))
        finally:
            loop.run_until_complete(harness.stop())
            loop.close()
    result.seconds = time.monotonic() - result.t0
    return result


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def replay(inputs: list[bytes]) -> Result:
    """Judge these inputs, each sent whole and also split at every 7th byte."""
    result = Result("requests")
    loop = new_loop()
    harness = Harness(result)
    with ErrorLog(result):
        loop.run_until_complete(harness.start())
        try:
            cases = [(d, [d]) for d in inputs] + [(d, [d[i:i + 7] for i in range(0, len(d), 7)]) for d in inputs]
            for i in range(0, len(cases), BATCH):
                loop.run_until_complete(harness.batch(cases[i:i + BATCH]))
        finally:
            loop.run_until_complete(harness.stop())
            loop.close()
    return result
