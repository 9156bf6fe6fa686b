"""Forwarding through the real tunnel: keep-alive, pooling, pipelining, bodies, framing, hop-by-hop."""

from __future__ import annotations

import asyncio

from tests.proxy.conftest import closed_after, open_client, read_response, roundtrip


async def test_get_forwarded_with_forwarding_headers(upstream, proxy):
    resp = await roundtrip(proxy.port, b"GET /hello?x=1 HTTP/1.1\r\nHost: app\r\nUser-Agent: t\r\n\r\n")
    assert resp.status == 200
    assert resp.body == b"GET /hello?x=1 0\n"
    seen = upstream.requests[0]
    assert seen.target == "/hello?x=1"
    assert seen.header("host") == "app"
    assert seen.header("user-agent") == "t"
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    assert seen.header("x-forwarded-proto") == "http"
    rid = seen.header("x-request-id")
    assert rid and len(rid) == 32


async def test_existing_forwarding_headers_kept_and_extended(upstream, proxy):
    await roundtrip(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\n"
                                b"X-Forwarded-Proto: https\r\nX-Request-Id: abc-123\r\n\r\n")
    seen = upstream.requests[0]
    assert seen.header("x-forwarded-for") == "10.0.0.1, 127.0.0.1"
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("x-request-id") == "abc-123"
    assert len([h for h in seen.headers if h[0].lower() == "x-request-id"]) == 1


