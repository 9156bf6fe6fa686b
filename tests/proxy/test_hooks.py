"""The hook interface the rule engine compiles into, exercised through the real tunnel."""

from __future__ import annotations

import asyncio

from decorator.proxy.hooks import Exchange, Hooks, Interest, Reply, chain
from tests.proxy.conftest import open_client, read_response, roundtrip


class Recorder(Hooks):
    def __init__(self) -> None:
        self.done: list[Exchange] = []

    def on_complete(self, ex: Exchange) -> None:
        self.done.append(ex)


async def test_on_request_reply_short_circuits(upstream, make_proxy):
    class H(Hooks):
        def on_request(self, ex):
            if ex.path == "/blocked":
                return Reply(403, [(b"Content-Type", b"text/plain")], b"no\n")
            ex.request_headers.append((b"X-Added", b"1"))
            return None

    px = await make_proxy(upstream.port, hooks=H())
    resp = await roundtrip(px.port, b"GET /blocked HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 403 and resp.body == b"no\n" and resp.header("content-length") == "3"
    assert upstream.requests == []
    await roundtrip(px.port, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
    assert upstream.requests[0].header("x-added") == "1"


async def test_on_response_head_replaces_404_with_streamed_file(upstream, make_proxy, tmp_path):
    page = tmp_path / "404.html"
    page.write_bytes(b"<h1>friendly</h1>" * 20000)  # 340 KB: streamed in chunks

    async def not_found(seen, writer, reader):
        body = b"app's boring 404"
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True

    class H(Hooks):
        def on_response_head(self, ex):
            if ex.status == 404:
                return Reply(404, [(b"Content-Type", b"text/html")], file=str(page))
            return None

    upstream.handler = not_found
    rec = Recorder()
    px = await make_proxy(upstream.port, hooks=chain(H(), rec))
    r, w = await open_client(px.port)
    for _ in range(3):  # keep-alive survives, the app's body was drained and the pool reused
        w.write(b"GET /missing HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await asyncio.wait_for(read_response(r), 5)
        assert resp.status == 404 and resp.body == page.read_bytes()
        assert resp.header("content-type") == "text/html"
    w.close()
    await asyncio.sleep(0.05)
    assert upstream.connections == 1
    assert [ex.status for ex in rec.done] == [404, 404, 404]
    assert all(ex.replaced for ex in rec.done)
    assert rec.done[0].bytes_out == page.stat().st_size


async def test_on_response_head_can_edit_headers(upstream, make_proxy):
    class H(Hooks):
        def on_response_head(self, ex):
            ex.response_headers.append((b"X-Frame-Options", b"DENY"))
            return None

    px = await make_proxy(upstream.port, hooks=H())
    resp = await roundtrip(px.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.header("x-frame-options") == "DENY" and resp.body == b"GET / 0\n"


async def test_on_complete_sees_status_bytes_and_timings(upstream, make_proxy):
    rec = Recorder()
    px = await make_proxy(upstream.port, hooks=rec)
    r, w = await open_client(px.port)
    w.write(b"POST /items/7 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    resp = await read_response(r)
    w.close()
    await asyncio.sleep(0.05)
    (ex,) = rec.done
    assert (ex.method, ex.path, ex.status) == ("POST", "/items/7", 200)
    assert ex.bytes_in == 5 and ex.bytes_out == len(resp.body)
    assert ex.t_start <= ex.t_response <= ex.t_end and ex.duration > 0
    assert ex.error is None and not ex.replaced
    assert ex.request_id == upstream.requests[0].header("x-request-id")


async def test_on_complete_after_upstream_failure(make_proxy):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    rec = Recorder()
    px = await make_proxy(port, hooks=rec)
    resp = await roundtrip(px.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 502
    await asyncio.sleep(0.05)
    assert rec.done[0].status == 502 and rec.done[0].error


async def test_raising_hook_is_isolated(upstream, make_proxy):
    class Broken(Hooks):
        def on_request(self, ex):
            raise RuntimeError("bug in a hook")

        def on_response_head(self, ex):
            raise RuntimeError("bug in a hook")

        def on_complete(self, ex):
            raise RuntimeError("bug in a hook")

    px = await make_proxy(upstream.port, hooks=Broken())
    r, w = await open_client(px.port)
    for _ in range(2):
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(r)).status == 200
    w.close()
    assert px.stats["hook_errors"] >= 5


async def test_swapping_hooks_does_not_touch_exchange_in_flight(upstream, make_proxy):
    gate = asyncio.Event()

    async def held(seen, writer, reader):
        if seen.target == "/slow":
            await gate.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    class Tag(Hooks):
        def __init__(self, tag: bytes) -> None:
            self.tag = tag

        def on_response_head(self, ex):
            ex.response_headers.append((b"X-Rules", self.tag))
            return None

    upstream.handler = held
    px = await make_proxy(upstream.port, hooks=Tag(b"old"))
    r, w = await open_client(px.port)
    w.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.1)
    px.hooks = Tag(b"new")  # a reload while /slow is in flight
    fresh = await roundtrip(px.port, b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
    gate.set()
    slow = await read_response(r)
    assert slow.header("x-rules") == "old"
    assert fresh.header("x-rules") == "new"


async def test_reply_in_place_of_proxy_502(make_proxy):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()

    class Friendly(Hooks):
        def on_response_head(self, ex):
            if ex.status >= 500:
                return Reply(ex.status, [(b"Content-Type", b"text/html")], b"<p>we are on it</p>")
            return None

    px = await make_proxy(port, hooks=Friendly())
    resp = await roundtrip(px.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 502 and resp.body == b"<p>we are on it</p>"


async def test_head_request_reply_has_no_body(upstream, make_proxy):
    class H(Hooks):
        def on_request(self, ex):
            return Reply(200, [], b"body-not-sent")

    px = await make_proxy(upstream.port, hooks=H())
    r, w = await open_client(px.port)
    w.write(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await read_response(r, "HEAD")
    assert head.status == 200 and head.header("content-length") == "13"
    get = await read_response(r)
    assert get.body == b"body-not-sent"
    w.close()


async def test_response_phase_reply_to_head_and_204(upstream, make_proxy):
    """A HEAD answered by the app with a length but no body, replaced in the response phase."""
    async def handler(seen, writer, reader):
        if seen.target == "/empty":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n" +
                         (b"" if seen.method == "HEAD" else b"not found"))
        return True

    class H(Hooks):
        def on_response_head(self, ex):
            if ex.status in (404, 204):
                return Reply(ex.status, [(b"Content-Type", b"text/html")], b"<p>friendly</p>")
            return None

    upstream.handler = handler
    px = await make_proxy(upstream.port, hooks=H())
    r, w = await open_client(px.port)
    w.write(b"HEAD /missing HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await asyncio.wait_for(read_response(r, "HEAD"), 5)
    assert head.status == 404 and head.header("content-length") == "15"
    w.write(b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n")
    empty = await asyncio.wait_for(read_response(r), 5)
    assert empty.status == 204 and empty.header("content-length") is None
    w.write(b"GET /missing HTTP/1.1\r\nHost: a\r\n\r\n")
    get = await asyncio.wait_for(read_response(r), 5)
    assert get.status == 404 and get.body == b"<p>friendly</p>"
    w.close()
    assert upstream.connections == 1


async def test_response_interest_by_status(upstream, make_proxy):
    """on_response_head is skipped for statuses the hooks did not ask for; chain() keeps the interest."""
    async def handler(seen, writer, reader):
        code = int(seen.target.strip("/"))
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % code)
        return True

    class Only404(Hooks):
        response_interest = Interest({404: None})

        def __init__(self) -> None:
            self.seen: list[int] = []

        def on_response_head(self, ex):
            self.seen.append(ex.status)
            return None

    class Every(Hooks):
        def on_response_head(self, ex):
            return None

    upstream.handler = handler
    only = Only404()
    px = await make_proxy(upstream.port, hooks=chain(only, Recorder()))
    for code in (200, 404, 500):
        assert (await roundtrip(px.port, b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % code)).status == code
    assert only.seen == [404]
    assert chain(only, Recorder()).response_interest == Interest({404: None})
    assert chain(only, Every()).response_interest is None  # one part wants every status


async def test_interest_by_first_segment_skips_hooks_for_other_paths(upstream, make_proxy):
    """request_interest / response_interest: the tunnel calls a hook only for the first path
    segments (per method, per status) it says it wants; chain() merges the interests."""
    async def handler(seen, writer, reader):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    class Api(Hooks):
        request_interest = Interest({"*": frozenset({"/api"}), "POST": None})  # every POST, else /api only
        response_interest = Interest({200: frozenset({"/api", "/x"})})

        def __init__(self) -> None:
            self.requests: list[str] = []
            self.responses: list[str] = []

        def on_request(self, ex):
            self.requests.append(f"{ex.method} {ex.path}")

        def on_response_head(self, ex):
            self.responses.append(ex.path)

    upstream.handler = handler
    api = Api()
    px = await make_proxy(upstream.port, hooks=chain(api, Recorder()))
    for line in (b"GET /api/users/1", b"GET /apix", b"GET /", b"POST /other", b"GET /x", b"GET /api"):
        req = line + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        assert (await roundtrip(px.port, req)).status == 200
    assert api.requests == ["GET /api/users/1", "POST /other", "GET /api"]
    assert api.responses == ["/api/users/1", "/x", "/api"]

    class Every(Hooks):
        def on_request(self, ex):
            return None

    class Other(Hooks):
        request_interest = Interest({"*": frozenset({"/b"}), "GET": frozenset({"/c"})})

        def on_request(self, ex):
            return None

    assert chain(api, Recorder()).request_interest == Api.request_interest  # Recorder has no on_request
    assert chain(api, Every()).request_interest is None                      # one part wants every path
    merged = chain(api, Other()).request_interest
    assert merged == Interest({"*": frozenset({"/api", "/b"}), "POST": None, "GET": frozenset({"/api", "/c"})})


async def test_on_request_may_wait_without_blocking_other_connections(upstream, make_proxy):
    """An on_request that returns an awaitable holds its exchange (the body is kept, not lost) while
    other connections are served; it may then let the request through or answer it."""
    gate = asyncio.Event()

    class Waits(Hooks):
        def on_request(self, ex):
            if ex.path == "/fast":
                return None
            return self.later(ex)

        async def later(self, ex):
            await gate.wait()
            if ex.path == "/deny":
                return Reply(403, [(b"Content-Type", b"text/plain")], b"denied\n")
            ex.request_headers.append((b"X-Checked", b"yes"))
            return None

    px = await make_proxy(upstream.port, hooks=Waits())
    r1, w1 = await open_client(px.port)
    w1.write(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    r2, w2 = await open_client(px.port)
    w2.write(b"GET /deny HTTP/1.1\r\nHost: a\r\n\r\n")
    fast = await asyncio.wait_for(roundtrip(px.port, b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n"), 5)
    assert fast.status == 200 and [s.target for s in upstream.requests] == ["/fast"]
    gate.set()
    slow = await asyncio.wait_for(read_response(r1), 5)
    deny = await asyncio.wait_for(read_response(r2), 5)
    assert slow.status == 200 and deny.status == 403 and deny.body == b"denied\n"
    seen = {s.target: s for s in upstream.requests}
    assert "/deny" not in seen
    assert seen["/slow"].header("x-checked") == "yes" and seen["/slow"].body == b"hello"
    w1.close()
    w2.close()


async def test_a_chain_of_waiting_request_hooks_runs_in_order_until_one_replies(upstream, make_proxy):
    seen: list[str] = []

    class Waits(Hooks):
        def __init__(self, name: str, reply: bool) -> None:
            self.name, self.reply = name, reply

        def on_request(self, ex):
            return self.later(ex)

        async def later(self, ex):
            await asyncio.sleep(0.01)
            seen.append(self.name)
            return Reply(401, body=b"no\n") if self.reply and ex.path == "/guarded" else None

    px = await make_proxy(upstream.port, hooks=chain(Waits("a", False), Waits("b", True), Waits("c", False)))
    denied = await asyncio.wait_for(roundtrip(px.port, b"GET /guarded HTTP/1.1\r\nHost: a\r\n\r\n"), 5)
    assert denied.status == 401 and seen == ["a", "b"]      # c never ran: b answered
    seen.clear()
    ok = await asyncio.wait_for(roundtrip(px.port, b"GET /open HTTP/1.1\r\nHost: a\r\n\r\n"), 5)
    assert ok.status == 200 and seen == ["a", "b", "c"] and [s.target for s in upstream.requests] == ["/open"]
