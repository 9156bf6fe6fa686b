"""Rules end to end through the real tunnel on loopback: a real app on port 0, a real client
(httpx), real webhook receivers (one that never answers, one that is down)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from types import SimpleNamespace

import httpx
import pytest

from decorator.actions.respond import SMALL_FILE
from decorator.proxy.tunnel import ProxyServer
from decorator.rules import Runtime, compile_rules, load_rules
from tests.rules.helpers import Receiver, closed_port


class App:
    """The app behind the proxy: /status/NNN answers NNN; everything else 200 with the request
    headers it got as JSON. Counts requests so tests can prove the app was (not) called."""

    def __init__(self) -> None:
        self.calls = 0
        self.port = 0

    async def start(self) -> App:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.calls += 1
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {}
                for ln in lines[1:]:
                    if ln:
                        k, _, v = ln.partition(":")
                        headers[k.strip().lower()] = v.strip()
                status = int(target.split("/")[2]) if target.startswith("/status/") else 200
                body = json.dumps(headers).encode() if method != "HEAD" else b""
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nServer: app\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class Recorder:
    def __init__(self) -> None:
        self.calls = []

    def record(self, ex, fields):
        self.calls.append((ex.method, ex.path, ex.route, ex.status, fields))


@pytest.fixture
async def stack(tmp_path):
    """stack(rules_text, files) -> namespace(client, app, rt, rec, server) around a real tunnel."""
    made = []

    async def build(rules: str, files: dict | None = None, app_up: bool = True, env: dict | None = None):
        for name, content in (files or {}).items():
            p = tmp_path / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
        (tmp_path / "rules.yaml").write_text(textwrap.dedent(rules))
        app = await App().start()
        if not app_up:
            app.server.close()
            await app.server.wait_closed()
        rec = Recorder()
        rt = Runtime(recorder=rec, pod="e2e", backoff=0.01)
        await rt.start()
        hooks = compile_rules(load_rules([str(tmp_path / "rules.yaml")], env=env or {}), rt)
        server = ProxyServer(target=("127.0.0.1", app.port), hooks=hooks)
        await server.start(host="127.0.0.1", port=0)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10)
        made.append((client, server, rt, app))
        return SimpleNamespace(client=client, app=app, rt=rt, rec=rec, server=server)
    yield build
    for client, server, rt, app in made:
        await client.aclose()
        await server.shutdown(drain_timeout=1.0)
        await rt.close(timeout=0.2)
        app.server.close()


CARD = """
rules:
  - name: friendly-404
    match: { status: 404, path: "/**", method: [GET, HEAD] }
    respond: { file: pages/404.html, content_type: text/html }
  - name: timing
    record: { timing: true }
  - name: page-on-5xx
    match: { status: 5xx }
    notify:
      url: ${ALERT_URL}
      cooldown: 60s
