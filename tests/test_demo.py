"""`make demo` end to end: examples/demo/demo.py as a real subprocess on free ports, for 8 seconds.

One run per module (the fixture); each test checks one promise of the demo against what that run
printed and answered: the URLs, the app through the sidecar, the rules' pages and headers, the
dashboard, a clean exit with nothing left listening.
"""

from __future__ import annotations

import http.client
import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "examples" / "demo" / "demo.py"
LABELS = ("app through the sidecar", "the app directly", "dashboard", "metrics", "status")


POLL = 5.0   # seconds a dashboard query may take to show what the sidecar sent


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class DemoRun:
    urls: dict[str, str] = field(default_factory=dict)
    answers: dict[str, Answer] = field(default_factory=dict)
    pods: list[str] = field(default_factory=list)        # what the dashboard listed
    alerts: list[dict] = field(default_factory=list)     # notify events the dashboard stored
    output: str = ""
    returncode: int | None = None


def _poll_json(url: str, path: str, done) -> object:
    """GET path until done(json) holds or POLL seconds pass; the last answer either way."""
    deadline = time.monotonic() + POLL
    while True:
        data = json.loads(_get(url, path).body)
        if done(data) or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


def _get(url: str, path: str) -> Answer:
    """GET url + path (url may carry a path of its own)."""
    host, port, base = re.match(r"http://([^:/]+):(\d+)(/\S*)?", url).groups()
    path = (base or "").rstrip("/") + path if path else base or "/"
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoRun:
    db = tmp_path_factory.mktemp("demo") / "dashboard.db"
    cmd = [sys.executable, str(DEMO), "--ports", "auto", "--duration", "8", "--db", str(db)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    run = DemoRun()
    seen: list[str] = []
    try:
        while True:  # until the guide is printed (the demo is up) or the demo ends
            line = lines.get(timeout=60)
            if line is None:
                break
            seen.append(line)
            for label in LABELS:
                m = re.match(rf"\s+{label}\s+(http://\S+)", line)
                if m:
                    run.urls[label] = m.group(1)
            if line.startswith("try:"):
                break
        if "app through the sidecar" in run.urls:
            sidecar = run.urls["app through the sidecar"]
            for path in ("/", "/api/users/3", "/no-such-page"):
                run.answers[path] = _get(sidecar, path)
            run.answers["direct /api/users/3"] = _get(run.urls["the app directly"], "/api/users/3")
            run.answers["dashboard"] = _get(run.urls["dashboard"], "/")
            run.answers["metrics"] = _get(run.urls["metrics"], "")
            dash = run.urls["dashboard"]
            # resources are pushed every second
            overview = _poll_json(dash, "/api/overview", lambda d: any(
                p["pod"] == "demo-pod" for p in d["pods"]))
            run.pods = [p["pod"] for p in overview["pods"]]
            # a 500 through the sidecar -> the alert rule -> the dashboard's /events
            for _ in range(60):
                if _get(sidecar, "/flaky").status == 500:
                    break
            events = _poll_json(dash, "/api/events", lambda d: any(
                a["rule"] == "page-on-5xx" for a in d["alerts"]))
            run.alerts = events["alerts"]
        run.returncode = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while (line := lines.get(timeout=10)) is not None:
        seen.append(line)
    run.output = "".join(seen)
    return run


def test_prints_every_url_on_distinct_ports(demo: DemoRun) -> None:
    assert set(demo.urls) == set(LABELS), demo.output
    ports = {re.search(r":(\d+)/", u).group(1) for u in demo.urls.values()}
    assert len(ports) == 4  # sidecar, app, dashboard, admin (metrics and status share the admin port)
    assert demo.urls["metrics"].endswith("/metrics") and demo.urls["status"].endswith("/status")
    assert "curl -i " + demo.urls["app through the sidecar"] in demo.output


def test_the_app_answers_through_the_sidecar(demo: DemoRun) -> None:
    home = demo.answers["/"]
    assert home.status == 200 and b"Demo shop" in home.body
    user = demo.answers["/api/users/3"]
    assert user.status == 200
    assert json.loads(user.body) == json.loads(demo.answers["direct /api/users/3"].body) == \
        {"id": 3, "name": "Linus", "plan": "free"}


def test_the_friendly_404_page_replaces_the_apps(demo: DemoRun) -> None:
    page = demo.answers["/no-such-page"]
    assert page.status == 404
    assert page.headers["content-type"].startswith("text/html")
    assert b"served by the decorator sidecar" in page.body
    assert b"<code>/no-such-page</code>" in page.body and b"{request_id}" not in page.body
    assert "rules: live" in demo.output


def test_security_headers_are_added_and_the_server_header_hidden(demo: DemoRun) -> None:
    through, direct = demo.answers["/api/users/3"], demo.answers["direct /api/users/3"]
    assert through.headers.get("x-content-type-options") == "nosniff"
    assert through.headers.get("x-frame-options") == "DENY"
    assert "server" in direct.headers and "server" not in through.headers


def test_the_dashboard_serves_its_page(demo: DemoRun) -> None:
    dash = demo.answers["dashboard"]
    assert dash.status == 200 and b"<html" in dash.body.lower()


def test_the_admin_port_serves_prometheus_metrics(demo: DemoRun) -> None:
    metrics = demo.answers["metrics"]
    assert metrics.status == 200, metrics.body[:200]
    assert b"http_server_request_duration_seconds" in metrics.body


def test_the_sidecar_reports_to_the_dashboard(demo: DemoRun) -> None:
    assert "demo-pod" in demo.pods, demo.output


def test_a_5xx_raises_an_alert_on_the_dashboard(demo: DemoRun) -> None:
    alert = next((a for a in demo.alerts if a["rule"] == "page-on-5xx"), None)
    assert alert is not None, demo.alerts
    assert alert["status"] >= 500 and alert["pod"] == "demo-pod"


def test_exits_zero_after_the_duration_with_nothing_left_listening(demo: DemoRun) -> None:
    assert demo.returncode == 0, demo.output
    assert "demo stopped" in demo.output and "with errors" not in demo.output
    m = re.search(r"load generator: (\d+) requests", demo.output)
    assert m and int(m.group(1)) > 0, demo.output
    for url in demo.urls.values():
        host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=2).close()


def test_a_bad_duration_is_a_usage_error() -> None:
    r = subprocess.run([sys.executable, str(DEMO), "--duration", "0"], capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 2 and "--duration must be a positive number" in r.stderr
