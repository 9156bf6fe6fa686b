"""fault, basic_auth, forward_auth, mirror and retry end to end: a real app, a real auth service and a
real mirror target on port 0 behind a running tunnel, a real bcrypt htpasswd file, real clients."""

from __future__ import annotations

import asyncio
import base64
import textwrap
from types import SimpleNamespace

import bcrypt
import httpx
import pytest

from decorator.proxy.tunnel import ProxyServer
from decorator.rules import Runtime, compile_rules, load_rules
from decorator.telemetry.metrics import Metrics
from tests.proxy.conftest import read_response
from tests.rules.helpers import closed_port, errors_of


class Service:
    """A small HTTP/1.1 server on port 0: `answer(method, target, headers, body)` -> (status,
    headers, body) or None (never answer: a slow service). Keeps every request it got."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.got: list[SimpleNamespace] = []
        self.writers: set = set()
        self.arrived = asyncio.Event()

    async def start(self) -> Service:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader, writer):
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {}
                for ln in lines[1:]:
                    if ln:
                        k, _, v = ln.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.got.append(SimpleNamespace(method=method, target=target, headers=headers, body=body))
                self.arrived.set()
                out = self.answer(method, target, headers, body)
                if out is None:
                    await asyncio.sleep(3600)
                status, extra, rbody = out
                fields = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                writer.write(f"HTTP/1.1 {status} X\r\n{fields}Content-Length: {len(rbody)}\r\n\r\n".encode() + rbody)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self.server.close()
        for w in list(self.writers):
            w.close()


def app_answer(method, target, headers, body):
    """The app: /fail/N/KEY answers 503 the first N times per KEY, then 200; others 200."""
    return 200, {"X-Seen-Auth": headers.get("authorization", "-"), "X-Seen-User": headers.get("x-user", "-"),
                 "X-Seen-Remote": headers.get("x-remote-user", "-")}, f"{method} {target} {body.decode()}".encode()


class FlakyApp(Service):
    def __init__(self) -> None:
        super().__init__(self._answer)
        self.fails: dict[str, int] = {}

    def _answer(self, method, target, headers, body):
        if target.startswith("/fail/"):
            _, _, n, key = target.split("/")[:4]
            seen = self.fails[key] = self.fails.get(key, 0) + 1
            if seen <= int(n):
                return 503, {}, b"busy"
        return app_answer(method, target, headers, body)


@pytest.fixture
async def stack(tmp_path):
    """stack(rules, env, app_up, **runtime) -> namespace(client, app, rt, server, port)."""
    made = []

    async def build(rules: str, env: dict | None = None, app_up: bool = True, **runtime_kw):
        (tmp_path / "rules.yaml").write_text(textwrap.dedent(rules))
        app = await FlakyApp().start()
        if not app_up:
            await app.close()
        rt = Runtime(pod="e2e", **runtime_kw)
        await rt.start()
        hooks = compile_rules(load_rules([str(tmp_path / "rules.yaml")], env=env or {}), rt)
        server = ProxyServer(target=("127.0.0.1", app.port), hooks=hooks)
        await server.start(host="127.0.0.1", port=0)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10)
        made.append((client, server, rt, app))
        return SimpleNamespace(client=client, app=app, rt=rt, server=server, port=server.port, hooks=hooks)
    yield build
    for client, server, rt, app in made:
        await client.aclose()
        await server.shutdown(drain_timeout=1.0)
        await rt.close(timeout=0.2)
        await app.close()


async def raw_request(port: int, data: bytes, method: str = "GET"):
    """One request written in a single send (head and body together), as a small upload arrives."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    resp = await asyncio.wait_for(read_response(r, method), 10)
    w.close()
    return resp


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# ----------------------------------------------------------------------------- fault
async def test_fault_abort_answers_instead_of_the_app(stack):
    s = await stack("""
        rules:
          - name: chaos
            match: { path: "/api/orders/**" }
            fault: { abort: 503 }
    """)
    r = await s.client.get("/api/orders/7")
    assert r.status_code == 503 and "fault injected by rule chaos" in r.text
    assert s.app.got == []
    r = await s.client.get("/api/other")
    assert r.status_code == 200 and len(s.app.got) == 1
    assert s.rt.counters["fault_aborts"] == {"chaos": 1}


