"""redirect, rewrite, ratelimit and cors through the real tunnel on loopback (a real app on port 0
that reports what it was asked, a real httpx client), each in enforce and in shadow mode, plus
their located load errors and the sans-IO parts (GCRA buckets, origin matching)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from types import SimpleNamespace

import httpx
import pytest

from decorator.actions.cors import Origins, origin_problem
from decorator.actions.ratelimit import Buckets, parse_rate
from decorator.proxy.hooks import Exchange
from decorator.proxy.tunnel import ProxyServer
from decorator.rules import Runtime, compile_rules, load_rules
from tests.rules.helpers import errors_of


class EchoApp:
    """Answers 200 with what it was asked: {method, target, host, headers}. Counts requests."""

    def __init__(self, extra_headers: str = "") -> None:
        self.seen: list[dict] = []
        self.extra = extra_headers

    async def start(self) -> EchoApp:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer):
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {}
                for ln in lines[1:]:
                    if ln:
                        k, _, v = ln.partition(":")
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                seen = {"method": method, "target": target, "host": headers.get("host"), "headers": headers}
                self.seen.append(seen)
                body = json.dumps(seen).encode()
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{self.extra}"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def stack(tmp_path):
    made = []

    async def build(rules: str, app_headers: str = "", clock=None):
        (tmp_path / "rules.yaml").write_text(textwrap.dedent(rules))
        app = await EchoApp(app_headers).start()
        rt = Runtime(pod="e2e", clock=clock or Clock())
        await rt.start()
        hooks = compile_rules(load_rules([str(tmp_path / "rules.yaml")], env={}), rt)
        server = ProxyServer(target=("127.0.0.1", app.port), hooks=hooks)
        await server.start(host="127.0.0.1", port=0)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10, follow_redirects=False)
        made.append((client, server, rt, app))
        return SimpleNamespace(client=client, app=app, rt=rt, server=server)
    yield build
    for client, server, rt, app in made:
        await client.aclose()
        await server.shutdown(drain_timeout=1.0)
        await rt.close(timeout=0.2)
        app.server.close()


def shadowed(rules: str) -> str:
    return "mode: shadow\n" + textwrap.dedent(rules)


# -- redirect ------------------------------------------------------------------------------------
REDIRECT = """
rules:
  - name: old-docs
    match: { path: "/docs/{page}" }
    redirect: { to: "https://docs.example.com/{page}", status: 301 }
  - name: legacy
    match: { path_regex: "^/old/(?P<rest>.*)$" }
    redirect: { to: "/new/{rest}?from=old", query: true }
  - name: no-query
    match: { path: /drop }
    redirect: { to: /dropped, query: false, status: 308 }
"""


async def test_redirect_answers_with_location_and_the_app_never_sees_it(stack):
    s = await stack(REDIRECT)
    r = await s.client.get("/docs/intro?lang=en&x=1")
    assert r.status_code == 301 and r.headers["location"] == "https://docs.example.com/intro?lang=en&x=1"
    r = await s.client.get("/old/a/b?q=2")
    assert r.status_code == 302 and r.headers["location"] == "/new/a/b?from=old&q=2"
    r = await s.client.post("/drop?secret=1", content=b"body")
    assert r.status_code == 308 and r.headers["location"] == "/dropped"
    assert s.app.seen == []
    r = await s.client.get("/docs/a/b")  # {page} is one segment: no match, the app answers
    assert r.status_code == 200 and s.app.seen[0]["target"] == "/docs/a/b"


async def test_redirect_in_shadow_mode_lets_the_request_through_and_counts(stack):
    s = await stack(shadowed(REDIRECT))
    r = await s.client.get("/docs/intro?lang=en")
    assert r.status_code == 200 and s.app.seen[0]["target"] == "/docs/intro?lang=en"
    assert s.rt.counters["shadow_hits"] == {"old-docs": {"redirect": 1}}


def test_redirect_errors_are_located_with_suggestions(write):
    p = write("r.yaml", """
        rules:
          - name: a
            match: {path: "/docs/{page}"}
            redirect: {to: "https://x.example/{pgae}"}
          - name: b
            redirect: {to: "/x", status: 305}
          - name: c
            match: {status: 404}
            redirect: {to: "/x"}
          - name: d
            redirect: {to: "/x/{id}"}
        """)
    errs = errors_of(p)
    assert errs[0].startswith(f"{p}:4:20: unknown field {{pgae}} in 'https://x.example/{{pgae}}' (did you mean "
                              "{page}?); the match's path parameters are {page}, and {status}")
    assert errs[1] == f"{p}:6:34: rules[1].redirect.status: expected a redirect status (301, 302, 303, 307, 308), found 305"
    assert errs[2].startswith(f"{p}:9:15: redirect acts before the app is called, but this rule's match reads the response")
    assert errs[3].startswith(f"{p}:11:20: unknown field {{id}} in '/x/{{id}}'; the rule's match has no path parameters")
    assert len(errs) == 4


# -- rewrite -------------------------------------------------------------------------------------
REWRITE = """
rules:
  - name: v1-to-v2
    match: { path_regex: "^/api/v1/(?P<rest>.*)$" }
    rewrite: { path: "/api/v2/{rest}" }
  - name: search
    match: { path: "/search/{term}" }
    rewrite: { path: /find, query: "q={term}&{query}", host: search.internal:8080 }
  - name: after
    match: { path: "/api/v2/**" }
    headers: {request: {set: {X-Seen-Path: "{path}"}}}
