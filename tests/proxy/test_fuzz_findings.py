"""Regressions for what the `requests` and `responses` fuzz campaigns found (docs/reliability.md),
black-box through the real tunnel on loopback sockets, each with the input that found it."""

from __future__ import annotations

import asyncio
import socket

from tests.proxy.conftest import closed_after, open_client, read_response


# ----------------------------------------------------------------------------- requests #1
async def test_http10_request_without_host_reaches_the_app_with_one(upstream, proxy):
    """An HTTP/1.0 request may omit Host; the proxy forwards it as HTTP/1.1, which must carry one
    (RFC 9112 §3.2). h11 (a strict app) refused the forwarded request. Input:
    `GET /k HTTP/1.0\\r\\nConnection: keep-alive\\r\\n\\r\\n`."""
    r, w = await open_client(proxy.port)
    w.write(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    resp = await asyncio.wait_for(read_response(r), 10)
    assert resp.status == 200
    seen = upstream.requests[0]
    assert seen.header("host") == f"127.0.0.1:{upstream.port}"
    w.close()


async def test_http10_request_with_host_keeps_it(upstream, proxy):
    r, w = await open_client(proxy.port)
    w.write(b"GET /k HTTP/1.0\r\nHost: mine.test\r\n\r\n")
    await asyncio.wait_for(read_response(r), 10)
    assert [v for k, v in upstream.requests[0].headers if k.lower() == "host"] == ["mine.test"]
    w.close()


# ----------------------------------------------------------------------------- requests #2
async def test_half_close_mid_body_is_answered_at_once(upstream, make_proxy):
    """A client that half-closes before the end of its body can never finish it: the proxy
    answers 400 and closes, instead of holding the exchange and the app's connection until the
    body timeout (60 s here: waiting for it fails the test's 10 s deadline). Input:
    `POST /p HTTP/1.1\\r\\nHost: a\\r\\nContent-Length: 5\\r\\n\\r\\nhel`, then EOF."""
    proxy = await make_proxy(upstream.port, body_timeout=60)
    r, w = await open_client(proxy.port)
    w.write(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel")
    await w.drain()
    w.write_eof()
    resp = await asyncio.wait_for(read_response(r), 10)
    assert resp.status == 400
    assert await closed_after(r, 10)
    assert upstream.requests == []  # the app never saw a complete request
    w.close()


async def test_half_close_after_a_complete_request_still_gets_the_answer(upstream, proxy):
    r, w = await open_client(proxy.port)
    w.write(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    await w.drain()
    w.write_eof()
    resp = await asyncio.wait_for(read_response(r), 10)
    assert resp.status == 200 and resp.body == b"POST /p 5\n"
    w.close()


# ----------------------------------------------------------------------------- requests #3
async def test_no_lingering_after_the_client_already_sent_eof(upstream, proxy):
    """After an error the proxy lingers (FIN, read and drop) until the client's EOF, at most 2 s.
    When that EOF came first (the half-close mid-body above), no second one follows: the
    connection stayed counted open for the whole 2 s. Now it closes once the answer is written."""
    s = socket.create_connection(("127.0.0.1", proxy.port))
    s.sendall(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe")
    s.shutdown(socket.SHUT_WR)
    loop = asyncio.get_running_loop()
    s.setblocking(False)
    got = b""
    while True:
        data = await asyncio.wait_for(loop.sock_recv(s, 65536), 10)
        if not data:
            break
        got += data
    assert got.startswith(b"HTTP/1.1 400 ")
    # The client has read the proxy's FIN: the proxy's side is closing already, not lingering.
    conns = list(proxy.connections)
    assert all(c.transport.is_closing() for c in conns), [c.lingering for c in conns]
    s.close()


# ----------------------------------------------------------------------------- responses
async def _scripted_app(script_for):
    """An app that answers the n-th request on each connection with script_for(n, writer)."""
    async def serve(reader, writer):
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                n += 1
                if await script_for(n, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_101_without_an_upgrade_request_is_a_502(make_proxy):
    """An app answering 101 to a request that asked for no upgrade: a HEAD hung until the
    client gave up, a GET got its 100 and a closed connection. Now 502 (RFC 9110 §15.2.2)."""
    async def script(n, w):
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nX-A: 1\r\n\r\nxyz")
        await w.drain()
    app = await _scripted_app(script)
    proxy = await make_proxy(app.sockets[0].getsockname()[1])
    for method in ("HEAD", "GET"):
        r, w = await open_client(proxy.port)
        w.write(f"{method} / HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        resp = await asyncio.wait_for(read_response(r, method), 10)
        assert resp.status == 502
        w.close()
    app.close()


async def test_a_response_begun_on_a_pooled_connection_never_reaches_the_next_client(make_proxy):
    """The app wrote a second, unasked-for response head right after the first, in the same send;
    the connection went back to the pool mid-head, and the next client got the rest of it as its
    own answer (a response desync across clients). Now the connection is discarded."""
    async def script(n, w):
        if n == 1:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nX-Stale: 1\r\n")
        else:
            w.write(b"Content-Length: 5\r\n\r\nstale")  # finishes the stray head if this conn is reused
        await w.drain()
    app = await _scripted_app(script)
    proxy = await make_proxy(app.sockets[0].getsockname()[1])
    r, w = await open_client(proxy.port)
    w.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    first = await asyncio.wait_for(read_response(r), 10)
    assert first.status == 200 and first.body == b"ok"
    w.write(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    second = await asyncio.wait_for(read_response(r), 10)
    assert second.header("x-stale") is None and second.body != b"stale"
    assert second.body == b"ok"  # a fresh connection, the app's answer to the first request on it
    w.close()
    app.close()


async def test_two_transfer_encoding_fields_in_a_response_are_a_502(make_proxy):
    """`Transfer-Encoding: chunked` twice is chunked applied twice (RFC 9112 §6.1); llhttp decoded
    it once and the proxy passed it on. Refused like the same request is (400 there)."""
    async def script(n, w):
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n0\r\n\r\n")
        await w.drain()
    app = await _scripted_app(script)
    proxy = await make_proxy(app.sockets[0].getsockname()[1])
    r, w = await open_client(proxy.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await asyncio.wait_for(read_response(r), 10)).status == 502
    w.close()
    app.close()


async def test_a_cut_body_to_an_http10_client_ends_with_a_reset(make_proxy):
    """An HTTP/1.0 client gets an unframed body that ends with the connection, so a FIN says
    "that was all". When the app's chunked body broke mid-way the proxy closed with a FIN, and the
    client took the truncated body for the whole one. Now the connection is reset."""
    async def script(n, w):
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await w.drain()
        await asyncio.sleep(0.2)  # the head and "hello" go out to the client first
        w.write(b"zz\r\nbroken")
        await w.drain()
        return False
    app = await _scripted_app(script)
    proxy = await make_proxy(app.sockets[0].getsockname()[1])
    s = socket.create_connection(("127.0.0.1", proxy.port))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    got, reset = b"", False
    while True:
        try:
            data = await asyncio.wait_for(loop.sock_recv(s, 65536), 10)
        except ConnectionResetError:
            reset = True
            break
        if not data:
            break
        got += data
    s.close()
    assert got.startswith(b"HTTP/1.1 200 OK") and reset
    app.close()


async def test_a_status_code_under_100_is_a_502(make_proxy):
    """llhttp reads "HTTP/1.1 20" and "HTTP/1.1 000" as statuses 20 and 0; the proxy relayed them as
    interim (1xx) heads, then the app's bytes or a 504 after them. Now a 502 (RFC 9110 §15)."""
    for line in (b"HTTP/1.1 20 \r\n\r\n", b"HTTP/1.1 000 High\r\nContent-Length: 2\r\n\r\nok"):
        async def script(n, w, line=line):
            w.write(line)
            await w.drain()
            return False
        app = await _scripted_app(script)
        proxy = await make_proxy(app.sockets[0].getsockname()[1])
        r, w = await open_client(proxy.port)
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await asyncio.wait_for(read_response(r), 10)
        assert resp.status == 502, line
        w.close()
        app.close()


async def test_transfer_encoding_with_trailing_whitespace_is_read_as_llhttp_reads_it(make_proxy):
    """`Transfer-Encoding: chunked\\t`: llhttp does not take it for chunked (it reads the body to
    the close), the proxy stripped the tab and told the client "chunked", and the client got the
    raw chunk lines as the body. The framing field is now judged as received: a 502."""
    async def script(n, w):
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        await w.drain()
        return False
    app = await _scripted_app(script)
    proxy = await make_proxy(app.sockets[0].getsockname()[1])
    r, w = await open_client(proxy.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await asyncio.wait_for(read_response(r), 10)
    assert resp.status == 502 or resp.body == b"hello", (resp.status, resp.body)
    w.close()
    app.close()
