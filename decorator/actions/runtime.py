"""Per-process state shared by compiled rule sets: counters, the record sink, the notify sender.

Notify events go through the shared delivery client (decorator.delivery: bounded queue, retries with
backoff and Retry-After, throttled warnings); the request path only ever calls `submit`. Imports the
standard library and decorator.delivery; nothing from proxy, rules or telemetry.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from decorator.delivery import Delivery, Poster, Result

log = logging.getLogger("decorator.notify")

WARN_EVERY = 60.0  # seconds between two log warnings about one rule's failing webhook
COUNTER_NAMES = ("rule_hits", "action_errors", "records", "notify_sent", "notify_failed",
                 "notify_dropped", "notify_suppressed")
_SETTLED = {"sent": "notify_sent", "failed": "notify_failed", "dropped": "notify_dropped"}


@dataclass(frozen=True)
class NotifyTarget:
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 5.0
    retries: int = 3


class Runtime:
    """Once per process: `await start()` before serving, `await close()` on the way out.

    counters: plain dicts {rule name: count} read by telemetry at scrape time.
    """

    def __init__(self, recorder: Any = None, pod: str = "", *, queue_size: int = 1000,
                 concurrency: int = 4, backoff: float = 0.5, backoff_max: float = 30.0,
                 retry_after_max: float = 60.0, close_timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.recorder = recorder
        self.pod = pod
        self.counters: dict[str, dict[str, int]] = {name: {} for name in COUNTER_NAMES}
        self.trace = None  # callable(rule, action, phase, ex) when an action runs (tests, tracing)
        self.close_timeout = close_timeout
        self.clock = clock           # cooldown/threshold windows (tests pass a fake clock)
        self._poster = Poster({"Content-Type": "application/json", "User-Agent": "decorator-sidecar"},
                              retry_after_max=retry_after_max, max_connections=max(1, concurrency))
        # Webhooks of different rules are different receivers: one's outage must not hold back the
        # others, so retries wait per event (no shared backoff gate) and a slow one holds one slot.
        self.delivery = Delivery("notify", self._send, queue_size=queue_size, concurrency=concurrency,
                                 retries=lambda batch: batch[0][2].retries, backoff=backoff,
                                 backoff_max=backoff_max, shared_backoff=False, on_settled=self._settled,
                                 logger=log, warn_every=WARN_EVERY,
                                 label=lambda batch: f"notify {batch[0][0]} ({batch[0][2].url})")
        self._queue = self.delivery.queue
        self._action_state: dict[tuple, dict] = {}

    @property
    def sleep(self) -> Callable:
        return self.delivery.sleep

    @sleep.setter
    def sleep(self, fn: Callable) -> None:  # backoff waits (tests observe the delays asked for)
        self.delivery.sleep = fn

    def state_for(self, key: tuple) -> dict:
        """Per-process state an action keeps across reloads (a notify cooldown must not restart
        because the ConfigMap changed); `key` should include the action's config."""
        return self._action_state.setdefault(key, {})

    def count(self, counter: str, rule: str, n: int = 1) -> None:
        d = self.counters[counter]
        d[rule] = d.get(rule, 0) + n

    # -- request path side: never waits -------------------------------------------------------
    def submit(self, rule: str, event: dict, target: NotifyTarget) -> bool:
        """Queue one event for sending; False (and counted as dropped) when the queue is full."""
        return self.delivery.submit((rule, event, target))

    # -- background side ----------------------------------------------------------------------
    async def start(self) -> None:
        await self.delivery.start()

    async def _send(self, batch: list) -> Result:
        rule, event, target = batch[0]
        r = await self._poster.post(target.url, json.dumps(event).encode(), target.headers, target.timeout)
        return r

    def _settled(self, items: list, how: str) -> None:
        for rule, _, _ in items:
            self.count(_SETTLED[how], rule)

    async def close(self, timeout: float | None = None) -> None:
        """Flush queued events (bounded by `timeout`, default close_timeout), then stop."""
        await self.delivery.close(self.close_timeout if timeout is None else timeout)
        await self._poster.close()