"""


async def test_card_rules_through_the_tunnel_with_a_receiver_that_never_answers(stack, tmp_path):
    slow = await Receiver([(None, {})]).start()
    try:
        s = await stack(CARD, {"pages/404.html": "<h1>friendly</h1>"},
                                              env={"ALERT_URL": slow.url})
        r = await s.client.get("/status/404")
        assert (r.status_code, r.text, r.headers["content-type"]) == (404, "<h1>friendly</h1>", "text/html")
        r = await s.client.post("/status/404")
        assert r.status_code == 404 and r.headers["content-type"] == "application/json"
        # The webhook receiver holds its connection forever; proxied 5xx answers still arrive.
        for _ in range(3):
            r = await s.client.get("/status/503")
            assert r.status_code == 503
        r = await s.client.get("/ok")
        assert r.status_code == 200
        assert [c[3] for c in s.rec.calls] == [404, 404, 503, 503, 503, 200]
        assert all(c[4] == frozenset({"timing"}) for c in s.rec.calls)
        assert s.rt.counters["notify_suppressed"] == {"page-on-5xx": 2}  # cooldown
        assert slow.attempts == 1
    finally:
        await slow.close()


async def test_big_respond_file_is_streamed_and_the_app_body_discarded(stack):
    big = bytes(range(256)) * ((SMALL_FILE * 3) // 256)
    s = await stack("""
        rules:
          - name: big
            match: {status: 404}
            respond: {file: big.bin, status: 200}
        """, {"big.bin": big})
    r = await s.client.get("/status/404")
    assert r.status_code == 200 and r.content == big
    assert int(r.headers["content-length"]) == len(big)


async def test_request_phase_answer_never_reaches_the_app_and_gets_response_headers(stack):
    s = await stack("""
        rules:
          - name: maintenance
            match: {path: /shop/**, method: GET}
            respond:
              status: 503
              body: "back soon ({request_id})"
              headers: {Retry-After: "120"}
          - name: security
            headers: {response: {set: {X-Content-Type-Options: nosniff}, remove: [Server]}}
        """)
    r = await s.client.get("/shop/cart")
    assert r.status_code == 503 and r.headers["retry-after"] == "120"
    assert r.text.startswith("back soon (") and r.headers["x-content-type-options"] == "nosniff"
    assert s.app.calls == 0
    r = await s.client.get("/other")
    assert r.status_code == 200 and s.app.calls == 1
    assert r.headers["x-content-type-options"] == "nosniff" and "server" not in r.headers


async def test_request_header_edits_reach_the_app_and_matchers_gate_them(stack):
    s = await stack("""
        rules:
          - name: tag-api
            match:
              path_regex: "^/api/v[0-9]+/"
              headers: {X-Team: {regex: "^core$"}}
              when: "request.query.trace == '1'"
            headers: {request: {set: {X-Traced: "{rule}"}, remove: [X-Secret]}}
        """)
    r = await s.client.get("/api/v2/x?trace=1", headers={"X-Team": "core", "X-Secret": "s"})
    seen = r.json()
    assert seen["x-traced"] == "tag-api" and "x-secret" not in seen
    r = await s.client.get("/api/v2/x?trace=0", headers={"X-Team": "core", "X-Secret": "s"})
    assert "x-traced" not in r.json() and r.json()["x-secret"] == "s"


async def test_route_templates_name_the_endpoint(stack):
    s = await stack("""
        rules:
          - name: users
            match: {path: "/users/{id}"}
            record: {}
        """)
    await s.client.get("/users/42")
    await s.client.get("/nope")
    assert s.rec.calls == [("GET", "/users/42", "/users/{id}", 200, frozenset({"timing", "status", "size"}))]


async def test_app_down_gets_the_friendly_5xx_page_and_a_down_receiver_changes_nothing(stack):
    dead = closed_port()
    s = await stack(f"""
        rules:
          - name: friendly-5xx
            match: {{status: 5xx}}
            respond: {{body: "sorry, {{status}}", content_type: text/plain}}
          - name: page
            match: {{status: 5xx}}
            notify: {{url: "http://127.0.0.1:{dead}/hook", retries: 1}}
        """, app_up=False)
    r = await s.client.get("/anything")
    assert r.status_code == 502 and r.text == "sorry, 502"
    await asyncio.wait_for(_until(lambda: s.rt.counters["notify_failed"].get("page") == 1), 10)
    r = await s.client.get("/again")
    assert r.status_code == 502


async def _until(pred):
    while not pred():
        await asyncio.sleep(0.01)


async def test_hook_swap_is_a_reload(stack, tmp_path):
    s = await stack("""
        rules:
          - {name: teapot, match: {path: /tea}, respond: {status: 418}}
        """)
    assert (await s.client.get("/tea")).status_code == 418
    (tmp_path / "rules.yaml").write_text("rules:\n  - {name: gone, match: {path: /tea}, respond: {status: 410}}\n")
    new = load_rules([str(tmp_path / "rules.yaml")])
    assert new.digest != s.server.hooks.ruleset.digest
    s.server.hooks = compile_rules(new, s.rt)
    assert (await s.client.get("/tea")).status_code == 410


async def test_receiver_answering_500_then_200_gets_the_event_once(stack):
    flaky = await Receiver([(500, {}), (200, {})]).start()
    try:
        s = await stack(f"""
            rules:
              - name: page
                match: {{status: 5xx}}
                notify: {{url: "{flaky.url}", retries: 2}}
            """)
        r = await s.client.get("/status/500")
        assert r.status_code == 500
        await asyncio.wait_for(_until(lambda: s.rt.counters["notify_sent"].get("page") == 1), 10)
        assert flaky.attempts == 2 and [e["response"]["status"] for e in flaky.events] == [500]
        assert flaky.events[0]["request"]["path"] == "/status/500"
    finally:
        await flaky.close()


async def test_replied_by_tells_a_maintenance_503_from_the_apps_through_the_tunnel(stack):
    """docs/rules.md's on-call page (`replied_by == 'app' || error != null`) fires for the app's 503
    and the sidecar's own 502 (app down), not for the maintenance 503; the events say who replied."""
    hook = await Receiver([(200, {})]).start()
    try:
        rules = f"""
            rules:
              - name: maintenance
                match: {{path: "/shop/**"}}
                respond: {{status: 503, body: down}}
              - name: page
                match: {{status: 5xx, when: "replied_by == 'app' || error != `null`"}}
                notify: {{url: "{hook.url}"}}
              - name: seen-sidecar
                match: {{status: 5xx, when: "replied_by == 'sidecar'"}}
                notify: {{url: "{hook.url}"}}
            """
        s = await stack(rules)
        assert (await s.client.get("/shop/cart")).status_code == 503
        assert (await s.client.get("/status/503")).status_code == 503
        down = await stack(rules, app_up=False)
        assert (await down.client.get("/api")).status_code == 502
        await asyncio.wait_for(_until(lambda: len(hook.events) == 4), 10)
        await asyncio.sleep(0.3)  # room for a wrong fifth event (the maintenance 503 paging) to land
        got = sorted((e["rule"], e["request"]["path"], e["response"]["status"], e["replied_by"])
                     for e in hook.events)
        assert got == [("page", "/api", 502, "sidecar"),
                       ("page", "/status/503", 503, "app"),
                       ("seen-sidecar", "/api", 502, "sidecar"),
                       ("seen-sidecar", "/shop/cart", 503, "sidecar")]
    finally:
        await hook.close()