"""


async def test_rewrite_changes_what_the_app_is_asked_for(stack):
    s = await stack(REWRITE)
    r = await s.client.get("/api/v1/orders/7?x=1")
    assert r.status_code == 200
    seen = r.json()
    assert seen["target"] == "/api/v2/orders/7?x=1"
    assert seen["headers"]["x-seen-path"] == "/api/v2/orders/7"  # later rules see the rewritten path
    r = await s.client.get("/search/cats?page=2")
    seen = r.json()
    assert seen["target"] == "/find?q=cats&page=2" and seen["host"] == "search.internal:8080"
    assert list(seen["headers"]).count("host") == 1


async def test_rewrite_in_shadow_mode_changes_nothing_and_counts(stack):
    s = await stack(shadowed(REWRITE))
    r = await s.client.get("/api/v1/orders/7?x=1")
    assert r.json()["target"] == "/api/v1/orders/7?x=1"
    assert s.rt.counters["shadow_hits"] == {"v1-to-v2": {"rewrite": 1}}


def test_set_target_refuses_what_cannot_go_on_a_request_line():
    ex = Exchange("GET", "/a?b", "1.1", [], "127.0.0.1")
    ex.set_target("/c/d?e=f")
    assert (ex.path, ex.query, ex.target) == ("/c/d", "e=f", "/c/d?e=f")
    for bad in ("/a b", "no-slash", "/caf\u00e9", "/x\r\nHost: evil"):
        with pytest.raises(ValueError):
            ex.set_target(bad)
    assert ex.target == "/c/d?e=f"


def test_rewrite_errors_are_located(write):
    p = write("r.yaml", """
        rules:
          - name: a
            match: {path_regex: "^/v1/(?P<rest>.*)$"}
            rewrite: {path: "/v2/{reest}"}
          - name: b
            rewrite: {}
          - name: c
            rewrite: {host: "http://x/"}
          - name: d
            rewrite: {path: "v2"}
        """)
    errs = errors_of(p)
    assert errs == [
        f"{p}:4:21: unknown field {{reest}} in '/v2/{{reest}}' (did you mean {{rest}}?); the match's path parameters "
        "are {rest}, and {status}, {path}, {method}, {request_id}, {rule}, {time}, {route}, {query} are always there",
        f"{p}:6:14: rules[1].rewrite: rewrite needs at least one of path, query, host",
        f"{p}:8:21: rules[2].rewrite.host: expected a host name with an optional :port (no scheme or path), "
        "found 'http://x/'",
        f"{p}:10:21: rules[3].rewrite.path: a rewritten path starts with '/', found 'v2'"]


# -- ratelimit -----------------------------------------------------------------------------------
RATE = """
rules:
  - name: api-rate
    match: { path: "/api/**" }
    ratelimit: { rate: 1/m, burst: 3, key: "header:X-Api-Key" }
