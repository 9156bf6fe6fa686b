"""The sidecar's real telemetry pusher against the real dashboard: what the proxy records shows up in
the dashboard's queries, with the token; the dashboard is stopped and restarted on the same port and
file mid-run, and the pushes resume with nothing lost."""

from __future__ import annotations

import asyncio
import time

from dash_helpers import Dashboard
from prometheus_client import CollectorRegistry

from decorator.proxy.hooks import Exchange
from decorator.telemetry import Telemetry

FAST = {"interval_resources": 0.05, "interval_stats": 0.1, "timeout": 1.0, "backoff_base": 0.02,
        "backoff_max": 0.1}


def exchange(path: str, status: int, ms: float) -> Exchange:
    ex = Exchange("GET", path, "1.1", [(b"Host", b"app")], "127.0.0.1:5000", request_id=f"rid-{path}")
    ex.status = status
    ex.t_response = ex.t_start + ms / 2000
    ex.t_end = ex.t_start + ms / 1000
    return ex


async def wait_until(cond, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(cond):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def hits(dash: Dashboard) -> dict[str, int]:
    return {e["endpoint"]: e["hits"] for e in dash.client.get("/api/endpoints").json()}


async def test_sidecar_pushes_reach_the_dashboard_and_resume_after_a_restart(tmp_path):
    db = tmp_path / "e2e.db"
    dash = await asyncio.to_thread(Dashboard, db, token="tok")
    port = int(dash.url.rsplit(":", 1)[1])
    tel = Telemetry(dashboard=dash.url, token="tok", pod="web-9", registry=CollectorRegistry(), **FAST)
    await tel.start()
    try:
        for i in range(5):
            ex = exchange(f"/items/{i}", 502 if i == 0 else 200, 20 + i)
            tel.hooks.on_request(ex)
            tel.hooks.on_complete(ex)
        await wait_until(lambda: hits(dash).get("/items/{id}") == 5, "the first stats")
        ov = dash.client.get("/api/overview").json()
        pod = {p["pod"]: p for p in ov["pods"]}["web-9"]
        assert pod["stale"] is False and pod["memory"]["total"] > 0
        errors = dash.client.get("/api/events").json()["errors"]
        assert [(e["pod"], e["endpoint"], e["status"]) for e in errors] == [("web-9", "/items/0", 502)]
        assert ov["totals"]["p50_ms"] is not None and 10 <= ov["totals"]["p50_ms"] <= 50

        await asyncio.to_thread(dash.stop)
        for i in range(3):
            ex = exchange(f"/items/{10 + i}", 200, 5)
            tel.hooks.on_request(ex)
            tel.hooks.on_complete(ex)
        failed = tel.pusher.failed
        await wait_until(lambda: tel.pusher.failed > failed, "pushes failing while the dashboard is down")

        dash = await asyncio.to_thread(Dashboard, db, port=port, token="tok")
        await wait_until(lambda: hits(dash).get("/items/{id}") == 8, "the pushes to resume")
        assert tel.pusher.dropped == 0
    finally:
        await tel.close()
        if dash.thread.is_alive():
            await asyncio.to_thread(dash.stop)
