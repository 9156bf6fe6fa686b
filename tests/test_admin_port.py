"""The admin port of a real `decorator run` process, spoken to with raw bytes: pipelining, HEAD,
404/405, keep-alive, `Connection: close` and the `Date` header (RFC 9110 §6.6.1)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.proxy.conftest import closed_after, open_client, read_response, start_decorator
from tests.support import free_port, wait_port


@pytest.fixture(scope="module")
def admin_port():
    # The app is down (nothing on `dead`): the admin port answers /healthz and /status anyway.
    port, admin, dead = free_port(), free_port(), free_port()
    p = start_decorator("--port", str(port), "--target", str(dead), "--admin-port", str(admin))
    try:
        wait_port(admin, p)
        yield admin
    finally:
        p.terminate()
        p.wait(10)


async def _pipelined(port: int, raw: bytes, methods: list[str]):
    """Send `raw` in one write; read one response per entry of `methods`."""
    r, w = await open_client(port)
    w.write(raw)
    await w.drain()
    try:
        return [await asyncio.wait_for(read_response(r, m), 2) for m in methods]
    finally:
        w.close()


async def _one_by_one(port: int, requests: list[tuple[str, bytes]]):
    """On one connection, send each (method, raw request) only after the previous answer arrived:
    these tests check the answers themselves, not pipelining."""
    r, w = await open_client(port)
    out = []
    try:
        for method, raw in requests:
            w.write(raw)
            out.append(await asyncio.wait_for(read_response(r, method), 2))
        return out
    finally:
        w.close()


async def test_pipelined_requests_are_all_answered_in_order(admin_port):
    raw = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    health, status = await _pipelined(admin_port, raw, ["GET", "GET"])
    assert (health.status, health.body) == (200, b"ok\n")
    assert status.status == 200 and "proxy" in json.loads(status.body)


async def test_pipelined_burst_with_a_404_in_the_middle(admin_port):
    raw = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p for p in (b"/healthz", b"/nope", b"/healthz"))
    answers = await _pipelined(admin_port, raw, ["GET"] * 3)
    assert [a.status for a in answers] == [200, 404, 200]
    assert answers[0].body == answers[2].body == b"ok\n"


async def test_head_has_length_but_no_body(admin_port):
    # Had HEAD's answer carried a body, the GET's answer would be read from those bytes instead.
    head, get = await _one_by_one(admin_port, [("HEAD", b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
                                               ("GET", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")])
    assert head.status == 200 and head.header("content-length") == "3" and head.body == b""
    assert (get.status, get.body) == (200, b"ok\n")


async def test_unknown_path_is_404(admin_port):
    (missing,) = await _one_by_one(admin_port, [("GET", b"GET /no-such HTTP/1.1\r\nHost: x\r\n\r\n")])
    assert missing.status == 404


async def test_post_is_405_with_allow_and_its_body_is_skipped(admin_port):
    post, after = await _one_by_one(admin_port, [
        ("POST", b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"),
        ("GET", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")])
    assert post.status == 405
    assert (after.status, after.body) == (200, b"ok\n")  # the POST's body was not read as a request
    allow = {m.strip() for m in (post.header("allow") or "").split(",")}
    assert {"GET", "HEAD"} <= allow, "a 405 must say what is allowed (RFC 9110 §15.5.6)"


async def test_keep_alive_across_sequential_requests(admin_port):
    r, w = await open_client(admin_port)
    for path in (b"/healthz", b"/status", b"/healthz"):
        w.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
        resp = await asyncio.wait_for(read_response(r), 2)
        assert resp.status == 200 and (resp.header("connection") or "").lower() != "close"
    assert not await closed_after(r, 0.3), "the admin port closed a keep-alive connection"
    w.close()


async def test_connection_close_is_honoured(admin_port):
    r, w = await open_client(admin_port)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    resp = await asyncio.wait_for(read_response(r), 2)
    assert resp.status == 200 and (resp.header("connection") or "").lower() == "close"
    assert await closed_after(r, 2)
    w.close()


async def test_every_answer_has_a_date(admin_port):
    answers = await _one_by_one(admin_port, [
        ("GET", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("HEAD", b"HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("GET", b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("DELETE", b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n")])
    assert [a.status for a in answers] == [200, 200, 404, 405]
    for a in answers:
        date = a.header("date")
        assert date is not None and date.endswith(" GMT"), f"{a.status} answer without a Date: {a.raw_head!r}"