"""


async def test_ratelimit_rejects_over_the_burst_with_429_and_ietf_headers(stack):
    clock = Clock()
    s = await stack(RATE, clock=clock)
    a = {"X-Api-Key": "a"}
    for _ in range(3):
        r = await s.client.get("/api/x", headers=a)
        assert r.status_code == 200 and "ratelimit" not in r.headers
    r = await s.client.get("/api/x", headers=a)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "60"
    assert r.headers["ratelimit-policy"] == '"api-rate";q=3;w=180'
    assert r.headers["ratelimit"] == '"api-rate";r=0;t=180'
    assert len(s.app.seen) == 3                       # the rejected request never reached the app
    r = await s.client.get("/api/x", headers={"X-Api-Key": "b"})
    assert r.status_code == 200                       # another key, another bucket
    r = await s.client.get("/other", headers=a)
    assert r.status_code == 200                       # outside the rule
    clock.now += 60                                   # one token back
    assert (await s.client.get("/api/x", headers=a)).status_code == 200
    assert (await s.client.get("/api/x", headers=a)).status_code == 429
    assert s.rt.counters["ratelimit_rejected"] == {"api-rate": 2}


async def test_ratelimit_headers_on_passes_and_keys_by_client_and_expression(stack):
    s = await stack("""
        rules:
          - name: per-client
            match: { path: "/c/**" }
            ratelimit: { rate: 2/s, key: client, headers: true }
          - name: per-tenant
            match: { path: "/t/**" }
            ratelimit: { rate: 1/h, burst: 1, key: "request.query.tenant" }
        """)
    r = await s.client.get("/c/1")
    assert r.headers["ratelimit"] == '"per-client";r=1;t=1' and r.headers["ratelimit-policy"] == '"per-client";q=2;w=1'
    assert (await s.client.get("/c/1")).status_code == 200
    assert (await s.client.get("/c/1")).status_code == 429
    assert (await s.client.get("/t/x?tenant=a")).status_code == 200
    assert (await s.client.get("/t/x?tenant=b")).status_code == 200
    assert (await s.client.get("/t/y?tenant=a")).status_code == 429


async def test_ratelimit_in_shadow_mode_counts_only_what_it_would_reject(stack):
    s = await stack(shadowed(RATE))
    for _ in range(5):
        r = await s.client.get("/api/x", headers={"X-Api-Key": "a"})
        assert r.status_code == 200
    assert len(s.app.seen) == 5
    assert s.rt.counters["shadow_hits"] == {"api-rate": {"ratelimit": 2}}
    assert s.rt.counters["ratelimit_rejected"] == {}


def test_buckets_survive_a_reload_and_a_switch_from_shadow_to_enforce(write):
    rt = Runtime(clock=Clock())
    ex = Exchange("GET", "/api/x", "1.1", [(b"X-Api-Key", b"k")], "127.0.0.1")
    shadow = compile_rules(load_rules([write("a.yaml", shadowed(RATE))], env={}), rt)
    for _ in range(3):
        assert shadow.on_request(ex) is None
    enforce = compile_rules(load_rules([write("b.yaml", RATE)], env={}), rt)
    assert enforce.on_request(ex).status == 429  # the shadow rule's three requests used the bucket


def test_gcra_buckets_refill_and_forget_the_least_recent_key():
    b = Buckets(count=2, period=1.0, burst=2, max_keys=2)
    assert b.take("a", 0.0)[:2] == (True, 1)
    assert b.take("a", 0.0)[:2] == (True, 0)
    allowed, remaining, reset, retry = b.take("a", 0.0)
    assert (allowed, remaining, reset, retry) == (False, 0, 1.0, 0.5)
    assert b.take("a", 0.5)[0] is True              # half a second is one token at 2/s
    b.take("b", 0.5)
    b.take("c", 0.5)                                # a third key: "a" (least recent) is forgotten
    assert list(b.tat) == ["b", "c"] and b.evicted == 1
    assert b.take("a", 0.5)[:2] == (True, 1)        # forgotten: a full bucket again
    for _ in range(10_000):                         # a scan of addresses never grows the table
        b.take(str(_), 1.0)
    assert len(b.tat) == 2


def test_parse_rate():
    assert parse_rate("100/s") == (100.0, 1.0)
    assert parse_rate("600 / m") == (600.0, 60.0)
    assert parse_rate("10/30s") == (10.0, 30.0)
    for bad in ("100", "100/x", "0/s", "-1/s", "1/0s"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_ratelimit_errors_are_located(write):
    p = write("r.yaml", """
        rules:
          - name: a
            ratelimit: {rate: 100/sec}
          - name: b
            ratelimit: {rate: 1/s, key: "response.status"}
          - name: c
            ratelimit: {rate: 1/s, key: "header:bad name"}
          - name: d
            ratelimit: {rate: 1/s, burst: 0}
          - name: e
            match: {status: 500}
            ratelimit: {rate: 1/s}
        """)
    errs = errors_of(p)
    assert errs == [
        f"{p}:3:23: rules[0].ratelimit.rate: expected a rate such as 100/s, 600/m, 5000/h or 10/30s, found '100/sec'",
        f"{p}:5:33: rules[1].ratelimit.key: a ratelimit key is computed before the app answers: it may read "
        "request, route, not response (in 'response.status')",
        f"{p}:7:33: rules[2].ratelimit.key: expected header:NAME with a header name, found 'header:bad name'",
        f"{p}:9:35: rules[3].ratelimit.burst: expected a number >= 1, found 0",
        f"{p}:12:16: ratelimit acts before the app is called, but this rule's match reads the response "
        "(status, response_headers, response.* or timing.*)"]


# -- cors ----------------------------------------------------------------------------------------
CORS = """
rules:
  - name: browser-api
    match: { path: "/api/**" }
    cors: { origins: ["https://app.example.com", "https://*.example.org"], methods: [GET, POST, PUT],
            headers: [Content-Type], expose_headers: [X-Total], credentials: true, max_age: 10m }
