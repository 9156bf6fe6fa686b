"""The page in a real headless browser (Debian's chromium through Playwright, never a download): data
posted through the API shows up, the charts draw, stale pods are marked, the pod view works and the
page refreshes itself without reloading. Set DASHBOARD_SCREENSHOT=docs/dashboard.png to refresh the
README's screenshot."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from dash_helpers import endpoint, resources, stats

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
                                reason="Debian's chromium is not installed (`make system-deps` installs it)")

ROUTES = [("/api/users/{id}", "GET", 18), ("/api/orders", "POST", 140), ("/api/search", "GET", 650),
          ("/static/app.js", "GET", 3), ("/api/report", "GET", 1600), ("/healthz", "GET", 1)]
PODS = ("web-7d9f-x2kq", "web-7d9f-m8zt", "web-7d9f-p4lc")


def _cpus(times: list[list[float]], busy: list[float]) -> list[dict]:
    """Advance cumulative per-CPU times (as node's os.cpus() reports them) by 10 s at the given loads."""
    for t, b in zip(times, busy):
        t[0] += 1000 * b
        t[1] += 1000 * (1 - b)
    return [{"model": "Test CPU", "speed": 2400, "times": {"user": u, "nice": 0, "sys": 0, "idle": i, "irq": 0}}
            for u, i in times]


def _history(dash, clock, rng: random.Random) -> None:
    """Fifteen minutes of pushes from three pods, every 10 s, as sidecars send them; the third pod went
    quiet 30 s ago (stale)."""
    end = clock.t
    clock.t = end - 900
    cpu_times = {pod: [[0.0, 0.0] for _ in range(4)] for pod in PODS}
    tick = 0
    while clock.t <= end:
        tick += 1
        wave = 1 + 0.5 * ((tick % 60) / 60)
        for n, pod in enumerate(PODS):
            if n == 2 and clock.t > end - 30:
                continue
            eps = []
            for path, method, base in ROUTES:
                k = max(1, int(rng.gauss(12 * wave if base < 100 else 4, 2)))
                lat = [max(0.2, rng.lognormvariate(0, 0.4) * base * (1.3 if n == 2 else 1)) for _ in range(k)]
                codes = [503 if rng.random() < (0.06 if path == "/api/report" else 0.004) else 200 for _ in lat]
                eps.append(endpoint(path, lat, method=method, statuses=codes, file=path.endswith(".js")))
            samples = [{"endpoint": e["endpoint"].replace("{id}", str(rng.randint(1, 999))), "route": e["endpoint"],
                        "method": e["method"], "status": 503, "time_ms": round(rng.uniform(900, 2500), 1),
                        "started": clock.t, "request_id": f"req-{tick}-{n}", "error": None}
                       for e in eps if e["status"]["5xx"]][:2]
            dash.client.post("/stats", json={**stats(pod, eps, samples), "interval": 10.0}).raise_for_status()
            body = resources(pod, free=(3 << 30) - n * (400 << 20) - rng.randint(0, 50 << 20), container={
                "memory_usage": (180 + 40 * n << 20) + rng.randint(0, 8 << 20), "memory_limit": 512 << 20,
                "cpu_usage_seconds": tick * 0.1, "cpu_limit_cores": 1.0, "cpu_percent": 8 + 6 * n + rng.random() * 4})
            body["resource"]["cpus"] = _cpus(cpu_times[pod], [min(0.95, 0.15 + 0.12 * n + 0.1 * c + 0.05 * rng.random())
                                                            for c in range(4)])
            dash.client.post("/resources", json=body).raise_for_status()
        clock.advance(10)
    clock.t = end
    dash.client.post("/events", json={
        "event": "rule.matched", "rule": "page-on-5xx", "pod": PODS[2], "count": 7, "window_s": 60,
        "request": {"method": "GET", "path": "/api/report"}, "response": {"status": 503},
        "message": "7 responses >= 500 in 60 s"}).raise_for_status()


def test_page_shows_posted_data_charts_and_stale_pods(start_dashboard, clock, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)   # generous: the whole suite may share two busy cores
    dash = start_dashboard(clock=clock, stale_after=10)
    _history(dash, clock, random.Random(7))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                     args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)   # CSP too
            page.goto(dash.url + "/")

            # Posted data appears: pods, endpoints with seed colours, errors and alerts.
            stale = page.locator(f'.pod.stale[data-pod="{PODS[2]}"]')
            expect(stale).to_be_visible()
            expect(stale.locator(".badge")).to_contain_text("stale")
            for pod in PODS[:2]:
                expect(page.locator(f'.pod[data-pod="{pod}"]')).not_to_have_class("pod stale")
                expect(page.locator(f'.pod[data-pod="{pod}"] .badge')).to_have_text("live")
            table = page.locator("#endpoints tbody")
            expect(table).to_contain_text("/api/users/{id}")
            expect(table.locator("tr", has_text="/api/users/{id}").locator(".lat").first).to_have_class("lat lat-good")
            expect(table.locator("tr", has_text="/api/search").locator(".lat").first).to_have_class("lat lat-slow")
            expect(table.locator("tr", has_text="/api/report").locator(".lat").first).to_have_class("lat lat-bad")
            expect(table.locator("tr", has_text="/api/orders").locator(".lat").first).to_have_class("lat lat-ok")
            expect(page.locator("#alerts tbody")).to_contain_text("page-on-5xx")
            expect(page.locator("#errors tbody")).to_contain_text("503")
            expect(page.locator("#kpi-pods")).to_contain_text("1")

            # Every chart drew a canvas of non-zero size.
            for name in ("rps", "latency", "status", "cpu", "memory"):
                canvas = page.locator(f"#chart-{name} canvas").first
                expect(canvas).to_be_visible()
                box = canvas.bounding_box()
                assert box and box["width"] > 100 and box["height"] > 50, (name, box)
            expect(page.locator("#chart-cpu .u-legend")).to_contain_text(PODS[0])

            if os.environ.get("DASHBOARD_SCREENSHOT"):
                page.screenshot(path=os.environ["DASHBOARD_SCREENSHOT"], full_page=True)

            # It refreshes itself (fetch, no reload): new data shows up while a page-level marker survives.
            page.evaluate("window.__marker = 'still here'")
            dash.client.post("/stats", json=stats(PODS[0], [endpoint("/fresh/endpoint", [5] * 500)])).raise_for_status()
            expect(table).to_contain_text("/fresh/endpoint", timeout=10_000)
            assert page.evaluate("window.__marker") == "still here"

            # The pod view: click a card, the scope follows, the CPU chart shows node and container lines.
            page.locator(f'.pod[data-pod="{PODS[1]}"]').click()
            expect(page.locator("#pod-name")).to_have_text(PODS[1])
            expect(page.locator(f'.pod.selected[data-pod="{PODS[1]}"]')).to_be_visible()
            expect(page.locator("#chart-cpu .u-legend")).to_contain_text("container CPU %")
            expect(table).not_to_contain_text("/fresh/endpoint")     # that came from another pod
            page.locator("#fleet-link").click()
            expect(page.locator("#pod-crumb")).to_be_hidden()
            expect(table).to_contain_text("/fresh/endpoint")

            # One endpoint alone: click its row; its latency chart is the slow one.
            table.locator("tr", has_text="/api/report").click()
            expect(page.locator("#endpoint-name")).to_have_text("/api/report")
            expect(table.locator("tr.selected")).to_contain_text("/api/report")
            page.wait_for_function("() => location.hash.includes('endpoint=')")
            page.locator("#endpoint-clear").click()
            expect(page.locator("#endpoint-crumb")).to_be_hidden()
            assert errors == []
        finally:
            browser.close()


