"""The fault campaign's moving parts, all real processes and sockets: the app, the sidecar, a
steady load that counts every request, silent servers, and readings of /status and /metrics.

FAULT_SCALE=full (`make faults`) runs the long durations the issue names; the default is the CI
slice (the same scenarios, shorter). Test helper only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import free_port, wait_port

FULL = os.environ.get("FAULT_SCALE") == "full"
HERE = Path(__file__).parent


def scaled(ci: float, full: float) -> float:
    return full if FULL else ci


class App:
    """tests/faults/fault_app.py as a process on a fixed port (so it can be restarted there)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> App:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fault_app.py"), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_port(self.port, self.proc)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Sidecar:
    """`python -m decorator run` in front of `target`, with its admin port."""

    def __init__(self, target: int, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.admin = free_port()
        e = dict(os.environ)
        e.update(env or {})
        # The log to a file: a pipe nobody reads while the test runs fills up (a 502 is a warning
        # line) and the sidecar would block writing its log, which looks exactly like a hang.
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed with the process, in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "decorator", "run", "--port", str(self.port), "--target", str(target),
             "--admin-port", str(self.admin), "--log-level", "warning", *args],
            env=e, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        wait_port(self.port, self.proc)
        wait_port(self.admin, self.proc)

    def status(self) -> dict:
        return json.loads(_get(self.admin, "/status")[1])

    def metric(self, name: str) -> float:
        """Sum of a Prometheus sample family (`name` or `name_total`) on /metrics."""
        total = 0.0
        for line in _get(self.admin, "/metrics")[1].decode().splitlines():
            if line.startswith((name + " ", name + "{", name + "_total ", name + "_total{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        return text


def _get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


@dataclass
class Load:
    """Keep-alive clients sending `path` in a loop; every request is counted with its time and
    outcome (a status, or the exception's name). Reconnects after any failure."""

    port: int
    path: str = "/ok"
    clients: int = 4
    body: bytes | None = None
    results: list[tuple[float, float, object]] = field(default_factory=list)  # (start, seconds, outcome)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for _ in range(self.clients):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            t0 = time.monotonic()
            try:
                conn.request("POST" if self.body else "GET", self.path, body=self.body)
                r = conn.getresponse()
                r.read()
                outcome: object = r.status
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                outcome = type(e).__name__
                conn.close()
                conn = None
            self.results.append((t0, time.monotonic() - t0, outcome))
        if conn is not None:
            conn.close()

    def stop(self) -> Load:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        print(f"load {self.path}: {len(self.results)} requests {self.outcomes()}")  # the figures (-s)
        return self

    def outcomes(self, since: float = 0.0, until: float = float("inf")) -> dict[object, int]:
        """Outcomes of the requests that started at or after `since` and ended before `until`."""
        out: dict[object, int] = {}
        for t0, d, o in self.results:
            if since <= t0 and t0 + d < until:
                out[o] = out.get(o, 0) + 1
        return out

    def p99(self, since: float = 0.0, until: float = float("inf")) -> float:
        times = sorted(d for t0, d, o in self.results if since <= t0 < until and o == 200)
        return times[int(len(times) * 0.99) - 1] if times else float("nan")


class Silent:
    """A server that accepts connections and reads, and never answers (for `seconds`, then closes)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                c, _ = self.sock.accept()
                self.accepted.append(c)  # held open, never read from or written to

    def close(self) -> None:
        self._stop.set()
        for c in self.accepted:
            c.close()
        self.sock.close()
