"""Per-process state shared by compiled rule sets: counters, the record sink, the notify and mirror
senders, the auth service client.

Each sender is background tasks draining a bounded queue with httpx; the request path only ever
calls `submit` / `mirror` (put_nowait). Imports the standard library and httpx (lazily); nothing
from proxy, rules or telemetry.
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
log_shadow = logging.getLogger("decorator.rules.shadow")

WARN_EVERY = 60.0  # seconds between two log warnings about one rule's failing webhook
COUNTER_NAMES = ("rule_hits", "action_errors", "records", "notify_sent", "notify_failed",
                 "notify_dropped", "notify_suppressed", "shadow_hits", "ratelimit_rejected",
                 "cors_preflights", "fault_delays", "fault_aborts", "auth_allowed", "auth_denied", "auth_errors",
                 "mirror_sent", "mirror_failed", "mirror_dropped", "mirror_skipped", "retries",
                 "retry_budget_exhausted", "retry_not_resendable")
SHADOW_LOG_EVERY = 60.0  # seconds between two log lines about one shadow rule's would-be actions
AUTH_BODY_MAX = 64 * 1024  # an auth service's denial body is passed on up to this size


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
    """

    def __init__(self, recorder: Any = None, pod: str = "", *, queue_size: int = 1000,
                 concurrency: int = 4, backoff: float = 0.5, backoff_max: float = 30.0,
                 retry_after_max: float = 60.0, close_timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, mirror_queue: int = 1000,
                 mirror_concurrency: int = 4) -> None:
        self.recorder = recorder
        self.pod = pod
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
        self._clients: dict[str, Any] = {}   # auth, mirror: one httpx client each (a slow mirror target
        #                                       must not hold the connections auth checks need)
        self._mirror_size = mirror_queue
        self._mirror_concurrency = mirror_concurrency
        self._mirror_q: asyncio.Queue | None = None
        self._mirror_tasks: list[asyncio.Task] = []
        self._inflight: set[asyncio.Task] = set()
        self._action_state: dict[tuple, dict] = {}
        self._warned: dict[str, float] = {}
        self._shadow_logged: dict[str, tuple[float, int]] = {}  # rule -> (last line, hits since)

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
    def submit(self, rule: str, event: dict, target: NotifyTarget) -> bool:
        """Queue one event for sending; False (and counted as dropped) when the queue is full."""
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
        if self._client is not None:
            await self._client.aclose()
            self._client = None