"""
APP = "https://app.example.com"


def _preflight(origin: str, method: str = "PUT", headers: str | None = "content-type") -> dict:
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    return h


async def test_cors_answers_preflights_itself(stack):
    s = await stack(CORS)
    r = await s.client.options("/api/items", headers=_preflight(APP))
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-allow-methods"] == "GET, POST, PUT"
    assert r.headers["access-control-allow-headers"] == "Content-Type"
    assert r.headers["access-control-max-age"] == "600"
    assert "Origin" in r.headers["vary"]
    r = await s.client.options("/api/items", headers=_preflight("https://shop.example.org"))
    assert r.headers["access-control-allow-origin"] == "https://shop.example.org"
    for refused in (_preflight("https://evil.example"), _preflight(APP, method="DELETE"),
                    _preflight(APP, headers="x-secret"), _preflight("https://example.org")):
        r = await s.client.options("/api/items", headers=refused)
        assert r.status_code == 204 and "access-control-allow-origin" not in r.headers, refused
    assert s.app.seen == []                                   # no preflight reached the app
    assert s.rt.counters["cors_preflights"] == {"browser-api": 6}
    r = await s.client.options("/api/items")                  # a plain OPTIONS is the app's
    assert r.status_code == 200 and len(s.app.seen) == 1


async def test_cors_headers_on_simple_requests_replace_the_apps(stack):
    s = await stack(CORS, app_headers="Access-Control-Allow-Origin: *\r\nVary: Accept\r\n")
    r = await s.client.get("/api/items", headers={"Origin": APP})
    assert r.status_code == 200
    assert r.headers.get_list("access-control-allow-origin") == [APP]
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-expose-headers"] == "X-Total"
    assert r.headers.get_list("vary") == ["Accept", "Origin"]
    r = await s.client.get("/api/items", headers={"Origin": "https://evil.example"})
    assert r.headers.get_list("access-control-allow-origin") == []  # the app's `*` is not let through
    assert r.headers.get_list("vary") == ["Accept", "Origin"]
    r = await s.client.get("/elsewhere", headers={"Origin": APP})
    assert r.headers["access-control-allow-origin"] == "*"          # outside the rule: the app's own


async def test_cors_in_shadow_mode_passes_preflights_to_the_app_and_counts(stack):
    s = await stack(shadowed(CORS))
    r = await s.client.options("/api/items", headers=_preflight(APP))
    assert r.status_code == 200 and len(s.app.seen) == 1
    assert "access-control-allow-origin" not in r.headers
    r = await s.client.get("/api/items", headers={"Origin": APP})
    assert "access-control-allow-origin" not in r.headers and "vary" not in r.headers
    await s.client.get("/api/items")                          # no Origin: nothing it would do
    assert s.rt.counters["shadow_hits"] == {"browser-api": {"cors": 2}}


def test_cors_star_with_credentials_is_refused_at_load_with_its_location(write):
    p = write("r.yaml", """
        rules:
          - name: a
            cors:
              origins: ["https://ok.example", "*"]
              credentials: true
          - name: b
            cors: {origins: ["https://app.example.com/"]}
          - name: c
            cors: {origins: ["app.example.com"]}
          - name: d
            match: {method: GET}
            cors: {origins: ["*"]}
          - name: e
            cors: {origins: ["*"], headers: ["*"], credentials: true}
        """)
    errs = errors_of(p)
    star = "(browsers refuse a wildcard on credentialed requests)"
    assert errs == [
        f"{p}:4:39: `*` cannot allow origins with credentials: true {star}; list the origins instead",
        f"{p}:7:22: rules[1].cors.origins[0]: an origin is scheme://host[:port] without a path (did you mean "
        "'https://app.example.com'?), found 'https://app.example.com/'",
        f"{p}:9:22: rules[2].cors.origins[0]: an origin starts with a scheme (did you mean "
        "'https://app.example.com'?), found 'app.example.com'",
        f"{p}:12:11: the rule's match.method (GET) leaves out OPTIONS, so preflight requests never reach cors; "
        "add OPTIONS or drop match.method",
        f"{p}:14:22: `*` cannot allow origins with credentials: true {star}; list the origins instead",
        f"{p}:14:38: `*` cannot allow request headers with credentials: true {star}; list the request headers instead"]


def test_origin_matching():
    o = Origins(["https://app.example.com", "https://*.example.org", "http://localhost:3000"])
    assert o.allows("https://app.example.com") and o.allows("HTTPS://APP.EXAMPLE.COM")
    assert o.allows("https://a.b.example.org") and o.allows("http://localhost:3000")
    for no in ("https://example.org", "http://a.example.org", "https://app.example.com.evil",
               "https://evil.example.org:8443", "http://localhost:3001"):
        assert not o.allows(no), no
    assert Origins(["*"]).allows("https://anything.example")
    assert origin_problem("https://*.example.org") is None and origin_problem("*") is None
