"""The cors pack beyond what `tests:` cases can say: a browser's preflight-then-request sequence
through the real tunnel (a real app on port 0 that must never see the preflight), and the load-time
refusal of `*` with credentials, located in the pack's file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from decorator.errors import RulesInvalid
from decorator.proxy.tunnel import ProxyServer
from decorator.rules import Runtime, compile_rules, load_rules

PACK = Path(__file__).resolve().parent
WEB = "https://app.example.com"


async def test_preflight_then_request_through_the_tunnel():
    seen: list[bytes] = []

    async def app(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b" ", 1)[0])
                writer.write(b"HTTP/1.1 201 Created\r\nLocation: /api/orders/7\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    upstream = await asyncio.start_server(app, "127.0.0.1", 0)
    rt = Runtime()
    hooks = compile_rules(load_rules([str(PACK)], env={"CORS": "true", "CORS_CREDENTIALS": "true"}), rt)
    server = ProxyServer(target=("127.0.0.1", upstream.sockets[0].getsockname()[1]), hooks=hooks)
    await server.start(host="127.0.0.1", port=0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as c:
            pre = await c.options("/api/orders", headers={
                "Origin": WEB, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type"})
            assert pre.status_code == 204
            assert pre.headers["access-control-allow-origin"] == WEB
            assert pre.headers["access-control-allow-credentials"] == "true"
            assert "POST" in pre.headers["access-control-allow-methods"].split(", ")
            assert seen == []                                   # the app never saw the preflight
            r = await c.post("/api/orders", headers={"Origin": WEB, "Content-Type": "application/json"},
                             content=b"{}")
            assert r.status_code == 201 and seen == [b"POST"]
            assert r.headers["access-control-allow-origin"] == WEB
            assert r.headers["access-control-expose-headers"].startswith("Location")
            assert r.headers["vary"] == "Origin"
        assert rt.counters["cors_preflights"] == {"cors/cors": 1}
    finally:
        await server.shutdown(drain_timeout=1.0)
        upstream.close()


def test_a_wildcard_origin_with_credentials_is_refused_where_the_origin_is_written():
    with pytest.raises(RulesInvalid) as info:
        load_rules([str(PACK)], env={"CORS": "true", "CORS_ORIGIN": "*", "CORS_CREDENTIALS": "true"})
    [err] = info.value.errors
    assert str(err).startswith(f"{PACK / 'cors.yaml'}:24:17: `*` cannot allow origins with credentials: true")


def test_validate_prints_the_located_error_and_fails():
    r = subprocess.run([sys.executable, "-m", "decorator", "validate", str(PACK / "cors.yaml")], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "CORS_ORIGIN": "app.example.com",
                            "PYTHONPATH": str(PACK.parents[1])}, timeout=60, check=False)
    assert r.returncode == 1
    assert f"{PACK / 'cors.yaml'}:24:17: rules[0].cors.origins[0]: an origin starts with a scheme (did you " \
           "mean 'https://app.example.com'?), found 'app.example.com'" in r.stdout
    assert "invalid: 1 error" in r.stderr
