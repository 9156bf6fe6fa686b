"""A sidecar (real tunnel + telemetry) pushing to a real `decorator dashboard` process that is killed and
restarted mid-run: the proxied traffic never fails, the buffer stays bounded, drops are counted, data resumes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from decorator.telemetry import Telemetry
from tests.telemetry.helpers import App, wait_until
from tests.telemetry.test_telemetry_push import free_port

tunnel = pytest.importorskip("decorator.proxy.tunnel")
POD = "e2e-web-1"


class DashboardProcess:
    def __init__(self, port: int, db: Path, token: str) -> None:
        self.port, self.db, self.token = port, db, token
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        env = {**os.environ, "DASHBOARD_TOKEN": self.token}
        with open(self.db.with_suffix(".log"), "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "decorator", "dashboard", "--host", "127.0.0.1",
                                          "--port", str(self.port), "--db", str(self.db)],
                                         env=env, stdout=subprocess.DEVNULL, stderr=log)

    async def start(self) -> None:
        self.spawn()
        async with httpx.AsyncClient(timeout=1.0) as c:
            async def up() -> bool:
                try:
                    return (await c.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False
            for _ in range(1500):                        # readiness poll (up to ~30 s on a slow machine)
                assert self.proc.poll() is None, self.db.with_suffix(".log").read_text()
                if await up():
                    return
                await asyncio.sleep(0.02)
        raise AssertionError("dashboard did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def hits(port: int, token: str) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=2.0) as c:
        r = await c.get(f"http://127.0.0.1:{port}/api/endpoints", params={"pod": POD, "window": "1h",
                                                                         "limit": "100"})
        r.raise_for_status()
        return {e["endpoint"]: e["hits"] for e in r.json()}


async def test_dashboard_killed_and_restarted_mid_run(tmp_path):
    app = await App().start()
    dash = DashboardProcess(free_port(), tmp_path / "dash.db", "e2e-token")
    await dash.start()
    tel = Telemetry(dashboard=f"http://127.0.0.1:{dash.port}", token="e2e-token", pod=POD,
                    registry=CollectorRegistry(), interval_resources=0.1, interval_stats=0.2, timeout=1.0,
                    backoff_base=0.05, backoff_max=0.3, max_buffer=4)
    server = tunnel.ProxyServer(target=("127.0.0.1", app.port), hooks=tel.hooks)
    tel.add_source(lambda: server.stats)
    await server.start("127.0.0.1", 0)
    await tel.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10.0)
    statuses: list[int] = []

    async def send(n: int, path: str = "/items/{i}") -> None:
        for i in range(n):
            r = await client.get(path.format(i=len(statuses) + i))
            statuses.append(r.status_code)

    try:
        await send(20)
        await wait_until(lambda: tel.pusher.sent >= 2, what="first pushes")

        async def delivered(expected: int) -> bool:
            return (await hits(dash.port, dash.token)).get("/items/{id}", 0) >= expected
        for _ in range(500):
            if await delivered(20):
                break
            await asyncio.sleep(0.02)
        assert (await hits(dash.port, dash.token)) == {"/items/{id}": 20}

        dash.kill()
        max_buffered = 0
        while tel.pusher.dropped < 2:                  # traffic goes on while the dashboard is gone
            await send(5)
            max_buffered = max(max_buffered, len(tel.pusher.buffer))
            await asyncio.sleep(0.02)
        assert max_buffered <= 4 and tel.pusher.failed >= 1
        assert all(s == 200 for s in statuses), "proxied traffic failed while the dashboard was down"

        await dash.start()                              # same port, same database
        await send(1, "/marker")
        for _ in range(1000):
            got = await hits(dash.port, dash.token)
            if got.get("/marker") == 1 and not tel.pusher.buffer:
                break
            await asyncio.sleep(0.02)
        got = await hits(dash.port, dash.token)
        assert got.get("/marker") == 1
        items = len(statuses) - 1
        assert 20 < got["/items/{id}"] < items          # resumed; the dropped batches are missing
        assert all(s == 200 for s in statuses) and len(statuses) == items + 1
        assert server.stats["upstream_errors"] == 0 and server.stats["hook_errors"] == 0

        fams = {f.name: f for f in text_string_to_metric_families(tel.metrics.render()[0].decode())}
        assert fams["decorator_push_dropped"].samples[0].value >= 2
        count = sum(s.value for s in fams["http_server_request_duration_seconds"].samples
                    if s.name.endswith("_count"))
        assert count == len(statuses)
        assert tel.status()["aggregator"]["requests"] == len(statuses)
    finally:
        await client.aclose()
        await tel.close()
        await server.shutdown(drain_timeout=1.0)
        await app.stop()
        dash.stop()