async def test_fault_delay_never_blocks_the_event_loop(stack):
    s = await stack("""
        rules:
          - name: slow
            match: { path: "/slow/**" }
            fault: { delay: 400ms }
    """)
    order = []

    async def get(path):
        r = await s.client.get(path)
        order.append((path, r.status_code))

    slow = asyncio.create_task(get("/slow/x"))
    await asyncio.sleep(0.05)
    await asyncio.gather(*(get(f"/fast/{i}") for i in range(5)))
    assert not slow.done()  # five other requests were served while this one waited
    await slow
    assert order[-1] == ("/slow/x", 200) and len(order) == 6
    assert s.rt.counters["fault_delays"] == {"slow": 1}


async def test_fault_delay_then_abort_and_independent_draws(stack):
    s = await stack("""
        rules:
          - name: both
            fault: { delay: 10ms, delay_percent: 50, abort: 500, abort_percent: 50 }
    """)
    fault = s.hooks._req.lookup("GET", "/")[0].fns[0][0].__self__
    draws = iter([0.1, 0.9,   # delayed, not aborted
                  0.9, 0.1,   # aborted, not delayed
                  0.1, 0.1,   # both
                  0.9, 0.9])  # neither
    fault._random = lambda: next(draws)
    statuses = [(await s.client.get(f"/{i}")).status_code for i in range(4)]
    assert statuses == [200, 500, 500, 200]
    assert s.rt.counters["fault_delays"] == {"both": 2}
    assert s.rt.counters["fault_aborts"] == {"both": 2}


def test_fault_percentages_are_independent_over_many_requests():
    """delay_percent and abort_percent are two draws: the share aborted among delayed requests
    is the overall abort share (not 0, not 100%)."""
    from decorator.actions.fault import Fault
    from decorator.rules.ruleset import Plain
    from decorator.actions.registry import RuleInfo
    import random as _random
    rng = _random.Random(7)
    rt = Runtime()
    f = Fault(Plain({"delay": 0.0, "delay_percent": 50.0, "abort": 503, "abort_percent": 50.0}),
              RuleInfo("r", False, "."), None, rt)
    f._random = rng.random
    f._delay = 1e-9  # counted as a delay, never awaited here
    both = 0
    for _ in range(4000):
        r = f.request(None)
        if hasattr(r, "close"):  # a coroutine: delayed (and maybe aborted)
            both += asyncio.run(r) is not None
    delayed, aborted = rt.counters["fault_delays"]["r"], rt.counters["fault_aborts"]["r"]
    assert 1800 < delayed < 2200 and 1800 < aborted < 2200
    assert 800 < both < 1200  # about a quarter: independent


# ----------------------------------------------------------------------------- basic_auth
@pytest.fixture
def htpasswd(tmp_path):
    lines = [f"alice:{bcrypt.hashpw(b'wonderland', bcrypt.gensalt(4)).decode()}",
             "# a comment",
             f"bob:{bcrypt.hashpw('bü'.encode(), bcrypt.gensalt(5)).decode()}"]
    (tmp_path / "admin.htpasswd").write_text("\n".join(lines) + "\n")
    return "admin.htpasswd"


