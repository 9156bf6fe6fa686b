"""The rate-limit pack beyond what `tests:` cases can say: separate buckets per key, refill over
(fake) time, a scan of keys that never grows memory past RATE_LIMIT_MAX_KEYS, and the pack through
the real tunnel (a real app on port 0, a real client) in shadow and in enforce mode."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from decorator.proxy.tunnel import ProxyServer
from decorator.rules import Runtime, compile_rules, load_rules
from decorator.rules.packtest import CaptureRuntime, simulate

PACK = str(Path(__file__).resolve().parent)
ENFORCE = {"RATE_LIMIT_MODE": "enforce", "RATE_LIMIT_RATE": "2/s", "RATE_LIMIT_BURST": "2",
           "RATE_LIMIT_KEY": "header:X-Api-Key", "RATE_LIMIT_MAX_KEYS": "100"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run(env: dict[str, str]):
    rt = CaptureRuntime()
    clock = rt.clock = Clock()
    return compile_rules(load_rules([PACK], env=env), rt), rt, clock


def _status(hooks, key: str, path: str = "/api/orders") -> int:
    return simulate(hooks, "GET", path, [(b"X-Api-Key", key.encode())]).status


def test_each_key_has_its_bucket_and_tokens_come_back_at_the_rate():
    hooks, rt, clock = _run(ENFORCE)
    assert [_status(hooks, "a") for _ in range(3)] == [200, 200, 429]
    assert _status(hooks, "b") == 200                       # another key is not affected
    clock.now += 0.5                                        # 2/s: one token per half second
    assert [_status(hooks, "a") for _ in range(2)] == [200, 429]
    clock.now += 10                                         # idle: back to a full burst, no more
    assert [_status(hooks, "a") for _ in range(3)] == [200, 200, 429]
    assert rt.counters["ratelimit_rejected"] == {"rate-limit/rate-limit": 3}


def test_a_scan_of_keys_is_bounded_by_max_keys():
    hooks, rt, clock = _run(ENFORCE)
    for i in range(2000):
        _status(hooks, f"scan-{i}")
    [limit] = [a for e in hooks._req.lookup("GET", "/api/x") for fn, _ in e.fns if (a := getattr(fn, "__self__", None))]
    assert len(limit.buckets.tat) == 100 and limit.buckets.evicted == 1900


async def test_the_pack_through_the_tunnel_in_shadow_then_enforce_mode():
    seen = []

    async def app(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                seen.append(1)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    upstream = await asyncio.start_server(app, "127.0.0.1", 0)
    rt = Runtime()
    env = {"RATE_LIMIT_RATE": "1/m", "RATE_LIMIT_BURST": "2"}
    server = ProxyServer(target=("127.0.0.1", upstream.sockets[0].getsockname()[1]),
                         hooks=compile_rules(load_rules([PACK], env=env), rt))
    await server.start(host="127.0.0.1", port=0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as c:
            assert [(await c.get("/api/x")).status_code for _ in range(4)] == [200] * 4
            assert len(seen) == 4 and rt.counters["shadow_hits"] == {"rate-limit/rate-limit": {"ratelimit": 2}}
            # The switch to enforce is a reload: the same runtime keeps the buckets shadow mode filled.
            server.hooks = compile_rules(load_rules([PACK], env={**env, "RATE_LIMIT_MODE": "enforce"}), rt)
            r = await c.get("/api/x")
            assert r.status_code == 429 and r.headers["retry-after"] == "60"
            assert (await c.get("/elsewhere")).status_code == 200
            assert len(seen) == 5
    finally:
        await server.shutdown(drain_timeout=1.0)
        upstream.close()
