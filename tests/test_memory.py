"""`decorator run` as a real process: its idle RSS without rules and with the card rules (issue: RSS).

Memory, not time, so the bounds are the issue's targets. Also checks the reason the card figure holds:
the serving process never maps pydantic-core (rules are validated in a child and handed over as
plain data) and still applies the rules.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.proxy.conftest import free_port, rss_kb, start_decorator, wait_port

REPO = Path(__file__).resolve().parent.parent
CARD = REPO / "bench" / "rules" / "card.yaml"
IDLE_S = 1.0  # as bench/rss_soak.py: let start-up allocations settle before calling it idle


class _NotFound(BaseHTTPRequestHandler):
    """An app that answers 404 to everything: the card's friendly-404 rule replaces its body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Length", "8")
        self.end_headers()
        self.wfile.write(b"app 404\n")


def _idle(*rules: str) -> tuple[int, str]:
    """Start `decorator run` (admin off, as the soak runs it) -> (idle VmRSS kB, its /proc maps)."""
    app = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    port = free_port()
    args = ["--port", str(port), "--host", "127.0.0.1", "--target", str(app.server_port), "--admin-port", "0"]
    if rules:
        args += ["--rules", *rules]
    proc = start_decorator(*args)
    try:
        wait_port(port, proc)
        time.sleep(IDLE_S)
        kb = rss_kb(proc.pid)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        # Measured first, then proven to serve: with the card rules the app's 404 becomes the page.
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/nope")
        r = c.getresponse()
        body = r.read()
        c.close()
        assert r.status == 404
        assert (b"Sorry, that page is not here" in body) == bool(rules), body
        return kb, maps
    finally:
        app.shutdown()
        app.server_close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(60)
def test_idle_rss_without_rules_is_at_most_30_mb():
    kb, _ = _idle()
    assert kb <= 30 * 1024, f"idle RSS {kb / 1024:.1f} MB"


@pytest.mark.timeout(60)
def test_idle_rss_with_the_card_rules_is_at_most_35_mb_and_pydantic_never_loads():
    kb, maps = _idle(str(CARD))
    assert "pydantic_core" not in maps
    assert kb <= 35 * 1024, f"idle RSS {kb / 1024:.1f} MB"
