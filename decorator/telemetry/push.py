"""Pushes telemetry to the dashboard: /resources every second, /stats batches when there is something new.

Owns the two push loops, their gzip JSON bodies, timeouts, backoff and the bounded stats buffer. Must not
import rules or proxy; the request path never waits on it (it only calls Aggregator.record).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import random
import time
from collections import deque
from typing import Any


from decorator.telemetry.aggregate import Aggregator
from decorator.telemetry.resources import Resources

log = logging.getLogger("decorator.telemetry")

# Answers that mean "try again later"; any other 4xx means the dashboard will never take this body.
_RETRY_STATUS = frozenset({408, 425, 429})


def encode(payload: dict[str, Any]) -> bytes:
    """Compact JSON, gzip-compressed (mtime 0 so equal payloads give equal bodies)."""
    return gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), compresslevel=6, mtime=0)


class Pusher:
    """Sends the aggregator's deltas and resource samples to a dashboard.

    Stats batches are encoded when taken and kept, oldest first, until the dashboard accepts them;
    past `max_buffer` batches the oldest is dropped and counted (push_dropped), so memory stays
    bounded however long the dashboard is away. Resources are never buffered: the latest sample wins.
    After a failure both loops wait out an exponential backoff with jitter (from `backoff_base` up to
    `backoff_max` seconds) before talking to the dashboard again; samples and batches keep being
    taken meanwhile.
    """

    def __init__(self, url: str, token: str | None, pod: str, aggregator: Aggregator | None,
                 resources: Resources | None, interval_resources: float = 1.0, interval_stats: float = 5.0,
                 timeout: float = 2.0, max_buffer: int = 60, backoff_base: float | None = None,
                 backoff_max: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.pod = pod
        self.aggregator = aggregator
        self.resources = resources
        self.interval_resources = interval_resources
        self.interval_stats = interval_stats
        self.timeout = timeout
        self.max_buffer = max(1, max_buffer)
        self.backoff_base = backoff_base if backoff_base is not None else min(interval_resources, 1.0)
        self.backoff_max = backoff_max
        self._headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                         "User-Agent": "decorator-sidecar"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.buffer: deque[bytes] = deque()
        self.sent = self.failed = self.dropped = 0
        self.failures = 0                   # consecutive; drives the backoff
        self.retry_at = 0.0                 # monotonic time before which nothing is sent
        self.last_ok: float | None = None   # wall clock of the last accepted post
        self.last_error: str | None = None
        self._client: Any = None          # httpx.AsyncClient, made by start()
        self._http_error: type[Exception] = OSError
        self._tasks: list[asyncio.Task] = []
        self._send_lock = asyncio.Lock()    # one stats flush at a time (the loop and close())

    @property
    def counters(self) -> dict[str, int]:
        """For Metrics.add_source: push_sent/failed/dropped and the batches waiting."""
        return {"push_sent": self.sent, "push_failed": self.failed, "push_dropped": self.dropped,
                "push_buffered": len(self.buffer)}

    def status(self) -> dict[str, Any]:
        return {"url": self.url, **self.counters, "consecutive_failures": self.failures,
                "last_ok": self.last_ok, "last_error": self.last_error}

    async def start(self) -> None:
        import httpx  # only a sidecar that pushes to a dashboard pays for the import (memory)

        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), headers=self._headers,
                                         limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
                                         trust_env=False)
        self._http_error = httpx.HTTPError
        if self.resources is not None:
            self._tasks.append(asyncio.create_task(self._loop(self.interval_resources, self._push_resources),
                                                   name="push-resources"))
        if self.aggregator is not None:
            # The first batch after one interval: there is nothing to say at start.
            self._tasks.append(asyncio.create_task(self._loop(self.interval_stats, self._push_stats,
                                                              first=self.interval_stats), name="push-stats"))

    async def close(self, flush: bool = True) -> None:
        """Stop the loops; with `flush`, one last try (bounded by the timeout) to send pending stats."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if flush and self._client is not None and self.aggregator is not None:
            self.retry_at = 0.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await self._push_stats()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self, interval: float, step, first: float = 0.0) -> None:
        next_at = time.monotonic() + first
        await asyncio.sleep(first)
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a step must not end pushing for the life of the pod
                log.exception("telemetry push step failed")
            next_at += interval
            now = time.monotonic()
            if next_at < now:  # fell behind (slow dashboard): skip the missed ticks
                next_at = now + interval - (now - next_at) % interval
            await asyncio.sleep(next_at - now)

    async def _push_resources(self) -> None:
        assert self.resources is not None
        # Sampled on every tick even while the dashboard is away, so cpu_percent covers one interval.
        body = encode(self.resources.sample())
        if time.monotonic() >= self.retry_at:
            await self._post("/resources", body)

    async def _push_stats(self) -> None:
        assert self.aggregator is not None
        delta = self.aggregator.snapshot_delta(self.pod)
        if delta is not None:
            self.buffer.append(encode(delta))
            while len(self.buffer) > self.max_buffer:
                self.buffer.popleft()
                self.dropped += 1
        async with self._send_lock:
            while self.buffer and time.monotonic() >= self.retry_at:
                body = self.buffer[0]
                result = await self._post("/stats", body)
                if result == "retry":
                    break
                if self.buffer and self.buffer[0] is body:
                    self.buffer.popleft()
                if result == "rejected":
                    self.dropped += 1

    async def _post(self, path: str, body: bytes) -> str:
        """'ok', 'retry' (keep the body) or 'rejected' (the dashboard will never take it)."""
        assert self._client is not None
        try:
            # httpx's timeout is per phase; this bounds the whole post (a receiver trickling bytes).
            async with asyncio.timeout(self.timeout):
                r = await self._client.post(self.url + path, content=body)
        except TimeoutError:
            return self._failed(f"{path}: no answer within {self.timeout}s", "retry")
        except (self._http_error, OSError) as e:
            return self._failed(f"{path}: {type(e).__name__}: {e}".rstrip(": "), "retry")
        if r.is_success:
            if self.failures:
                log.info("dashboard %s reachable again after %d failed posts", self.url, self.failures)
            self.sent += 1
            self.failures = 0
            self.retry_at = 0.0
            self.last_ok = time.time()
            return "ok"
        reason = f"{path}: HTTP {r.status_code} {r.text[:200]!r}"
        if r.status_code >= 500 or r.status_code in _RETRY_STATUS:
            return self._failed(reason, "retry")
        return self._failed(reason, "rejected")

    def _failed(self, reason: str, result: str) -> str:
        self.failed += 1
        self.failures += 1
        self.last_error = reason
        delay = min(self.backoff_max, self.backoff_base * 2 ** min(self.failures - 1, 30))
        self.retry_at = time.monotonic() + delay * random.uniform(0.5, 1.0)
        if self.failures == 1:  # one line per outage, not one per post
            log.warning("dashboard %s: push failed (%s); backing off, stats buffered", self.url, reason)
        return result
