"""Helpers every test package shares: free loopback ports, waiting for a port to listen, a threaded
http.server app and a serial keep-alive latency probe."""

from __future__ import annotations

import contextlib
import http.client
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on right now (for child processes that need a number up front).

    Picked on the wildcard address, as the sidecar binds its ports: a port picked on 127.0.0.1 may
    still have TIME_WAIT connections there (a busy machine), which then refuse a bind on 0.0.0.0.
    Never the same number twice in one run, for the same reason: a test asks for two at once."""
    while True:
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    """Block until 127.0.0.1:port accepts connections; fail early if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"process exited with {proc.returncode}: {err}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening after {timeout}s")


@contextlib.contextmanager
def threaded_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """Run an http.server handler class on 127.0.0.1 port 0 in a thread; yields the port."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def serial_latency_ms(port: int, paths: list[str], timeout: float = 5.0) -> float:
    """Median milliseconds per request for `paths` sent one after another on one keep-alive
    http.client connection (blocking: call it from a thread when the server runs on this loop)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    times = []
    try:
        for path in paths:
            t0 = time.perf_counter()
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            times.append(time.perf_counter() - t0)
            assert not r.will_close, f"{path}: the server closed a keep-alive connection"
    finally:
        c.close()
    return statistics.median(times) * 1000
