"""The Retry contract at the proxy level: a response hook may ask for the request to be sent to the
app again, and the tunnel does so only when nothing is lost by it. Real app and clients on port 0."""

from __future__ import annotations

import asyncio

from decorator.proxy import driver
from decorator.proxy.hooks import MAX_RESENDS, Exchange, Hooks, Retry
from tests.proxy.conftest import open_client, read_response, roundtrip
from tests.rules.helpers import closed_port


class RetryOn(Hooks):
    """Retry answers with one of `statuses` (and the sidecar's own connect failures) up to `times`."""

    def __init__(self, statuses=(503,), times: int = 1, keep_bodies: bool = True) -> None:
        self.statuses = statuses
        self.times = times
        self.keep_bodies = 64 * 1024 if keep_bodies else 0
        self.seen: list[tuple[int, str | None, bool]] = []

    def on_response_head(self, ex: Exchange):
        self.seen.append((ex.status, ex.error, ex.can_resend()))
        n = (ex.state or {}).get("n", 0)
        if ex.status in self.statuses and n < self.times:
            ex.state = {"n": n + 1}
            return Retry("test")
        return None


def failing_then_ok(fails: int, status: int = 503):
    """An app handler: `status` for the first `fails` requests, then 200 echoing the body."""
    count = {"n": 0}

    async def handler(seen, writer, reader) -> bool:
        count["n"] += 1
        if count["n"] <= fails:
            writer.write(b"HTTP/1.1 %d No\r\nContent-Length: 4\r\n\r\nfail" % status)
        else:
            body = b"ok:" + seen.body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True
    return handler


async def test_a_503_is_retried_and_the_client_gets_the_second_answer(upstream, make_proxy):
    upstream.handler = failing_then_ok(1)
    hooks = RetryOn()
    px = await make_proxy(upstream.port, hooks=hooks)
    resp = await roundtrip(px.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (resp.status, resp.body) == (200, b"ok:")
    assert [s.target for s in upstream.requests] == ["/x", "/x"]
    assert hooks.seen == [(503, None, True), (200, None, True)]


async def test_a_small_body_is_sent_again_whole(upstream, make_proxy):
    upstream.handler = failing_then_ok(2)
    px = await make_proxy(upstream.port, hooks=RetryOn(times=2))
    resp = await roundtrip(px.port, b"PUT /doc HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert (resp.status, resp.body) == (200, b"ok:hello")
    assert [(s.method, s.body) for s in upstream.requests] == [("PUT", b"hello")] * 3


async def test_a_chunked_body_is_sent_again_whole(upstream, make_proxy):
    upstream.handler = failing_then_ok(1)
    px = await make_proxy(upstream.port, hooks=RetryOn())
    resp = await roundtrip(px.port, b"PUT /doc HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert (resp.status, resp.body) == (200, b"ok:abcde")
    assert [s.body for s in upstream.requests] == [b"abcde", b"abcde"]


async def test_without_keep_bodies_a_sent_body_is_not_kept_and_the_answer_goes_out(upstream, make_proxy):
    upstream.handler = failing_then_ok(1)
    hooks = RetryOn(keep_bodies=False)
    px = await make_proxy(upstream.port, hooks=hooks)
    resp = await roundtrip(px.port, b"PUT /doc HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert (resp.status, resp.body) == (503, b"fail")
    assert len(upstream.requests) == 1
    assert hooks.seen == [(503, None, False)]
    # A request without a body needs nothing kept.
    resp = await roundtrip(px.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 200 and len(upstream.requests) == 2


async def test_a_body_still_streaming_when_the_app_answered_is_not_sent_again(upstream, make_proxy):
    async def early(seen, writer, reader) -> bool:
        writer.write(b"HTTP/1.1 503 No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return False
    upstream.handler = early  # answers once it has read the whole body
    hooks = RetryOn()
    px = await make_proxy(upstream.port, hooks=hooks)
    r, w = await open_client(px.port)
    w.write(b"PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    await w.drain()
    await asyncio.sleep(0.2)  # the app is asked with part of the body: the rest streams, not kept
    w.write(b"x" * 99000)
    resp = await asyncio.wait_for(read_response(r), 5)
    w.close()
    assert resp.status == 503
    assert hooks.seen[0][2] is False


async def test_connect_failures_are_retried_then_the_502_goes_out(make_proxy):
    hooks = RetryOn(statuses=(502,), times=2)
    px = await make_proxy(closed_port(), hooks=hooks)
    resp = await roundtrip(px.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 502
    assert hooks.seen == [(502, "upstream_connect", True)] * 3
    assert px.upstream_stats["connect_errors"] == 3


async def test_a_hook_that_always_retries_is_stopped_after_max_resends(upstream, make_proxy):
    upstream.handler = failing_then_ok(1000)
    hooks = RetryOn(times=1000)
    px = await make_proxy(upstream.port, hooks=hooks)
    resp = await roundtrip(px.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 503
    assert len(upstream.requests) == MAX_RESENDS + 1
    # The connection stays usable: a second exchange on a new connection works as usual.
    upstream.handler = failing_then_ok(0)
    resp = await roundtrip(px.port, b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 200


async def test_keep_alive_client_gets_both_exchanges_after_a_retry(upstream, make_proxy):
    upstream.handler = failing_then_ok(1)
    px = await make_proxy(upstream.port, hooks=RetryOn())
    r, w = await open_client(px.port)
    for path in (b"/a", b"/b"):
        w.write(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await asyncio.wait_for(read_response(r), 5)
        assert resp.status == 200
    w.close()
    assert [s.target for s in upstream.requests] == ["/a", "/a", "/b"]


def test_simulate_follows_retry_like_the_tunnel():
    answers = iter([503, 503, 200])
    calls = []

    def app(ex):
        calls.append(ex.path)
        return next(answers), [], b""

    out = driver.simulate(RetryOn(times=5), Exchange("GET", "/s", "1.1", [], "c"), app)
    assert (out.status, calls) == (200, ["/s"] * 3)
    out = driver.simulate(RetryOn(times=1000), Exchange("GET", "/s", "1.1", [], "c"),
                          lambda ex: (503, [], b""))
    assert out.status == 503


class KeepBodies(Hooks):
    def __init__(self, keep: int) -> None:
        self.keep_bodies = keep
        self.kept: list = []

    def on_complete(self, ex: Exchange) -> None:
        self.kept.append(ex.kept_body())


async def test_kept_body_is_there_for_a_completion_hook_only_when_asked(upstream, make_proxy):
    for keep, want in ((1024, [b"hello", b"", None]), (0, [None, b"", None])):
        hooks = KeepBodies(keep)
        px = await make_proxy(upstream.port, hooks=hooks)
        await roundtrip(px.port, b"POST /in HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        await roundtrip(px.port, b"GET /in HTTP/1.1\r\nHost: a\r\n\r\n")
        # A body bigger than what the hooks asked for is not kept.
        await roundtrip(px.port, b"POST /in HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000)
        assert hooks.kept == want, keep
