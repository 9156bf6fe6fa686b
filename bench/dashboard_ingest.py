"""Dashboard ingest benchmark: samples stored per second through real HTTP into a real server process.

Starts `decorator dashboard` as a subprocess (pinned to one CPU where the OS allows), then many
simulated pods push gzip'd /stats batches (endpoint rows + error samples, as sidecars send them every
5 s) and /resources, concurrently, over keep-alive connections. A "sample" is one stored row: an
endpoint-stats delta or an error sample. The baseline, measured in the same run, is the store alone
(same batches, no HTTP, no JSON), so the ratio shows what the HTTP path costs. Target: >= 5,000/s.

    .venv/bin/python bench/dashboard_ingest.py [--seconds 5] [--pods 40] [--endpoints 50] [--samples 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from decorator.dashboard.store import Store
from decorator.wire.models import StatsPayload
from decorator.wire.stats import N_BUCKETS

TARGET = 5_000


def make_batch(rng: random.Random, pod: str, n_endpoints: int, n_samples: int) -> dict:
    eps = []
    for i in range(n_endpoints):
        count = rng.randint(1, 200)
        buckets = [0] * N_BUCKETS
        for _ in range(min(count, 20)):
            buckets[min(int(rng.expovariate(0.4)), N_BUCKETS - 1)] += count // 20 or 1
        eps.append({"endpoint": f"/api/v1/resource{i}/{{id}}", "method": rng.choice(["GET", "POST"]), "count": count,
                    "status": {"1xx": 0, "2xx": count - count // 20, "3xx": 0, "4xx": count // 40,
                               "5xx": count // 20 - count // 40},
                    "latency_ms_sum": count * rng.uniform(2, 300), "latency_buckets": buckets,
                    "bytes_in": count * 100, "bytes_out": count * 2000, "file": False})
    samples = [{"endpoint": f"/api/v1/resource{rng.randrange(n_endpoints)}/{rng.randint(1, 10**6)}",
                "route": "/api/v1/resource/{id}", "method": "GET", "status": 503, "time_ms": rng.uniform(1, 3000),
                "started": time.time(), "request_id": f"{rng.getrandbits(64):016x}", "error": None}
               for _ in range(n_samples)]
    return {"pod": pod, "time": time.time(), "interval": 5.0, "endpoints": eps, "samples": samples}


def resources(pod: str, tick: int) -> dict:
    return {"pod": pod, "time": time.time(),
            "resource": {"free_memory": 3 << 30, "total_memory": 8 << 30, "load": [0.3, 0.2, 0.1],
                         "cpus": [{"model": "x", "speed": 2400, "times": {"user": tick * 30, "nice": 0, "sys": tick * 5,
                                                                           "idle": tick * 65, "irq": 0}}] * 4},
            "container": {"memory_usage": 200 << 20, "memory_limit": 512 << 20, "cpu_usage_seconds": tick * 0.1,
                          "cpu_limit_cores": 1.0, "cpu_percent": 10.0}}


def baseline(batches: list[dict], seconds: float) -> float:
    """Rows/s the store alone sustains for the same batches (validation + executemany, no HTTP)."""
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "base.db")
        models = [StatsPayload.model_validate(b) for b in batches]
        rows, i, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            rows += store.add_stats(models[i % len(models)])
            i += 1
        rate = rows / (time.perf_counter() - t0)
        store.close()
    return rate


async def drive(url: str, batches: list[dict], pods: int, seconds: float, concurrency: int) -> tuple[int, int, float]:
    bodies = [gzip.compress(json.dumps(b).encode(), 6) for b in batches]
    rows_per = [len(b["endpoints"]) + len(b["samples"]) for b in batches]
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    stored = posts = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        t0 = time.perf_counter()
        deadline = t0 + seconds

        async def worker(w: int) -> None:
            nonlocal stored, posts
            i = w
            while time.perf_counter() < deadline:
                k = i % len(bodies)
                r = await client.post("/stats", content=bodies[k], headers=headers)
                r.raise_for_status()
                stored += rows_per[k]
                posts += 1
                if i % 5 == 0:   # resources ride along, as every pod also sends them each second
                    (await client.post("/resources", json=resources(f"pod-{i % pods}", i))).raise_for_status()
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return stored, posts, elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pods", type=int, default=40)
    ap.add_argument("--endpoints", type=int, default=50, help="endpoint rows per /stats push")
    ap.add_argument("--samples", type=int, default=10, help="error samples per /stats push")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    rng = random.Random(1)
    batches = [make_batch(rng, f"pod-{p}", args.endpoints, args.samples) for p in range(args.pods)]

    base = baseline(batches, min(args.seconds, 3.0))

    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "bench.db"
        proc = subprocess.Popen([sys.executable, "-m", "decorator", "dashboard", "--host", "127.0.0.1", "--port", "0",
                                 "--db", str(db)], stderr=subprocess.PIPE, text=True)
        try:
            m = re.search(r"(http://127\.0\.0\.1:\d+)/", proc.stderr.readline())
            if not m:
                print("the dashboard did not start", file=sys.stderr)
                return 1
            cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            if len(cpus) >= 2:   # server on one core, this client on another
                os.sched_setaffinity(proc.pid, {cpus[0]})
                os.sched_setaffinity(0, set(cpus[1:]))
            stored, posts, elapsed = asyncio.run(drive(m.group(1), batches, args.pods, args.seconds,
                                                       args.concurrency))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        size = sum(f.stat().st_size for f in Path(d).glob("bench.db*"))

    rate = stored / elapsed
    print(f"batch: {args.endpoints} endpoint rows + {args.samples} error samples per /stats push, gzip, "
          f"{args.concurrency} concurrent connections, server pinned to one core")
    print(f"store alone (baseline):  {base:10,.0f} samples/s")
    print(f"over HTTP (real server): {rate:10,.0f} samples/s  ({posts / elapsed:,.0f} pushes/s, "
          f"{stored:,} samples in {elapsed:.1f} s, db {size / 1e6:.1f} MB)")
    print(f"ratio HTTP / baseline:   {rate / base:10.2f}")
    print(f"target {TARGET:,} samples/s: {'met' if rate >= TARGET else 'NOT met'}")
    return 0 if rate >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