async def test_keep_alive_reuses_one_upstream_connection(upstream, proxy):
    r, w = await open_client(proxy.port)
    for i in range(20):
        w.write(b"GET /n%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
        resp = await read_response(r)
        assert resp.status == 200 and resp.body == b"GET /n%d 0\n" % i
    w.close()
    assert upstream.connections == 1
    assert proxy.upstream_stats["reuses"] >= 19


async def test_pool_is_shared_between_clients(upstream, proxy):
    for _ in range(5):
        resp = await roundtrip(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 200
    assert upstream.connections == 1  # one pooled upstream connection served five client connections


async def test_pipelined_requests_answered_in_order(upstream, proxy):
    async def slow_first(seen, writer, reader):
        if seen.target == "/1":
            await asyncio.sleep(0.2)
        body = seen.target.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True

    upstream.handler = slow_first
    r, w = await open_client(proxy.port)
    w.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    bodies = [(await read_response(r)).body for _ in range(3)]
    assert bodies == [b"/1", b"/2", b"/3"]
    assert upstream.requests[1].body == b"abc"
    w.close()


async def test_chunked_request_body_streamed_and_reframed(upstream, proxy):
    r, w = await open_client(proxy.port)
    w.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    resp = await read_response(r)
    assert resp.status == 200 and resp.body == b"POST /up 11\n"
    seen = upstream.requests[0]
    assert seen.body == b"hello world"
    assert seen.header("transfer-encoding") == "chunked"
    assert b"ext=1" not in upstream.raw  # chunk extensions are not passed on
    w.close()


async def test_chunked_response_and_response_read_to_close(upstream, proxy):
    async def handler(seen, writer, reader):
        if seen.target == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close")
        return False

    upstream.handler = handler
    r, w = await open_client(proxy.port)
    w.write(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await read_response(r)
    assert resp.body == b"abcde" and resp.header("transfer-encoding") == "chunked"
    # No length from the app: an HTTP/1.1 client gets it chunked and keeps its connection.
    w.write(b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await read_response(r)
    assert resp.body == b"until-close" and resp.header("transfer-encoding") == "chunked"
    w.write(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await read_response(r)).body == b"abcde"
    w.close()
    # An HTTP/1.0 client gets it delimited by close.
    resp = await roundtrip(proxy.port, b"GET /close HTTP/1.0\r\n\r\n")
    assert resp.body == b"until-close" and resp.header("transfer-encoding") is None


async def test_http10_keep_alive(upstream, proxy):
    r, w = await open_client(proxy.port)
    w.write(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    resp = await read_response(r)
    assert resp.status == 200 and resp.header("connection") == "keep-alive"
    w.write(b"GET /b HTTP/1.0\r\n\r\n")
    resp = await read_response(r)
    assert resp.body == b"GET /b 0\n" and resp.header("connection") == "close"
    assert await closed_after(r)


async def test_connection_close_closes_after_response(upstream, proxy):
    r, w = await open_client(proxy.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    resp = await read_response(r)
    assert resp.status == 200 and resp.header("connection") == "close"
    assert await closed_after(r)
    # the app still sees a keep-alive request: the client's Connection header is hop-by-hop
    assert upstream.requests[0].header("connection") is None


async def test_hop_by_hop_headers_removed_both_ways(upstream, proxy):
    async def handler(seen, writer, reader):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Private\r\nX-Private: s\r\n"
                     b"Keep-Alive: timeout=5\r\nX-Public: p\r\n\r\nok")
        return True

    upstream.handler = handler
    resp = await roundtrip(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\n"
                                       b"X-Secret: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nProxy-Connection: x\r\n"
                                       b"X-Kept: k\r\n\r\n")
    seen = upstream.requests[0]
    names = {k.lower() for k, _ in seen.headers}
    assert not names & {"x-secret", "keep-alive", "te", "proxy-connection", "connection"}
    assert seen.header("x-kept") == "k"
    rnames = {k.lower() for k, _ in resp.headers}
    assert not rnames & {"x-private", "keep-alive"}
    assert resp.header("x-public") == "p"


async def test_head_204_304_have_no_body(upstream, proxy):
    async def handler(seen, writer, reader):
        if seen.target == "/204":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif seen.target == "/304":
            writer.write(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
        else:  # HEAD: a length but no body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        return True

    upstream.handler = handler
    r, w = await open_client(proxy.port)
    w.write(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await read_response(r, "HEAD")
    assert resp.status == 200 and resp.header("content-length") == "1000"
    w.write(b"GET /204 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await read_response(r)).status == 204
    w.write(b"GET /304 HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await read_response(r)
    assert resp.status == 304 and resp.header("transfer-encoding") is None
    # the connection is still in sync: a normal request after them works
    upstream.handler = None
    w.write(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await read_response(r)).body == b"GET /after 0\n"
    w.close()
    assert upstream.connections == 1


async def test_expect_100_continue_relayed(upstream, proxy):
    async def handler(seen, writer, reader):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(seen.body), seen.body))
        return True

    # The app answers 100 before reading the body; our Upstream reads the body first, so script it raw.
    async def raw_app(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"100-continue" in head.lower()
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        body = await reader.readexactly(5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
        await writer.drain()
        await reader.read()

    server = await asyncio.start_server(raw_app, "127.0.0.1", 0)
    from decorator.proxy.tunnel import ProxyServer
    px = ProxyServer(("127.0.0.1", server.sockets[0].getsockname()[1]))
    await px.start()
    r, w = await open_client(px.port)
    w.write(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(read_response(r), 5)
    assert interim.status == 100
    w.write(b"hello")
    final = await asyncio.wait_for(read_response(r), 5)
    assert final.status == 200 and final.body == b"hello"
    w.close()
    await px.shutdown(0.5)
    server.close()


async def test_interim_103_forwarded(upstream, proxy):
    async def handler(seen, writer, reader):
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    upstream.handler = handler
    r, w = await open_client(proxy.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    first = await read_response(r)
    assert first.status == 103 and first.header("link") == "</s.css>; rel=preload"
    final = await read_response(r)
    assert final.status == 200 and final.body == b"ok"
    w.close()


async def test_websocket_upgrade_becomes_raw_tunnel(make_proxy):
    async def ws_app(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"upgrade: websocket" in head.lower()
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: x\r\n\r\nserver-hello")
        await writer.drain()
        while data := await reader.read(1024):  # echo, upper-cased, byte for byte
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(ws_app, "127.0.0.1", 0)
    px = await make_proxy(server.sockets[0].getsockname()[1])
    r, w = await open_client(px.port)
    w.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\nearly")
    resp = await read_response(r)
    assert resp.status == 101 and resp.header("upgrade") == "websocket"
    assert resp.header("connection").lower() == "upgrade"
    got = b""
    while len(got) < len(b"server-helloEARLY"):
        got += await asyncio.wait_for(r.read(100), 5)
    assert got == b"server-helloEARLY"
    w.write(b"\x81\x05hello")  # arbitrary binary frames pass untouched
    echoed = await asyncio.wait_for(r.readexactly(7), 5)
    assert echoed == b"\x81\x05HELLO"
    w.close()
    server.close()


async def test_upgrade_refused_by_app_answers_and_closes(upstream, proxy):
    r, w = await open_client(proxy.port)
    w.write(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    resp = await read_response(r)
    assert resp.status == 200
    assert await closed_after(r)


async def test_large_headers_within_limit_pass(upstream, proxy):
    value = b"v" * 8000
    resp = await roundtrip(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + value + b"\r\n\r\n")
    assert resp.status == 200
    assert upstream.requests[0].header("x-big") == value.decode()


async def test_absolute_form_target_becomes_origin_form(upstream, proxy):
    resp = await roundtrip(proxy.port, b"GET http://app.example/p?q=1 HTTP/1.1\r\nHost: app.example\r\n\r\n")
    assert resp.status == 200
    assert upstream.requests[0].target == "/p?q=1"


async def test_trailing_whitespace_in_values_stripped(upstream, proxy):
    await roundtrip(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Tab:\tv\t \r\n\r\n")
    assert upstream.requests[0].header("x-tab") == "v"
    assert b"X-Tab: v\r\n" in upstream.raw
