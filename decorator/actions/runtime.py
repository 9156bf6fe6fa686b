"""Per-process state shared by compiled rule sets: counters, the record sink, the notify sender.

The sender is one background task draining a bounded queue with httpx; the request path only
ever calls `submit` (put_nowait). Imports the standard library and httpx (lazily); nothing from
proxy, rules or telemetry.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("decorator.notify")

WARN_EVERY = 60.0  # seconds between two log warnings about one rule's failing webhook
COUNTER_NAMES = ("rule_hits", "action_errors", "records", "notify_sent", "notify_failed",
                 "notify_dropped", "notify_suppressed")


@dataclass(frozen=True)
class NotifyTarget:
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 5.0
    retries: int = 3


class Runtime:
    """Once per process: `await start()` before serving, `await close()` on the way out.

    counters: plain dicts {rule name: count} read by telemetry at scrape time.
    workers, worker: how many worker processes serve the pod and which one this is (0-based; 1 and 0
    without --workers). State kept here (notify cooldowns, rate-limit buckets) is per process; an
    action whose numbers mean "per pod" reads `workers` (docs/workers.md says which do what).
    """

    def __init__(self, recorder: Any = None, pod: str = "", *, queue_size: int = 1000,
                 concurrency: int = 4, backoff: float = 0.5, backoff_max: float = 30.0,
                 retry_after_max: float = 60.0, close_timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, workers: int = 1, worker: int = 0) -> None:
        self.recorder = recorder
        self.pod = pod
        self.workers = workers
        self.worker = worker
        self.counters: dict[str, dict[str, int]] = {name: {} for name in COUNTER_NAMES}
        self.trace = None  # test hook: callable(rule, action, phase) when an action runs
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.close_timeout = close_timeout
        self.clock = clock           # cooldown/threshold windows (tests pass a fake clock)
        self.sleep = asyncio.sleep   # backoff waits (tests observe the delays asked for)
        self._queue: asyncio.Queue = asyncio.Queue(queue_size)
        self._concurrency = concurrency
        self._task: asyncio.Task | None = None
        self._client = None
        self._inflight: set[asyncio.Task] = set()
        self._action_state: dict[tuple, dict] = {}
        self._warned: dict[str, float] = {}

    def state_for(self, key: tuple) -> dict:
        """Per-process state an action keeps across reloads (a notify cooldown must not restart
        because the ConfigMap changed); `key` should include the action's config."""
        return self._action_state.setdefault(key, {})

    def count(self, counter: str, rule: str, n: int = 1) -> None:
        d = self.counters[counter]
        d[rule] = d.get(rule, 0) + n

    # -- request path side: never waits -------------------------------------------------------
    def submit(self, rule: str, event: dict, target: NotifyTarget, key: str = "", cooldown: float = 0.0) -> bool:
        """Queue one event for sending; False (and counted as dropped) when the queue is full.

        `key` and `cooldown` are the rule's dedupe key and cooldown, already applied by the caller in
        this process; a worker's runtime forwards them so the supervisor applies them per pod."""
        try:
            self._queue.put_nowait((rule, event, target))
        except asyncio.QueueFull:
            self.count("notify_dropped", rule)
            return False
        return True

    # -- background side ----------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._drain(), name="decorator-notify")

    async def _drain(self) -> None:
        sem = asyncio.Semaphore(self._concurrency)
        while True:
            await sem.acquire()
            item = await self._queue.get()
            t = asyncio.get_running_loop().create_task(self._send_one(item, sem))
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)

    async def _send_one(self, item: tuple, sem: asyncio.Semaphore) -> None:
        rule, event, target = item
        try:
            ok = await self._deliver(event, target)
            self.count("notify_sent" if ok else "notify_failed", rule)
        except asyncio.CancelledError:
            self.count("notify_dropped", rule)
            raise
        except Exception:  # a bug here must not kill the sender task
            log.exception("notify %s: unexpected error", rule)
            self.count("notify_failed", rule)
        finally:
            sem.release()
            self._queue.task_done()

    async def _deliver(self, event: dict, target: NotifyTarget) -> bool:
        import httpx  # imported (and the client made) at the first event: idle sidecars stay small
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        attempt = 0
        while True:
            delay = None
            try:
                r = await self._client.post(target.url, json=event, headers=list(target.headers),
                                            timeout=target.timeout)
                if r.status_code < 400:
                    return True
                if r.status_code != 429 and r.status_code < 500:
                    self._warn(event, "notify %s: %s answered %d; not retried", event.get("rule"), target.url,
                               r.status_code)
                    return False
                delay = self._retry_after(r.headers.get("retry-after"))
                why = f"status {r.status_code}"
            except httpx.TransportError as e:  # connect errors, timeouts, resets
                why = type(e).__name__
            if attempt >= target.retries:
                self._warn(event, "notify %s: %s failed after %d attempts (%s)", event.get("rule"), target.url,
                           attempt + 1, why)
                return False
            if delay is None:
                delay = min(self.backoff * (2 ** attempt), self.backoff_max)
            attempt += 1
            await self.sleep(delay)

    def _warn(self, event: dict, msg: str, *args: Any) -> None:
        """One warning per rule per minute: a dead receiver must not flood the log (the counters
        have the totals)."""
        rule = str(event.get("rule"))
        now = time.monotonic()
        if now - self._warned.get(rule, -WARN_EVERY) >= WARN_EVERY:
            self._warned[rule] = now
            log.warning(msg, *args)

    def _retry_after(self, value: str | None) -> float | None:
        """Retry-After as seconds or an HTTP date, capped so a receiver cannot park the sender."""
        if not value:
            return None
        value = value.strip()
        try:
            secs = float(value)
        except ValueError:
            try:
                secs = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                return None
        return max(0.0, min(secs, self.retry_after_max))

    async def close(self, timeout: float | None = None) -> None:
        """Flush queued events (bounded by `timeout`, default close_timeout), then stop."""
        timeout = self.close_timeout if timeout is None else timeout
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                pass
            self._task.cancel()
            for t in list(self._inflight):
                t.cancel()
            await asyncio.gather(self._task, *self._inflight, return_exceptions=True)
            self._task = None
        # Whatever was never taken off the queue is lost: count it, never silently.
        while not self._queue.empty():
            rule, _, _ = self._queue.get_nowait()
            self._queue.task_done()
            self.count("notify_dropped", rule)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
