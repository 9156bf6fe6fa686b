"""Helpers for the dashboard tests: a real uvicorn server on 127.0.0.1 port 0 in a thread, on a real
SQLite file, with an injectable clock; and payload builders in the wire format."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import uvicorn

from decorator.dashboard.server import _bind, create_app
from decorator.dashboard.store import Store
from decorator.wire.stats import N_BUCKETS, bucket_index


class Clock:
    """A settable clock: the dashboard's notion of "now" (receive times, windows, staleness, prune)."""

    def __init__(self, t: float | None = None) -> None:
        self.t = float(t if t is not None else int(time.time()))

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Dashboard:
    """One running dashboard: `url`, `client` (httpx, keep-alive), `store`, `stop()`."""

    def __init__(self, db: Path, port: int = 0, **kw) -> None:
        self.db = db
        self.app = create_app(db, prune_interval=kw.pop("prune_interval", 3600.0), **kw)
        self.store: Store = self.app.state.store
        sock = _bind("127.0.0.1", port)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:  # readiness poll, not a timing assertion
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("dashboard did not start")
            time.sleep(0.01)
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "dashboard did not stop"


def endpoint(path: str, latencies_ms: list[float], method: str = "GET", statuses: list[int] | None = None,
             **extra) -> dict:
    """One EndpointStats entry whose counts, status classes and buckets agree with the given exchanges."""
    statuses = statuses or [200] * len(latencies_ms)
    buckets = [0] * N_BUCKETS
    for ms in latencies_ms:
        buckets[bucket_index(ms)] += 1
    status = {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
    for s in statuses:
        status[f"{s // 100}xx"] += 1
    return {"endpoint": path, "method": method, "count": len(latencies_ms), "status": status,
            "latency_ms_sum": float(sum(latencies_ms)), "latency_buckets": buckets, "bytes_in": 0,
            "bytes_out": 100 * len(latencies_ms), "file": False, **extra}


def stats(pod: str, endpoints: list[dict], samples: list[dict] | None = None) -> dict:
    return {"pod": pod, "time": time.time(), "interval": 5.0, "endpoints": endpoints, "samples": samples or []}


def resources(pod: str, tick: int = 1, busy: float = 0.25, cpus: int = 2, free: int = 3 << 30,
              total: int = 8 << 30, container: dict | None = None) -> dict:
    """Cumulative CPU times as node's os.cpus() gives them: `tick` seconds at `busy` load each."""
    cpu_list = [{"model": "Test CPU", "speed": 2400,
                 "times": {"user": tick * busy * 100 * (1 + i / 10), "nice": 0, "sys": 0,
                           "idle": tick * (1 - busy * (1 + i / 10)) * 100, "irq": 0}} for i in range(cpus)]
    return {"pod": pod, "time": time.time(),
            "resource": {"free_memory": free, "total_memory": total, "cpus": cpu_list, "load": [0.5, 0.4, 0.3]},
            "container": container if container is not None else {
                "memory_usage": 200 << 20, "memory_limit": 512 << 20, "cpu_usage_seconds": 12.5,
                "cpu_limit_cores": 0.5, "cpu_percent": 12.0}}
