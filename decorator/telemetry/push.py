"""Pushes telemetry to the dashboard: /resources every second, /stats batches when there is something new.

Owns the two push loops and their gzip JSON bodies; the bounded stats buffer, timeouts, backoff and
drop counters are the shared delivery client's (decorator.delivery). Must not import rules or proxy;
the request path never waits on it (it only calls Aggregator.record).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import time
from typing import Any

from decorator.delivery import Delivery, Pending, Poster, Result
from decorator.telemetry.aggregate import Aggregator
from decorator.telemetry.resources import Resources

log = logging.getLogger("decorator.telemetry")


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

    name = "dashboard"

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
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip", "User-Agent": "decorator-sidecar"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._poster = Poster(headers, max_connections=4)
        # One receiver: a failure backs off both loops (shared backoff); a stats batch stays in the
        # buffer until the dashboard takes it (hold), the oldest dropped past max_buffer.
        self.delivery = Delivery(
            "dashboard push", self._send, queue_size=max(1, max_buffer), hold=True, drop_oldest=True,
            retries=None, backoff=backoff_base if backoff_base is not None else min(interval_resources, 1.0),
            backoff_max=backoff_max, jitter=True, logger=log)
        self._tasks: list[asyncio.Task] = []

    # The counters and state live in the delivery client; these names are the pusher's interface.
    @property
    def buffer(self) -> Pending:
        return self.delivery.queue

    @property
    def sent(self) -> int:
        return self.delivery.sent

    @property
    def failed(self) -> int:
        return self.delivery.failed

    @property
    def dropped(self) -> int:
        return self.delivery.dropped

    @property
    def failures(self) -> int:
        return self.delivery.failures

    @property
    def retry_at(self) -> float:
        return self.delivery.retry_at

    @property
    def last_ok(self) -> float | None:
        return self.delivery.last_ok

    @property
    def last_error(self) -> str | None:
        return self.delivery.last_error

    @property
    def counters(self) -> dict[str, int]:
        """For Metrics.add_source: push_sent/failed/dropped and the batches waiting."""
        return {"push_sent": self.sent, "push_failed": self.failed, "push_dropped": self.dropped,
                "push_buffered": len(self.buffer)}

    def status(self) -> dict[str, Any]:
        return {"url": self.url, **self.counters, "consecutive_failures": self.failures,
                "last_ok": self.last_ok, "last_error": self.last_error}

    async def start(self) -> None:
        await self.delivery.start()
        if self.resources is not None:
            self._tasks.append(asyncio.create_task(self._loop(self.interval_resources, self._push_resources),
                                                   name="push-resources"))
        if self.aggregator is not None:
            # The first batch after one interval: there is nothing to say at start.
            self._tasks.append(asyncio.create_task(self._loop(self.interval_stats, self._take_stats,
                                                              first=self.interval_stats), name="push-stats"))

    async def close(self, flush: bool = True) -> None:
        """Stop the loops; with `flush`, one last try (bounded by the timeout) to send pending stats."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if flush and self.aggregator is not None:
            self._take_stats()
        await self.delivery.close(self.timeout if flush else 0.0)
        await self._poster.close()

    async def _loop(self, interval: float, step, first: float = 0.0) -> None:
        next_at = time.monotonic() + first
        await asyncio.sleep(first)
        while True:
            try:
                r = step()
                if r is not None:
                    await r
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
        if self.delivery.ready():
            await self.delivery.attempt([("/resources", body)])

    def _take_stats(self) -> None:
        assert self.aggregator is not None
        delta = self.aggregator.snapshot_delta(self.pod)
        if delta is not None:
            self.delivery.submit(("/stats", encode(delta)))

    async def _send(self, batch: list) -> Result:
        path, body = batch[0]
        r = await self._poster.post(self.url + path, body, timeout=self.timeout)
        return r if r.outcome == "ok" else r._replace(reason=f"{path}: {r.reason}")