def test_empty_dashboard_page_says_so_without_errors(start_dashboard, clock):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)
    dash = start_dashboard(clock=clock)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                     args=ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(dash.url + "/#pod=nobody")
            expect(page.locator("#conn")).to_have_text("live")
            expect(page.locator("#pods")).to_contain_text("No pod has reported")
            expect(page.locator("#endpoints tbody")).to_contain_text("No traffic")
            expect(page.locator("#pod-name")).to_have_text("nobody")
            expect(page.locator("#chart-cpu")).to_contain_text("No data")
            assert errors == []
        finally:
            browser.close()


def test_page_is_honest_about_rates_capacity_and_unmatched_paths(start_dashboard, clock):
    """The issue's three cases in the browser: 30/s for the last minute of 15 shows 30/s now with the 2/s
    average labelled as one; a container without limits at 198% of one core on a 4-core node reads
    49.5% of 4 cores (50% on its card, 49.5 drawn on the CPU chart); the scan is one grouped `(unmatched)` row."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)
    dash = start_dashboard(clock=clock, stale_after=30)
    clock.t = float(int(clock.t) // 60 * 60)
    unlimited = {"memory_usage": 300 << 20, "memory_limit": None, "cpu_usage_seconds": 9.0,
                 "cpu_limit_cores": None, "cpu_percent": 198.0}
    capped = {"memory_usage": 256 << 20, "memory_limit": 512 << 20, "cpu_usage_seconds": 2.0,
              "cpu_limit_cores": 0.5, "cpu_percent": 40.0}
    for tick in range(6):
        clock.advance(10)
        body = stats("busy-1", [endpoint("/api/users/{id}", [8.0] * 240),
                                endpoint("(unmatched)", [2.0] * 60, statuses=[404] * 60)])
        body["interval"] = 10.0
        dash.client.post("/stats", json=body).raise_for_status()
        for pod, container in (("busy-1", unlimited), ("capped-1", capped)):
            dash.client.post("/resources", json=resources(pod, tick=tick + 1, cpus=4, total=8 << 30,
                                                          container=container)).raise_for_status()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                     args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(dash.url + "/")

            expect(page.locator("#kpi-rps")).to_have_text("30")
            expect(page.locator("#kpi-rps-note")).to_have_text("last 30 s · avg 2 over 15 min")
            expect(page.locator("#kpi-requests")).to_have_text("1800")
            busy = page.locator('.pod[data-pod="busy-1"]')
            expect(busy.locator(".row.traffic")).to_contain_text("30/s now")
            expect(busy.locator(".row.traffic")).to_contain_text("avg 2/s")
            expect(busy.locator(".row.ccpu")).to_contain_text("container CPU 50%")   # 49.5, shown as the chart axis shows it
            expect(busy.locator(".row.ccpu")).to_contain_text("of 4 cores (no limit)")
            expect(busy.locator(".row.cmem")).to_contain_text("300 MiB of 8.0 GiB node (no limit)")
            cap = page.locator('.pod[data-pod="capped-1"]')
            expect(cap.locator(".row.ccpu")).to_contain_text("container CPU 80%")
            expect(cap.locator(".row.ccpu")).to_contain_text("of its 0.5-core limit")
            expect(cap.locator(".row.cmem")).to_contain_text("256 MiB of 512 MiB limit")

            # The CPU chart draws the card's numbers, on one 0-100 % axis for both pods.
            expect(page.locator("#chart-cpu .u-legend")).to_contain_text("busy-1")
            drawn = page.evaluate("""() => {
                const u = state.charts.cpu.plot;
                const out = {};
                u.series.slice(1).forEach((s, i) => { out[s.label] = u.data[i + 1].filter((v) => v != null); });
                return out;
            }""")
            assert set(drawn["busy-1"]) == {49.5} and set(drawn["capped-1"]) == {80.0}, drawn

            row = page.locator("#endpoints tbody tr", has_text="(unmatched)")
            expect(row.locator("td.ep")).to_have_class("ep group")
            assert "4xx" in row.get_attribute("title")
            expect(page.locator("#endpoints tbody")).to_contain_text("/api/users/{id}")

            # The pod view says what its container CPU line is a percentage of.
            busy.click()
            expect(page.locator("#cpu-note")).to_have_text("node % of all its cores · container % of 4 cores (no limit)")
            assert errors == []
        finally:
            browser.close()
