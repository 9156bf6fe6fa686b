"""A multi-worker `decorator run` as a real process tree, an app in a thread and small clients."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


ROOT = Path(__file__).resolve().parents[2]


class _App(BaseHTTPRequestHandler):
    """200 "app" for everything; /slow waits (?ms=, default 1000) before answering."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path.startswith("/slow"):
            m = re.search(r"ms=(\d+)", self.path)
            time.sleep(int(m.group(1)) / 1000 if m else 1.0)
        body = b"app"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class AppServer:
    def __init__(self) -> None:
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), _App)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def admin_port() -> int:
    """A free port below the ephemeral range: a port taken from it (tests.support.free_port) can be
    the source port of any outgoing connection by the time the admin server binds it."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 20000-32000")


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met after {timeout}s")


class Pod:
    """`decorator run --workers N` on port 0 with an admin port; stderr in a file read by the test."""

    def __init__(self, tmp: Path, workers: str | int | None, target: int, *args: str,
                 env: dict | None = None) -> None:
        self.log = tmp / f"pod-{time.monotonic_ns()}.log"
        self.admin = admin_port()
        e = {k: v for k, v in os.environ.items() if k not in ("DASHBOARD", "MOTHERSHIP", "RULES", "WORKERS")}
        e.update(env or {})
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "decorator", "run", "--host", "127.0.0.1", "--port", "0",
                 "--admin-port", str(self.admin), "--target", f"127.0.0.1:{target}",
                 *(("--workers", str(workers)) if workers is not None else ()), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=e, cwd=ROOT)
        # The supervisor's line (a worker's own says `decorator[worker N]:`), or the single process's.
        m = self.wait_log(r"(?:decorator|decorator\.workers): listening on 127\.0\.0\.1:(\d+)")
        self.port = int(m.group(1))

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        def found():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.text()}")
            return re.search(pattern, self.text())
        try:
            return wait_until(found, timeout, pattern)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.text()}") from None

    def get(self, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
        """One request on a new connection (so the kernel picks a worker for each)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def admin_get(self, path: str) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def status(self) -> dict:
        code, body = self.admin_get("/status")
        assert code == 200, body
        return json.loads(body)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """{(sample name, sorted labels): value} from the admin port's /metrics."""
        code, body = self.admin_get("/metrics")
        assert code == 200, body
        out = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def workers(self) -> list[dict]:
        return self.status()["workers"]["list"]

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in self.children():
                    os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def metric_sum(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


class Receiver:
    """Collects POSTs (a webhook, a dashboard): [(path, JSON body)], gzip bodies decoded."""

    def __init__(self) -> None:
        posts = self.posts = []
        lock = self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with lock:
                    posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def bodies(self, path: str) -> list[dict]:
        with self.lock:
            return [b for p, b in self.posts if p == path]

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
