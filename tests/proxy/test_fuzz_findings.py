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
