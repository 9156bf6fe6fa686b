"""The demo's app: a small shop-like HTTP service the decorator sits in front of in `make demo`.

Standard library only (http.server, threads, HTTP/1.1 keep-alive), so it stands for "any app":
pages, a JSON API (/api/users, /api/users/{id}), /slow (random latency), /flaky (sometimes 500)
and plain 404s for unknown paths. Imports nothing from decorator.

    python examples/demo/app.py [--port 8087] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USERS = {i: {"id": i, "name": name, "plan": plan} for i, (name, plan) in enumerate([
    ("Ada", "pro"), ("Grace", "free"), ("Linus", "free"), ("Margaret", "team"), ("Ken", "pro"),
    ("Barbara", "team"), ("Dennis", "free"), ("Frances", "pro"), ("Edsger", "free"), ("Radia", "team"),
], start=1)}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - demo shop</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem}}</style>
</head><body><h1>{title}</h1>{body}</body></html>
"""
HOME = """<p>A tiny app with a <b>decorator</b> sidecar in front of it. Try:</p><ul>
<li><a href="/api/users">/api/users</a> and <a href="/api/users/3">/api/users/3</a> (JSON)</li>
<li><a href="/slow">/slow</a> (takes 20 ms to 1.5 s)</li>
<li><a href="/flaky">/flaky</a> (fails one time in four: watch the alert on the dashboard)</li>
<li><a href="/no-such-page">/no-such-page</a> (the sidecar swaps the app's 404 for a friendly page)</li>
<li><a href="/about">/about</a></li></ul>
"""
ABOUT = "<p>The app knows nothing about the sidecar: no library, no code change. Everything you see "\
        "added (headers, the 404 page, alerts, charts) comes from YAML rules.</p>"
_USER = re.compile(r"^/api/users/(\d+)$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive, as a real app behind a sidecar would
    server_version = "demo-app/1.0"
    # The stdlib default (unbuffered wfile, Nagle on) sends the head and the body as two small
    # writes, and the body waits for the peer's delayed ACK of the head: 40 ms per response on a
    # keep-alive connection. Buffer the response (handle_one_request flushes it once, head and
    # body together) and switch Nagle off for bodies bigger than the buffer.
    wbufsize = -1
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            return self.html(200, "Demo shop", HOME)
        if path == "/about":
            return self.html(200, "About", ABOUT)
        if path == "/healthz":
            return self.send(200, "text/plain", b"ok\n")
        if path == "/api/users":
            return self.json(200, list(USERS.values()))
        m = _USER.match(path)
        if m:
            user = USERS.get(int(m.group(1)))
            return self.json(200, user) if user else self.json(404, {"error": "no such user"})
        if path == "/slow":
            # mostly quick, sometimes slow: gives the latency chart and the endpoint colours something to show
            delay = random.choice([0.02, 0.05, 0.08, 0.15, 0.3, 0.6, 1.2, 1.5])
            time.sleep(delay)
            return self.json(200, {"slept_ms": round(delay * 1000)})
        if path == "/flaky":
            if random.random() < 0.25:
                return self.json(500, {"error": "the flaky dependency failed"})
            return self.json(200, {"ok": True})
        return self.send(404, "text/plain", b"not found\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?", 1)[0] != "/api/users":
            return self.send(404, "text/plain", b"not found\n")
        try:
            data = json.loads(raw or b"{}")
            name = str(data["name"])
        except (ValueError, KeyError, TypeError):
            return self.json(400, {"error": 'expected JSON like {"name": "Alan"}'})
        return self.json(201, {"id": max(USERS) + 1, "name": name, "plan": "free"})

    # -- helpers ----------------------------------------------------------------------------------
    def html(self, status: int, title: str, body: str) -> None:
        self.send(status, "text/html; charset=utf-8", PAGE.format(title=title, body=body).encode())

    def json(self, status: int, data: object) -> None:
        self.send(status, "application/json", json.dumps(data).encode() + b"\n")

    def send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass  # the sidecar is the one that logs and measures; keep the demo's terminal quiet


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The decorator demo's app.")
    p.add_argument("--port", type=int, default=8087)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    # SIGTERM from demo.py: leave serve_forever and exit 0, like a well-behaved app in a pod.
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"demo app on http://{args.host}:{server.server_address[1]}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
