"""Strict framing (no request smuggling), limits, upstream failures and timeouts, over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from tests.proxy.conftest import closed_after, open_client, read_response

SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
                 b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    "duplicate-cl-same": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "duplicate-cl-different": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    "cl-negative": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "cl-plus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "cl-hex": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
    "cl-overflow": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "te-gzip": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "te-gzip-then-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-not-final": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te-xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\n",
    "te-in-http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-obs-fold": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "bare-lf-request-line": b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    "bare-lf-header": b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    "bare-cr-header": b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"ffffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
    "chunk-size-space": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    "chunk-missing-crlf": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
    "chunk-lf-only": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    "missing-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad-method-token": b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n",
    "http-0.9": b"GET /\r\n\r\n",
    "bad-version": b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    "upgrade-with-body": b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Content-Length: 3\r\n\r\nabc",
    "target-not-path": b"GET example.com HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_ambiguous_or_malformed_framing_rejected(name, upstream, proxy):
    r, w = await open_client(proxy.port)
    w.write(SMUGGLING[name])
    resp = await asyncio.wait_for(read_response(r), 5)
    assert resp.status == 400, (name, resp)
    assert resp.header("connection") == "close"
    assert await closed_after(r)
    assert upstream.requests == [] and bytes(upstream.raw) == b"", "nothing may reach the app"


async def test_http2_preface_gets_505(upstream, proxy):
    r, w = await open_client(proxy.port)
    w.write(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
    resp = await read_response(r)
    assert resp.status == 505


async def test_connect_refused(upstream, proxy):
    r, w = await open_client(proxy.port)
    w.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    resp = await read_response(r)
    assert resp.status == 405
    assert upstream.requests == []


async def test_bad_request_after_good_pipelined_answers_good_first(upstream, proxy):
    r, w = await open_client(proxy.port)
    w.write(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    first = await read_response(r)
    assert first.status == 200 and first.body == b"GET /ok 0\n"
    second = await read_response(r)
    assert second.status == 400
    assert await closed_after(r)
    assert [s.target for s in upstream.requests] == ["/ok"]


async def test_bad_chunk_mid_body_never_completes_request_at_app(upstream, make_proxy):
    got = asyncio.get_running_loop().create_future()

    async def app(reader, writer):
        data = b""
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionError:
            pass
        got.set_result(data)

    server = await asyncio.start_server(app, "127.0.0.1", 0)
    px = await make_proxy(server.sockets[0].getsockname()[1])
    r, w = await open_client(px.port)
    w.write(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await w.drain()
    await asyncio.sleep(0.2)  # the head and first chunk are forwarded while streaming
    w.write(b"zz\r\nGET /smuggled HTTP/1.1\r\n\r\n")
    resp = await asyncio.wait_for(read_response(r), 5)
    assert resp.status == 400
    data = await asyncio.wait_for(got, 5)
    assert data.endswith(b"3\r\nabc\r\n"), data  # the app saw a truncated body, then the close
    assert b"smuggled" not in data
    server.close()


async def test_431_on_oversized_header_block(upstream, make_proxy):
    px = await make_proxy(upstream.port, max_header_size=4096)
    r, w = await open_client(px.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 5000 + b"\r\n\r\n")
    resp = await read_response(r)
    assert resp.status == 431
    assert await closed_after(r)
    assert upstream.requests == []


async def test_431_on_endless_header_line(upstream, make_proxy):
    px = await make_proxy(upstream.port, max_header_size=4096)
    r, w = await open_client(px.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    try:
        for _ in range(200):  # 12.8 MB of one header value, never terminated
            w.write(b"v" * 65536)
            await w.drain()
    except ConnectionError:
        pass
    resp = await asyncio.wait_for(read_response(r), 5)
    assert resp.status == 431


async def test_431_on_too_many_headers(upstream, make_proxy):
    px = await make_proxy(upstream.port, max_headers=20)
    r, w = await open_client(px.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(30)) + b"\r\n")
    resp = await read_response(r)
    assert resp.status == 431


async def test_414_on_endless_target(upstream, make_proxy):
    px = await make_proxy(upstream.port, max_header_size=4096)
    resp_r, w = await open_client(px.port)
    w.write(b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await read_response(resp_r)
    assert resp.status in (414, 431)


async def test_502_when_app_refuses(make_proxy, caplog):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    px = await make_proxy(port)
    r, w = await open_client(px.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await read_response(r)
    assert resp.status == 502
    # General terms for the client; the app's address and the OS error text go to the log only.
    assert b"could not be reached" in resp.body and str(port).encode() not in resp.body
    assert b"refused" not in resp.body.lower() and resp.header("date")
    assert any(f"cannot connect to the app at 127.0.0.1:{port}" in r.getMessage() for r in caplog.records)
    # the client connection survives a 502 for a request without a body
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await read_response(r)).status == 502


async def test_502_when_app_closes_without_answer(upstream, proxy):
    async def hang_up(seen, writer, reader):
        return False

    upstream.handler = hang_up
    r, w = await open_client(proxy.port)
    w.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    resp = await read_response(r)
    assert resp.status == 502


async def test_502_on_invalid_response(upstream, proxy):
    async def garbage(seen, writer, reader):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        return True

    upstream.handler = garbage
    resp = await asyncio.wait_for(_get(proxy.port), 5)
    assert resp.status == 502


async def test_truncated_response_body_is_not_completed(upstream, proxy):
    async def short(seen, writer, reader):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
        return False

    upstream.handler = short
    r, w = await open_client(proxy.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await asyncio.wait_for(read_response(r), 5)


async def test_504_when_app_is_too_slow(upstream, make_proxy):
    async def slow(seen, writer, reader):
        await asyncio.sleep(3)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        return True

    upstream.handler = slow
    px = await make_proxy(upstream.port, upstream_timeout=0.3)
    resp = await asyncio.wait_for(_get(px.port), 5)
    assert resp.status == 504
    assert px.stats["upstream_timeouts"] == 1


async def test_stale_pooled_connection_retried_for_idempotent_request(make_proxy):
    """The app closes idle keep-alive connections; the next GET must not fail because of it."""
    conns = 0

    async def app(reader, writer):
        nonlocal conns
        conns += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # keep-alive announced, then closed while idle in our pool

    server = await asyncio.start_server(app, "127.0.0.1", 0)
    px = await make_proxy(server.sockets[0].getsockname()[1])
    for _ in range(3):
        resp = await _get(px.port)
        assert resp.status == 200 and resp.body == b"ok"
        await asyncio.sleep(0.15)
    assert conns == 3
    server.close()


async def test_header_timeout_closes_slowloris(upstream, make_proxy):
    px = await make_proxy(upstream.port, header_timeout=0.4)
    r, w = await open_client(px.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n")  # and never the blank line
    resp = await asyncio.wait_for(read_response(r), 5)
    assert resp.status == 408
    assert await closed_after(r)
    # a connection that never sends anything is closed too
    r2, w2 = await open_client(px.port)
    assert await closed_after(r2, timeout=5)


async def test_idle_keepalive_connection_closed(upstream, make_proxy):
    px = await make_proxy(upstream.port, idle_timeout=0.4)
    r, w = await open_client(px.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await read_response(r)).status == 200
    assert await closed_after(r, timeout=5)


async def test_body_timeout(upstream, make_proxy):
    px = await make_proxy(upstream.port, body_timeout=0.4)
    r, w = await open_client(px.port)
    w.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    resp = await asyncio.wait_for(read_response(r), 5)
    assert resp.status in (408,) or resp.status == 0
    assert await closed_after(r)


async def test_connection_cap(upstream, make_proxy):
    px = await make_proxy(upstream.port, max_connections=2)
    held = [await open_client(px.port) for _ in range(2)]
    await asyncio.sleep(0.05)
    r, w = await open_client(px.port)
    resp = await asyncio.wait_for(read_response(r), 5)
    assert resp.status == 503
    assert px.stats["connections_refused"] == 1
    for _, hw in held:
        hw.close()


async def _get(port: int, target: bytes = b"/"):
    r, w = await open_client(port)
    w.write(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target)
    try:
        return await read_response(r)
    finally:
        w.close()


_FUZZ_SEEDS = [
    b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HEAD /h HTTP/1.0\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
]


def _mutate(data: bytes, rnd) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.choice([0, 1, 1, 2, 4])):
        op, i = rnd.random(), rnd.randrange(len(b) + 1)
        if op < 0.3 and b:
            b[min(i, len(b) - 1)] = rnd.randrange(256)
        elif op < 0.5:
            b[i:i] = rnd.choice([b"\r\n", b"\n", b"\r", b" ", b":", b"\x00", b"0", b"chunked", b";", b","])
        elif op < 0.7 and b:
            del b[i:i + rnd.randint(1, 5)]
        elif op < 0.85:
            b += rnd.choice(_FUZZ_SEEDS)  # pipelined
        else:
            b[i:i] = b[:rnd.randrange(len(b) + 1)]
    return bytes(b)


@pytest.mark.parametrize("seed", [1, 2])
async def test_mutated_requests_never_crash_or_leak(seed, upstream, make_proxy, caplog):
    """Random mutations of valid requests, split at random points, sent with hooks active: nothing
    is logged as an error, every exchange is finished, every connection closed, and the proxy still
    answers a normal request afterwards."""
    import random

    from decorator.proxy.hooks import Hooks, Reply

    class H(Hooks):
        def on_request(self, ex):
            return Reply(200, [], b"hooked") if ex.path.startswith("/p") else None

        def on_response_head(self, ex):
            return Reply(202, [], b"x" * 100) if ex.path.startswith("/a") else None

    rnd = random.Random(seed)
    px = await make_proxy(upstream.port, hooks=H(), header_timeout=0.5, body_timeout=0.5, idle_timeout=0.5,
                          upstream_timeout=1)

    async def one(data: bytes) -> None:
        try:
            r, w = await open_client(px.port)
            cuts = sorted(rnd.sample(range(len(data) + 1), min(3, len(data) + 1))) + [len(data)]
            prev = 0
            for c in cuts:
                w.write(data[prev:c])
                prev = c
                await w.drain()
            if rnd.random() < 0.5:
                w.write_eof()
            try:
                await asyncio.wait_for(r.read(65536), 0.5)
            except TimeoutError:
                pass
            w.close()
        except OSError:
            pass

    with caplog.at_level("ERROR", logger="decorator"):
        for _ in range(6):
            await asyncio.gather(*(one(_mutate(rnd.choice(_FUZZ_SEEDS), rnd)) for _ in range(50)))
        for _ in range(40):  # timeouts close what the clients left open
            if not px.connections and px.stats["in_flight"] == 0:
                break
            await asyncio.sleep(0.1)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    assert px.stats["in_flight"] == 0 and not px.connections
    r, w = await open_client(px.port)
    w.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(read_response(r), 5)).status == 200
    w.close()
