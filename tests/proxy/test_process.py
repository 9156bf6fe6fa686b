"""`decorator run` as a real process: configuration, admin port, SIGTERM drain, bounded memory on big streams."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.proxy.conftest import free_port, rss_kb, start_decorator, wait_port

MiB = 1024 * 1024


class _App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # keep test output quiet
        pass

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(float(self.path.split("=")[1]) if "=" in self.path else 1.5)
            self._send(b"slow done")
        elif self.path.startswith("/download"):
            size = int(self.path.split("=")[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"d" * MiB
            sent = 0
            while sent < size:
                n = min(len(block), size - sent)
                self.wfile.write(block[:n])
                sent += n
        else:
            self._send(b"hello")

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        slow = self.path.startswith("/slow-upload")
        got = 0
        while got < length:
            chunk = self.rfile.read(min(256 * 1024, length - got))
            if not chunk:
                break
            got += len(chunk)
            if slow and got < 8 * MiB:
                time.sleep(0.05)  # a slow app: the sidecar must not soak up the upload
        self._send(str(got).encode())

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def app_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def sidecar(app_server):
    procs = []

    def start(*extra: str, env: dict | None = None):
        port, admin = free_port(), free_port()
        p = start_decorator("--port", str(port), "--target", str(app_server), "--admin-port", str(admin),
                            *extra, env=env)
        procs.append(p)
        wait_port(port, p)
        return p, port, admin

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(5)


def _get(port: int, path: str = "/", timeout: float = 30.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def _run_cli(*args: str, env: dict | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "decorator", *args], env=e, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args,env,needle", [
    (["--port", "http"], {}, "--port"),
    (["--port", "70000"], {}, "--port"),
    ([], {"PORT": "eighty"}, "PORT"),
    (["--target", "app:"], {}, "--target"),
    ([], {"TARGET_PORT": "0"}, "TARGET_PORT"),
    (["--drain-timeout", "soon"], {}, "--drain-timeout"),
    (["--max-header-size", "big"], {}, "--max-header-size"),
    (["--admin-port", "-1"], {}, "--admin-port"),
])
def test_bad_values_one_line_exit_2(args, env, needle):
    r = _run_cli("run", *args, env=env)
    assert r.returncode == 2, r
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_python_m_and_console_script_agree():
    r = _run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("decorator ")
    exe = os.path.join(os.path.dirname(sys.executable), "decorator")
    r2 = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    assert r2.stdout == r.stdout


def test_env_configures_and_flags_win(app_server):
    port = free_port()
    env = {"PORT": str(port), "TARGET_PORT": f"127.0.0.1:{app_server}", "ADMIN_PORT": "0"}
    p = start_decorator(env=env)
    try:
        wait_port(port, p)
        assert _get(port) == (200, b"hello")
    finally:
        p.terminate()
        assert p.wait(10) == 0
    flag_port = free_port()
    p = start_decorator("--port", str(flag_port), env=dict(env, PORT=str(free_port())))
    try:
        wait_port(flag_port, p)
        assert _get(flag_port) == (200, b"hello")
    finally:
        p.terminate()
        p.wait(10)


def test_port_in_use_is_one_clear_line(app_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        r = _run_cli("run", "--host", "127.0.0.1", "--port", str(taken), "--target", str(app_server),
                     "--admin-port", "0")
    assert r.returncode == 1
    assert "cannot listen" in r.stderr


def test_admin_health_ready_status(sidecar, app_server):
    p, port, admin = sidecar()
    assert _get(admin, "/healthz") == (200, b"ok\n")
    status, body = _get(admin, "/readyz")
    assert status == 200
    _get(port)
    status, body = _get(admin, "/status")
    import json
    st = json.loads(body)
    assert st["proxy"]["exchanges"] >= 1 and st["target"].endswith(str(app_server))
    assert _get(admin, "/nope")[0] == 404


def test_readyz_fails_when_app_is_down():
    port, admin, dead = free_port(), free_port(), free_port()
    p = start_decorator("--port", str(port), "--target", str(dead), "--admin-port", str(admin))
    try:
        wait_port(admin, p)
        status, body = _get(admin, "/readyz")
        assert status == 503 and b"unreachable" in body
        assert _get(admin, "/healthz")[0] == 200  # alive, just not ready
        assert _get(port)[0] == 502
    finally:
        p.terminate()
        p.wait(10)


def test_sigterm_drains_in_flight_requests(sidecar):
    p, port, admin = sidecar("--drain-timeout", "10s")
    results: list = []

    def call():
        try:
            results.append(_get(port, "/slow=1.5"))
        except Exception as e:
            results.append(e)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # all eight are in flight at the app now
    p.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", port), 1).close()
    for t in threads:
        t.join(20)
    assert results == [(200, b"slow done")] * 8
    assert p.wait(15) == 0
    assert "stopping: draining" in p.stderr.read()


def test_sigterm_drain_is_bounded(sidecar):
    p, port, admin = sidecar("--drain-timeout", "0.5s")
    t = threading.Thread(target=lambda: _swallow(lambda: _get(port, "/slow=6", timeout=10)))
    t.start()
    time.sleep(0.4)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    assert time.monotonic() - t0 < 4
    t.join(10)


def test_sigint_stops_too(sidecar):
    p, port, admin = sidecar()
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0


def _swallow(fn):
    try:
        fn()
    except Exception:
        pass


def test_256mib_download_to_slow_client_keeps_rss_bounded(sidecar):
    p, port, admin = sidecar()
    _get(port)  # warm up
    base = rss_kb(p.pid)
    size = 256 * MiB
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(b"GET /download=%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
    peak = base
    time.sleep(1.0)  # a client that does not read: the sidecar must stop reading the app, not buffer it
    peak = max(peak, rss_kb(p.pid))
    got = 0
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(65536)
    got = len(head.split(b"\r\n\r\n", 1)[1])
    n = 0
    while got < size:
        chunk = s.recv(1024 * 1024)
        if not chunk:
            break
        got += len(chunk)
        n += 1
        if n % 200 == 0:
            peak = max(peak, rss_kb(p.pid))
    s.close()
    assert got == size
    assert peak - base < 32 * 1024, f"RSS grew {peak - base} KB during a 256 MiB download"


def test_64mib_upload_to_slow_app_keeps_rss_bounded(sidecar):
    p, port, admin = sidecar()
    _get(port)
    base = rss_kb(p.pid)
    size = 64 * MiB
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /slow-upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
    block = b"u" * MiB
    peak = base
    for i in range(64):
        s.sendall(block)
        if i % 4 == 0:
            peak = max(peak, rss_kb(p.pid))
    resp = b""
    while b"\r\n\r\n" not in resp or not resp.endswith(str(size).encode()):
        chunk = s.recv(65536)
        if not chunk:
            break
        resp += chunk
    s.close()
    assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(str(size).encode()), resp[:200]
    assert peak - base < 32 * 1024, f"RSS grew {peak - base} KB during a 64 MiB upload"