async def test_basic_auth_challenges_checks_and_strips_credentials(stack, htpasswd):
    s = await stack("""
        rules:
          - name: admin-guard
            match: { path: "/admin/**" }
            basic_auth: { realm: admin, users_file: admin.htpasswd, user_header: X-Remote-User }
    """)
    r = await s.client.get("/admin/")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Basic realm="admin", charset="UTF-8"'
    for creds in (basic("alice", "wrong"), basic("mallory", "wonderland"), {"Authorization": "Basic !!"},
                  {"Authorization": "Bearer x"}, {"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}):
        r = await s.client.get("/admin/x", headers=creds)
        assert r.status_code == 401, creds
    assert s.app.got == []  # no rejected request reached the app
    for _ in range(2):  # the second time from the verified cache
        r = await s.client.get("/admin/x", headers={**basic("alice", "wonderland"), "X-Remote-User": "root"})
        assert r.status_code == 200
        assert r.headers["x-seen-auth"] == "-" and r.headers["x-seen-remote"] == "alice"
    r = await s.client.get("/admin/y", headers=basic("bob", "bü"))
    assert r.status_code == 200
    r = await s.client.get("/public")  # outside the rule: untouched
    assert r.status_code == 200
    assert s.rt.counters["auth_denied"] == {"admin-guard": 6}
    assert s.rt.counters["auth_allowed"] == {"admin-guard": 3}


async def test_basic_auth_forward_credentials_keeps_the_header(stack, htpasswd):
    s = await stack("""
        rules:
          - name: guard
            basic_auth: { users_file: admin.htpasswd, forward_credentials: true }
    """)
    creds = basic("alice", "wonderland")
    r = await s.client.get("/x", headers=creds)
    assert r.status_code == 200 and r.headers["x-seen-auth"] == creds["Authorization"]
    assert (await s.client.get("/x")).headers["www-authenticate"] == 'Basic realm="restricted", charset="UTF-8"'


async def test_bcrypt_runs_off_the_event_loop(stack, tmp_path):
    slow_hash = bcrypt.hashpw(b"pw", bcrypt.gensalt(12)).decode()  # a few hundred ms per check
    (tmp_path / "slow.htpasswd").write_text(f"carol:{slow_hash}\n")
    s = await stack("""
        rules:
          - name: guard
            match: { path: "/admin/**" }
            basic_auth: { users_file: slow.htpasswd }
    """)
    login = asyncio.create_task(s.client.get("/admin/", headers=basic("carol", "pw")))
    await asyncio.sleep(0.02)
    for i in range(3):
        assert (await s.client.get(f"/free/{i}")).status_code == 200
    assert not login.done()  # served while bcrypt was still hashing in its thread
    assert (await login).status_code == 200


def test_basic_auth_load_errors_are_located(write, tmp_path):
    (tmp_path / "mixed.htpasswd").write_text(
        f"ok:{bcrypt.hashpw(b'x', bcrypt.gensalt(4)).decode()}\nold:$apr1$abc$def\nbroken\n")
    path = write("r.yaml", """
        rules:
          - name: guard
            basic_auth: { users_file: mixed.htpasswd }
          - name: inline
            basic_auth: { users: { eve: "plaintext" } }
          - name: missing
            basic_auth: { users_file: nope.htpasswd }
          - name: nothing
            basic_auth: { realm: x }
    """)
    errors = errors_of(path)
    assert any(":3:" in e and "mixed.htpasswd:2: user 'old'" in e and "Apache MD5" in e for e in errors), errors
    assert any("mixed.htpasswd:3: expected user:hash" in e for e in errors), errors
    assert any(":5:" in e and "user 'eve'" in e and "only bcrypt" in e for e in errors), errors
    assert any(":7:" in e and "file not found" in e for e in errors), errors
    assert any(":9:" in e and "needs `users_file`, `users` or both" in e for e in errors), errors


# ----------------------------------------------------------------------------- forward_auth
def auth_answer(method, target, headers, body):
    if headers.get("cookie") == "session=ok":
        return 200, {"X-User": "alice", "X-Other": "not copied"}, b""
    return 302, {"Location": "https://login.example.com/?next=" + headers.get("x-forwarded-uri", "")}, b"log in"


@pytest.fixture
async def auth():
    svc = await Service(auth_answer).start()
    yield svc
    await svc.close()


async def test_forward_auth_lets_2xx_through_with_copied_headers(stack, auth):
    s = await stack("""
        rules:
          - name: sso
            match: { path: "/app/**" }
            forward_auth: { url: "${AUTH}/verify", copy_headers: [X-User], timeout: 2s }
    """, env={"AUTH": auth.url})
    r = await s.client.get("/app/page?q=1", headers={"Cookie": "session=ok", "X-User": "spoofed"})
    assert r.status_code == 200 and r.headers["x-seen-user"] == "alice"
    got = auth.got[0]
    assert (got.method, got.target) == ("GET", "/verify")
    assert got.headers["x-forwarded-method"] == "GET" and got.headers["x-forwarded-uri"] == "/app/page?q=1"
    assert got.headers["cookie"] == "session=ok" and got.headers["host"] == f"127.0.0.1:{auth.port}"
    assert got.headers["x-forwarded-host"] == f"127.0.0.1:{s.port}"
    # Anything else is the client's answer, and the app never sees the request.
    r = await s.client.get("/app/secret", headers={"X-User": "spoofed"})
    assert (r.status_code, r.headers["location"], r.text) == (
        302, "https://login.example.com/?next=/app/secret", "log in")
    assert len(s.app.got) == 1
    assert s.rt.counters["auth_allowed"] == {"sso": 1} and s.rt.counters["auth_denied"] == {"sso": 1}


async def test_forward_auth_post_body_goes_to_the_app_not_the_service(stack, auth):
    s = await stack("""
        rules:
          - name: sso
            forward_auth: { url: "${AUTH}/verify" }
    """, env={"AUTH": auth.url})
    r = await s.client.post("/form", content=b"a=1", headers={"Cookie": "session=ok"})
    assert r.status_code == 200 and r.text == "POST /form a=1"
    assert auth.got[0].body == b"" and "content-length" not in auth.got[0].headers


@pytest.mark.parametrize("on_error", ["deny", "allow"])
async def test_forward_auth_down_fails_closed_unless_allowed(stack, on_error):
    s = await stack(f"""
        rules:
          - name: sso
            forward_auth: {{ url: "http://127.0.0.1:{closed_port()}/verify", on_error: {on_error} }}
    """)
    r = await s.client.get("/x")
    assert r.status_code == (503 if on_error == "deny" else 200)
    assert s.rt.counters["auth_errors"] == {"sso": 1}


async def test_forward_auth_timeout_fails_closed(stack):
    slow = await Service(lambda *a: None).start()
    try:
        s = await stack("""
            rules:
              - name: sso
                forward_auth: { url: "${AUTH}/verify", timeout: 200ms }
        """, env={"AUTH": slow.url})
        r = await s.client.get("/x")
        assert r.status_code == 503 and "authentication service unavailable" in r.text
        assert s.app.got == []
    finally:
        await slow.close()


# ----------------------------------------------------------------------------- mirror
async def test_mirror_sends_a_copy_with_body_and_the_real_response_is_unchanged(stack):
    target = await Service(lambda *a: (500, {}, b"staging broke")).start()
    try:
        s = await stack("""
            rules:
              - name: to-staging
                match: { path: "/api/**" }
                mirror: { url: "${STAGING}/shadow" }
        """, env={"STAGING": target.url})
        resp = await raw_request(s.port, b"PUT /api/doc?v=2 HTTP/1.1\r\nHost: shop\r\nX-Trace: t1\r\n"
                                         b"Content-Length: 5\r\n\r\nhello", "PUT")
        assert (resp.status, resp.body) == (200, b"PUT /api/doc?v=2 hello")
        await asyncio.wait_for(target.arrived.wait(), 5)
        copy = target.got[0]
        assert (copy.method, copy.target, copy.body) == ("PUT", "/shadow/api/doc?v=2", b"hello")
        assert copy.headers["x-trace"] == "t1" and copy.headers["x-forwarded-host"] == "shop"
        r = await s.client.get("/other")
        assert r.status_code == 200
        await asyncio.sleep(0.1)
        assert len(target.got) == 1  # outside the rule: no copy
        assert s.rt.counters["mirror_sent"] == {"to-staging": 1}
    finally:
        await target.close()


async def test_mirror_target_slow_or_down_never_delays_the_real_response(stack):
    slow = await Service(lambda *a: None).start()
    try:
        s = await stack("""
            rules:
              - name: slow-copy
                match: { path: "/a/**" }
                mirror: { url: "${SLOW}", timeout: 30s }
              - name: down-copy
                match: { path: "/b/**" }
                mirror: { url: "http://127.0.0.1:${DOWN}" }
        """, env={"SLOW": slow.url, "DOWN": str(closed_port())}, mirror_queue=2, mirror_concurrency=1)
        statuses = [(await s.client.get(f"/a/{i}")).status_code for i in range(8)]
        statuses += [(await s.client.get(f"/b/{i}")).status_code for i in range(2)]
        assert statuses == [200] * 10
        # One copy is stuck at the slow target, two wait in the queue, the rest are dropped.
        assert s.rt.counters["mirror_dropped"]["slow-copy"] >= 5
        assert s.rt.counters["mirror_dropped"].get("down-copy", 0) <= 2
    finally:
        await slow.close()


async def test_mirror_skips_bodies_over_max_body_and_samples(stack):
    target = await Service(lambda *a: (200, {}, b"")).start()
    try:
        s = await stack("""
            rules:
              - name: small-only
                match: { path: "/up/**" }
                mirror: { url: "${T}", max_body: 4 }
              - name: never
                match: { path: "/none/**" }
                mirror: { url: "${T}", percent: 0 }
        """, env={"T": target.url})
        resp = await raw_request(s.port, b"POST /up/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", "POST")
        assert resp.status == 200
        for _ in range(3):
            assert (await s.client.get("/none/x")).status_code == 200
        await asyncio.sleep(0.1)
        assert target.got == []
        assert s.rt.counters["mirror_skipped"] == {"small-only": 1}
    finally:
        await target.close()


# ----------------------------------------------------------------------------- retry
async def test_retry_against_an_app_that_fails_then_succeeds(stack):
    s = await stack("""
        rules:
          - name: retry-idempotent
            retry: { attempts: 2, on: [502, 503, connect-failure], budget: 100% }
    """)
    r = await s.client.get("/fail/2/a")
    assert r.status_code == 200 and s.app.fails["a"] == 3
    r = await s.client.get("/fail/3/b")  # one more failure than attempts: the client gets it
    assert r.status_code == 503 and s.app.fails["b"] == 3
    resp = await raw_request(s.port, b"PUT /fail/1/c HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\ndata", "PUT")
    assert (resp.status, resp.body) == (200, b"PUT /fail/1/c data")  # the body went again, whole
    r = await s.client.post("/fail/1/d", content=b"x")  # not idempotent: never retried
    assert r.status_code == 503 and s.app.fails["d"] == 1
    assert s.rt.counters["retries"] == {"retry-idempotent": 5}


async def test_retry_budget_caps_retries_as_a_share_of_traffic(stack):
    s = await stack("""
        rules:
          - name: capped
            retry: { attempts: 1, on: [503], budget: 10% }
    """)
    for i in range(20):
        r = await s.client.get(f"/fail/1000/k{i}")
        assert r.status_code == 503
    # 10% of 20 requests, plus the floor of 3 per window.
    assert s.rt.counters["retries"] == {"capped": 5}
    assert s.rt.counters["retry_budget_exhausted"] == {"capped": 15}
    assert sum(s.app.fails.values()) == 25
    body = render_metrics(s.rt)
    assert 'decorator_retries_total{rule="capped"} 5.0' in body
    assert 'decorator_retry_budget_exhausted_total{rule="capped"} 15.0' in body


async def test_retry_on_connect_failure(stack):
    s = await stack("""
        rules:
          - name: again
            retry: { attempts: 2, on: [connect-failure] }
    """, app_up=False)
    r = await s.client.get("/x")
    assert r.status_code == 502
    assert s.server.upstream_stats["connect_errors"] == 3
    assert s.rt.counters["retries"] == {"again": 2}


def render_metrics(rt: Runtime) -> str:
    m = Metrics(process=False)
    m.add_source(lambda: rt.counters)
    return m.render()[0].decode()


def test_retry_rule_matching_on_the_response_is_a_located_error(write):
    path = write("r.yaml", """
        rules:
          - name: r
            match: { status: 503 }
            retry: { on: [503, conect-failure] }
    """)
    errors = errors_of(path)
    assert any("did you mean 'connect-failure'" in e and ":4:" in e for e in errors), errors


# ----------------------------------------------------------------------------- shadow mode
async def test_shadow_mode_for_each_action_applies_nothing_and_counts(stack, htpasswd, auth):
    target = await Service(lambda *a: (200, {}, b"")).start()
    try:
        s = await stack("""
            mode: shadow
            rules:
              - name: chaos
                match: { path: "/chaos/**" }
                fault: { delay: 5s, abort: 503 }
              - name: guard
                match: { path: "/admin/**" }
                basic_auth: { users_file: admin.htpasswd }
              - name: sso
                match: { path: "/app/**" }
                forward_auth: { url: "${AUTH}/verify", copy_headers: [X-User] }
              - name: copy
                match: { path: "/api/**" }
                mirror: { url: "${T}" }
              - name: again
                match: { path: "/fail/**" }
                retry: { attempts: 2, on: [503] }
        """, env={"AUTH": auth.url, "T": target.url})
        r = await s.client.get("/chaos/x")
        assert r.status_code == 200  # not aborted, and not delayed by 5s (the client's timeout is 10s)
        r = await s.client.get("/admin/x")
        assert r.status_code == 200 and "www-authenticate" not in r.headers
        r = await s.client.get("/app/x", headers={"X-User": "client-said"})
        assert r.status_code == 200 and r.headers["x-seen-user"] == "client-said"
        assert auth.got == []  # shadow mode sends nothing
        r = await s.client.get("/api/x")
        assert r.status_code == 200
        r = await s.client.get("/fail/1/s")
        assert r.status_code == 503 and s.app.fails["s"] == 1  # not retried
        await asyncio.sleep(0.1)
        assert target.got == []
        assert s.rt.counters["shadow_hits"] == {
            "chaos": {"fault": 1}, "guard": {"basic_auth": 1}, "sso": {"forward_auth": 1},
            "copy": {"mirror": 1}, "again": {"retry": 1}}
        for counter in ("fault_aborts", "fault_delays", "auth_denied", "auth_allowed", "mirror_sent", "retries"):
            assert s.rt.counters[counter] == {}, counter
        # Credentials the rule would accept are not a would-be 401 once the enforcing path verified them;
        # without a verification, shadow mode says why it counts one.
        r = await s.client.get("/admin/y", headers=basic("nobody", "x"))
        assert r.status_code == 200 and s.rt.counters["shadow_hits"]["guard"] == {"basic_auth": 2}
    finally:
        await target.close()


# ----------------------------------------------------------------------------- explain
def test_explain_says_what_the_new_actions_would_do(write):
    import subprocess
    import sys
    path = write("r.yaml", """
        rules:
          - name: sso
            match: { path: "/app/**" }
            forward_auth: { url: "http://auth.internal/verify" }
          - name: copy
            mirror: { url: "http://staging:8080" }
          - name: again
            retry: { attempts: 2, on: [503] }
          - name: chaos
            match: { path: "/api/**" }
            fault: { abort: 500 }
    """)
    r = subprocess.run([sys.executable, "-m", "decorator", "explain", "--rules", path, "GET /app/x?y=1", "--status",
                        "503"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "sso" in out and "forward_auth    MATCH" in out
    assert "note: forward_auth would ask http://auth.internal/verify; explain does not call it" in out
    assert "note: copy would send a copy: GET http://staging:8080/app/x?y=1" in out
    assert "note: retry rules would send the request again 2 times" in out
    r = subprocess.run([sys.executable, "-m", "decorator", "explain", "--rules", path, "GET /api/x"],
                       capture_output=True, text=True, timeout=60)
    assert "status: 500 (answered by the sidecar: the app is not called)" in r.stdout, r.stdout


# ----------------------------------------------------------------------------- decorator test
def test_pack_tests_fake_the_auth_service_capture_copies_and_count_retries(write):
    from decorator.rules.packtest import run_paths
    path = write("pack.yaml.d/p.yaml", """
        rules:
          - name: sso
            match: { path: "/app/**" }
            forward_auth: { url: "http://auth/verify", copy_headers: [X-User] }
          - name: copy
            match: { path: "/api/**" }
            mirror: { url: "http://staging:8080" }
          - name: again
            retry: { attempts: 2, on: [503] }
        tests:
          - name: the service allows and names the user
            request: GET /app/x
            forward_auth: { status: 200, headers: { X-User: alice } }
            expect: { status: 200, upstream_headers: { X-User: alice } }
          - name: the service's denial is the answer
            request: GET /app/x
            forward_auth: { status: 302, headers: { Location: /login } }
            expect: { status: 302, headers: { Location: /login } }
          - name: no answer given counts as unreachable
            request: GET /app/x
            expect: { status: 503 }
          - name: copies are captured
            request: GET /api/x
            expect: { mirror: [copy] }
          - name: retried against the fake app
            request: GET /api/x
            upstream: { status: 503 }
            expect: { status: 503, retries: 2, mirror: [copy] }
          - name: a failing expectation is reported
            request: GET /other
            expect: { retries: 1, mirror: [copy] }
    """)
    lines: list[str] = []
    passed, failed, broken = run_paths([path], out=lines.append)
    assert (passed, failed, broken) == (5, 1, 0), lines
    text = "\n".join(lines)
    assert "retries: expected 1, got 0" in text and "mirror: expected copies from ['copy'], got []" in text
