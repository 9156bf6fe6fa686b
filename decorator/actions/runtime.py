"""Per-process state shared by compiled rule sets: counters, the record sink, the notify and mirror
senders, the auth service client.

Notify events go through the shared delivery client (decorator.delivery: bounded queue, retries with
backoff and Retry-After, throttled warnings); the request path only ever calls `submit` / `mirror` (put_nowait). Imports the
standard library, decorator.delivery and httpx (lazily); nothing from proxy, rules or telemetry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from decorator.delivery import Delivery, Poster, Result

log = logging.getLogger("decorator.notify")
log_shadow = logging.getLogger("decorator.rules.shadow")

WARN_EVERY = 60.0  # seconds between two log warnings about one rule's failing webhook
COUNTER_NAMES = ("rule_hits", "action_errors", "records", "notify_sent", "notify_failed",
                 "notify_dropped", "notify_suppressed", "shadow_hits", "ratelimit_rejected",
                 "cors_preflights", "fault_delays", "fault_aborts", "auth_allowed", "auth_denied", "auth_errors",
                 "mirror_sent", "mirror_failed", "mirror_dropped", "mirror_skipped", "retries",
                 "retry_budget_exhausted", "retry_not_resendable")
SHADOW_LOG_EVERY = 60.0  # seconds between two log lines about one shadow rule's would-be actions
AUTH_BODY_MAX = 64 * 1024  # an auth service's denial body is passed on up to this size
_SETTLED = {"sent": "notify_sent", "failed": "notify_failed", "dropped": "notify_dropped"}


class ServiceError(Exception):
    """An auth service could not be asked: unreachable, timed out, or its answer broke off."""


@dataclass(frozen=True)
class NotifyTarget:
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 5.0
    retries: int = 3


class Runtime:
    """Once per process: `await start()` before serving, `await close()` on the way out.

    counters: plain dicts {rule name: count} read by telemetry at scrape time; "shadow_hits" is
    {rule name: {action: count}}.
    workers, worker: how many worker processes serve the pod and which one this is (0-based; 1 and 0
    without --workers). State kept here (notify cooldowns, rate-limit buckets) is per process; an
    action whose numbers mean "per pod" reads `workers` (docs/workers.md says which do what).
    """

    def __init__(self, recorder: Any = None, pod: str = "", *, queue_size: int = 1000,
                 concurrency: int = 4, backoff: float = 0.5, backoff_max: float = 30.0,
                 retry_after_max: float = 60.0, close_timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, mirror_queue: int = 1000,
                 mirror_concurrency: int = 4, workers: int = 1, worker: int = 0) -> None:
        self.recorder = recorder
        self.pod = pod
        self.workers = workers
        self.worker = worker
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
        self._clients: dict[str, Any] = {}   # auth, mirror: one httpx client each (a slow mirror target
        #                                       must not hold the connections auth checks need)
        self._mirror_size = mirror_queue
        self._mirror_concurrency = mirror_concurrency
        self._mirror_q: asyncio.Queue | None = None
        self._mirror_tasks: list[asyncio.Task] = []
        self._warned: dict[str, float] = {}
        self._shadow_logged: dict[str, tuple[float, int]] = {}  # rule -> (last line, hits since)

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

    def shadow_hit(self, rule: str, action: str, what: str, ex: Any) -> None:
        """A shadow rule's action would have done `what` to exchange `ex`: count it, and log it
        with the request id (one line per rule per minute, saying how many were not logged)."""
        by_action = self.counters["shadow_hits"].get(rule)
        if by_action is None:
            by_action = self.counters["shadow_hits"][rule] = {}
        by_action[action] = by_action.get(action, 0) + 1
        now = time.monotonic()
        last, quiet = self._shadow_logged.get(rule, (-SHADOW_LOG_EVERY, 0))
        if now - last < SHADOW_LOG_EVERY:
            self._shadow_logged[rule] = (last, quiet + 1)
            return
        self._shadow_logged[rule] = (now, 0)
        if log_shadow.isEnabledFor(logging.INFO):
            more = f" ({quiet} more since the last line)" if quiet else ""
            log_shadow.info("shadow rule %s: %s would %s for %s %s (request %s)%s", rule, action, what,
                            ex.method, ex.path, ex.request_id, more)

    # -- request path side: never waits -------------------------------------------------------
    def submit(self, rule: str, event: dict, target: NotifyTarget, key: str = "", cooldown: float = 0.0) -> bool:
        """Queue one event for sending; False (and counted as dropped) when the queue is full.

        `key` and `cooldown` are the rule's dedupe key and cooldown, already applied by the caller in
        this process; a worker's runtime forwards them so the supervisor applies them per pod."""
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

    def _warn(self, event: dict, msg: str, *args: Any) -> None:
        """One warning per rule per minute: a dead receiver must not flood the log (the counters
        have the totals)."""
        rule = str(event.get("rule"))
        now = time.monotonic()
        if now - self._warned.get(rule, -WARN_EVERY) >= WARN_EVERY:
            self._warned[rule] = now
            log.warning(msg, *args)

    def http(self, purpose: str) -> Any:
        """The process's httpx.AsyncClient for `purpose` ("auth", "mirror"), made at first use."""
        client = self._clients.get(purpose)
        if client is None:
            import httpx
            client = self._clients[purpose] = httpx.AsyncClient(follow_redirects=False)
        return client

    # -- forward_auth: asked on the request path, awaited by the exchange ----------------------
    async def auth_request(self, url: str, headers: list[tuple[bytes, bytes]],
                           timeout: float) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """GET `url` with `headers`: (status, raw headers, body up to AUTH_BODY_MAX, as sent).
        ServiceError when the service cannot be reached or does not answer within `timeout`."""
        import httpx
        try:
            async with asyncio.timeout(timeout):
                return await self._auth_get(url, headers, timeout)
        except (httpx.HTTPError, OSError, TimeoutError) as e:
            raise ServiceError(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e

    async def _auth_get(self, url: str, headers: list[tuple[bytes, bytes]],
                        timeout: float) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        async with self.http("auth").stream("GET", url, headers=headers, timeout=timeout) as r:
            body = b""
            async for part in r.aiter_raw():  # raw: a Content-Encoding the service set stays true
                body += part
                if len(body) > AUTH_BODY_MAX:
                    raise ServiceError(f"answer body over {AUTH_BODY_MAX} bytes")
            return r.status_code, list(r.headers.raw), body

    # -- mirror: fire and forget ---------------------------------------------------------------
    def mirror(self, rule: str, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes,
               timeout: float) -> bool:
        """Queue one copy of a request; False (counted as dropped) when the queue is full."""
        q = self._mirror_q
        if q is None:
            q = self._mirror_q = asyncio.Queue(self._mirror_size)
            loop = asyncio.get_running_loop()
            self._mirror_tasks = [loop.create_task(self._mirror_worker(q), name="decorator-mirror")
                                  for _ in range(self._mirror_concurrency)]
        try:
            q.put_nowait((rule, method, url, headers, body, timeout))
        except asyncio.QueueFull:
            self.count("mirror_dropped", rule)
            return False
        return True

    async def _mirror_worker(self, q: asyncio.Queue) -> None:
        while True:
            rule, method, url, headers, body, timeout = await q.get()
            try:
                # asyncio.timeout, not wait_for: wait_for can swallow the cancel of close()
                # when the send fails at the same moment, and the worker would never end.
                async with asyncio.timeout(timeout):
                    await self._send_copy(method, url, headers, body, timeout)
                self.count("mirror_sent", rule)
            except asyncio.CancelledError:
                self.count("mirror_dropped", rule)
                raise
            except Exception as e:  # the target's trouble is counted; the worker goes on
                self.count("mirror_failed", rule)
                self._warn({"rule": rule}, "mirror %s: %s failed (%s)", rule, url, type(e).__name__)
            finally:
                q.task_done()

    async def _send_copy(self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes,
                         timeout: float) -> None:
        async with self.http("mirror").stream(method, url, headers=headers, content=body, timeout=timeout):
            pass  # the answer is not read: its status and body do not matter

    async def close(self, timeout: float | None = None) -> None:
        """Flush queued events (bounded by `timeout`, default close_timeout), then stop."""
        await self.delivery.close(self.close_timeout if timeout is None else timeout)
        await self._poster.close()
        for t in self._mirror_tasks:
            t.cancel()
        await asyncio.gather(*self._mirror_tasks, return_exceptions=True)
        self._mirror_tasks = []
        if self._mirror_q is not None:
            while not self._mirror_q.empty():
                self.count("mirror_dropped", self._mirror_q.get_nowait()[0])
            self._mirror_q = None
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
