"""One delivery client for what the sidecar sends in the background: notify webhooks, the dashboard push, OTLP.

Owns the bounded queue (drops counted, never a wait on the request path), batching, retries with
exponential backoff and `Retry-After`, throttled warnings and the shared HTTP poster. Imports only the
standard library (httpx lazily, at the first post); nothing from the package, so every part may use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

log = logging.getLogger("decorator.delivery")

OK, RETRY, REJECT = "ok", "retry", "reject"
# Answers that mean "try again later"; any other 4xx means the receiver will never take this body.
RETRY_STATUS = frozenset({408, 425, 429})


class Result(NamedTuple):
    """What one attempt came to: OK, RETRY (with the receiver's Retry-After, if any) or REJECT."""

    outcome: str
    reason: str = ""
    delay: float | None = None


def retry_after(value: str | None, cap: float) -> float | None:
    """Retry-After as seconds or an HTTP date, capped so a receiver cannot park the sender."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        import email.utils  # rare (most receivers send seconds); not loaded by every sidecar at start
        try:
            secs = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(secs, cap))


class Poster:
    """The HTTP side: one httpx client (made at the first post, so idle sidecars never import httpx),
    each post bounded as a whole by its timeout, the answer classified into a Result."""

    def __init__(self, headers: dict[str, str] | None = None, retry_after_max: float = 60.0,
                 max_connections: int = 4) -> None:
        self.headers = headers or {}
        self.retry_after_max = retry_after_max
        self.max_connections = max_connections
        self._client: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)

    def warm(self) -> None:
        """Make the client now (importing httpx takes tens of milliseconds): for a sender that will
        certainly post, so the first post does not pay it in the middle of traffic."""
        if self._client is None:
            self._make()

    def _make(self) -> Any:
        import httpx
        self._client = httpx.AsyncClient(headers=self.headers, follow_redirects=False, trust_env=False,
                                         limits=httpx.Limits(max_connections=self.max_connections,
                                                             max_keepalive_connections=self.max_connections))
        self._errors = (httpx.HTTPError, OSError)
        return self._client

    async def post(self, url: str, body: bytes, headers: Iterable[tuple[str, str]] = (),
                   timeout: float = 5.0) -> Result:
        client = self._client or self._make()
        try:
            # httpx's timeout is per phase; this bounds the whole post (a receiver trickling bytes,
            # or one that accepts the connection and never answers).
            async with asyncio.timeout(timeout):
                r = await client.post(url, content=body, headers=list(headers), timeout=timeout)
        except TimeoutError:
            return Result(RETRY, f"no answer within {timeout:g}s")
        except self._errors as e:
            return Result(RETRY, f"{type(e).__name__}: {e}".rstrip(": "))
        if r.status_code < 300:
            return Result(OK)
        reason = f"HTTP {r.status_code} {r.text[:200]!r}"
        if r.status_code >= 500 or r.status_code in RETRY_STATUS:
            return Result(RETRY, reason, retry_after(r.headers.get("retry-after"), self.retry_after_max))
        return Result(REJECT, reason)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class Pending(deque):
    """The queue: a deque that also answers asyncio.Queue's qsize()/get_nowait() (for inspection)."""

    def qsize(self) -> int:
        return len(self)

    def get_nowait(self) -> Any:
        return self.popleft()


Send = Callable[[list], Awaitable[Result]]
_NEVER = 1 << 62
# (the items of a batch, "sent" | "failed" | "dropped"): per-item accounting (notify counts per rule).
Settled = Callable[[list, str], None]


class Delivery:
    """A bounded queue drained by background workers that hand batches to `send` and retry them.

        d = Delivery("otlp traces", send, queue_size=2048, batch=512, linger=5.0)
        d.submit(item)            # request path: an append, or a counted drop; never waits
        await d.start(); ...; await d.close(timeout=5.0)

    queue_size: items waiting at most; past it the new item is dropped (`drop_oldest`: the oldest).
    batch / linger: up to `batch` items per send; a partial batch waits `linger` seconds for more.
    hold: a batch stays in the queue (and counts against its bound) until it is settled, so a
        receiver that is away keeps the oldest data and the bound covers everything unsent (one worker).
    retries: attempts after the first (None: until accepted, or dropped from a full queue; a
        callable gets the batch). Between attempts: backoff * 2^n up to backoff_max (jittered to
        50-100 % with `jitter`), or the receiver's Retry-After. `shared_backoff` (one receiver: the
        dashboard, a collector): n counts the receiver's consecutive failures and, while a retry
        waits, the receiver is left alone: `ready()` says whether it may be called now (for posts
        made outside the queue). Without it (webhooks, one URL per item) n counts this batch's
        attempts and the wait holds only this batch.
    At close (of a started client) every item still queued gets one try, bounded by the timeout; the rest is counted as
    dropped and left in the queue. Counters: sent and failed count attempts (batches), dropped counts
    items that will never be delivered (queue full, rejected, retries spent, left at close), retries
    the attempts after a failure. `on_settled(items, how)` hears each item's end: "sent", "failed"
    (rejected or retries spent) or "dropped" (queue full, or never tried).
    """

    def __init__(self, name: str, send: Send, *, queue_size: int = 1000, batch: int = 1, linger: float = 0.0,
                 concurrency: int = 1, hold: bool = False, drop_oldest: bool = False,
                 retries: int | None | Callable[[list], int] = 3, backoff: float = 0.5, backoff_max: float = 30.0,
                 jitter: bool = False, shared_backoff: bool = True, on_settled: Settled | None = None, logger: logging.Logger = log,
                 warn_every: float = 60.0, label: Callable[[list], str] | None = None) -> None:
        if hold and concurrency != 1:
            raise ValueError("hold keeps batches at the head of the queue: one worker only")
        self.name = name
        self.send = send
        self.queue = Pending()
        self.queue_size = max(1, queue_size)
        self.batch = max(1, batch)
        self.linger = linger
        self.concurrency = concurrency
        self.hold = hold
        self.drop_oldest = drop_oldest
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.shared_backoff = shared_backoff
        self.on_settled = on_settled
        self.log = logger
        self.warn_every = warn_every
        self.label = label  # names a batch in warnings (notify: the rule and its URL), one warning per label
        self.sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep  # tests observe the delays
        self.sent = self.failed = self.dropped = self.retried = 0
        self.failures = 0                   # consecutive failed attempts
        self.retry_at = 0.0                 # monotonic time before which the receiver is left alone
        self.last_ok: float | None = None   # wall clock of the last accepted send
        self.last_error: str | None = None
        self.closing = False
        self._wake = asyncio.Event()
        self._wake_at = _NEVER              # queue length at which submit wakes the dispatcher (when it waits)
        self._task: asyncio.Task | None = None
        self._inflight: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None
        self._warned: dict[str, float] = {}

    @property
    def counters(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "retries": self.retried,
                "queued": len(self.queue)}

    # -- request path side: never waits ----------------------------------------------------------
    def submit(self, item: Any) -> bool:
        """Queue one item; False (and counted as dropped) when the queue is full."""
        q = self.queue
        if len(q) >= self.queue_size:
            if not self.drop_oldest:
                self._settle([item], "dropped")
                return False
            self._settle([q.popleft()], "dropped")
        q.append(item)
        if len(q) >= self._wake_at:
            self._wake.set()
        return True

    def ready(self) -> bool:
        """False while a retry waits out its backoff: the receiver is left alone meanwhile."""
        return time.monotonic() >= self.retry_at

    # -- background side ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._slots = asyncio.Semaphore(self.concurrency)
            self._task = asyncio.get_running_loop().create_task(self._dispatch(), name=f"delivery {self.name}")

    async def _dispatch(self) -> None:
        assert self._slots is not None
        while True:
            await self._wait_for(1, None)
            if self.linger > 0 and len(self.queue) < self.batch:
                await self._wait_for(self.batch, self.linger)
            await self._slots.acquire()
            if not self.queue:
                self._slots.release()
                continue
            if self.hold:
                await self._run(self._take())  # the batch stays at the head until settled
            else:
                t = asyncio.get_running_loop().create_task(self._run(self._take()))
                self._inflight.add(t)
                t.add_done_callback(self._inflight.discard)

    async def _wait_for(self, n: int, timeout: float | None) -> None:
        if len(self.queue) >= n:
            return
        self._wake.clear()
        self._wake_at = n
        try:
            if timeout is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            self._wake_at = _NEVER  # not waiting: submit skips the wake-up (it checks the queue first)

    def _take(self) -> list:
        q = self.queue
        n = min(self.batch, len(q))
        if self.hold:
            return [q[i] for i in range(n)]
        return [q.popleft() for _ in range(n)]

    async def _run(self, batch: list) -> None:
        try:
            await self.deliver(batch)
        except asyncio.CancelledError:
            self._settle(self._release(batch), "dropped")
            raise
        except Exception:  # a bug in a sender must not end delivery for the life of the pod
            self.log.exception("%s: unexpected error while sending", self.name)
            self.failed += 1
            self._settle(self._release(batch), "failed")
        finally:
            assert self._slots is not None
            self._slots.release()

    async def deliver(self, batch: list) -> str:
        """Send one batch with this client's retries; "sent", "failed" or "dropped" (hold: already
        dropped from a full queue meanwhile). Also usable directly for a batch that never queued."""
        attempt = 0
        limit = self.retries(batch) if callable(self.retries) else self.retries
        while True:
            wait = self.retry_at - time.monotonic()
            if self.shared_backoff and wait > 0 and not self.closing:
                await self.sleep(wait)
            if self.hold and not self._held(batch):
                return "dropped"   # the queue was full while it waited: the drop was counted then
            r = await self.attempt(batch)
            if r.outcome == OK:
                self._settle(self._release(batch), "sent")
                return "sent"
            if self.hold and self.closing and r.outcome == RETRY:
                return "failed"    # stays queued: close() counts what is left as dropped
            if r.outcome == REJECT or self.closing or (limit is not None and attempt >= limit):
                label = self.label(batch) if self.label is not None else self.name
                self.warn(label, "%s: giving up on %d item(s) after %d attempt(s) (%s)", label,
                          len(batch), attempt + 1, r.reason)
                self._settle(self._release(batch), "failed")
                return "failed"
            if not self.shared_backoff:
                await self.sleep(r.delay if r.delay is not None else self._backoff(attempt))
            attempt += 1
            self.retried += 1

    def _backoff(self, n: int) -> float:
        delay = min(self.backoff_max, self.backoff * 2 ** min(n, 30))
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay

    async def attempt(self, batch: list) -> Result:
        """One try, counted: a failure sets the backoff that `ready()` and the next try wait out."""
        try:
            r = await self.send(batch)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a sender that raises is a failed attempt, not the end of the worker
            self.log.exception("%s: sender failed", self.name)
            r = Result(RETRY, f"{type(e).__name__}: {e}")
        if r.outcome == OK:
            if self.failures:
                self.log.info("%s: reachable again after %d failed attempt(s)", self.name, self.failures)
            self.sent += 1
            self.failures = 0
            self.retry_at = 0.0
            self.last_ok = time.time()
            return r
        self.failed += 1
        self.failures += 1
        self.last_error = r.reason
        if self.shared_backoff:
            self.retry_at = time.monotonic() + (r.delay if r.delay is not None else self._backoff(self.failures - 1))
        if self.failures == 1:  # one line per outage, not one per attempt
            self.warn(self.name + ":outage", "%s: send failed (%s); retrying with backoff", self.name, r.reason)
        return r

    def _held(self, batch: list) -> bool:
        return bool(self.queue) and self.queue[0] is batch[0]

    def _release(self, batch: list) -> list:
        """hold: take the batch's items off the queue's head (those a full queue has not dropped)."""
        if not self.hold:
            return batch
        q = self.queue
        kept = []
        for item in batch:
            if q and q[0] is item:
                kept.append(q.popleft())
        return kept

    def _settle(self, items: list, how: str) -> None:
        if how != "sent":
            self.dropped += len(items)
        if self.on_settled is not None and items:
            self.on_settled(items, how)

    def warn(self, key: str, msg: str, *args: Any) -> None:
        """One warning per key per `warn_every` seconds: a dead receiver must not flood the log
        (the counters have the totals)."""
        now = time.monotonic()
        if now - self._warned.get(key, -self.warn_every) >= self.warn_every:
            self._warned[key] = now
            self.log.warning(msg, *args)

    async def close(self, timeout: float = 5.0) -> None:
        """Give every queued item one try (bounded by `timeout`), then stop; what is left is counted
        as dropped and stays in the queue."""
        if self.closing:
            return
        self.closing = True
        self.retry_at = 0.0
        if self._task is None:  # never started: nothing was tried, everything queued is dropped
            if self.queue:
                self._settle(list(self.queue), "dropped")
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        current: list | None = None
        try:
            async with asyncio.timeout(timeout):
                if self._inflight:
                    await asyncio.gather(*self._inflight, return_exceptions=True)
                while self.queue:
                    current = self._take()
                    result = await self.deliver(current)
                    current = None
                    if result != "sent" and self.hold:
                        break
        except TimeoutError:
            if current is not None and not self.hold:
                self._settle(current, "dropped")
        for t in list(self._inflight):
            t.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self.queue:
            self._settle(list(self.queue), "dropped")
