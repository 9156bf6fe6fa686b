"""The contract between the tunnel and whatever decorates it: Exchange, Reply, Retry, Hooks, Interest, chain().

Owns the per-exchange record hooks see, the three hook points and which exchanges each wants, and
how several Hooks run as one (each part isolated). Must not import rules, actions, telemetry or pydantic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger("decorator.proxy")

# Header lists are kept as on the wire: (name as sent, value), in order, duplicates kept.
Headers = list[tuple[bytes, bytes]]


def header_get(headers: Headers, name: bytes) -> bytes | None:
    """First value of header `name` (lower-case bytes), case-insensitively; None when absent."""
    for k, v in headers:
        if len(k) == len(name) and k.lower() == name:
            return v
    return None


def first_segment(path: str) -> str:
    """The first segment of a path, as Interest uses it ('/api/v1' -> '/api'; '/x' -> '/x')."""
    i = path.find("/", 1)
    return path if i < 0 else path[:i]


class Exchange:
    """One request/response pair as the tunnel saw it.

    The tunnel creates it when a request head is complete and fills in the response side and the
    accounting as the exchange goes. Hooks may read everything, may edit `request_headers` in
    `on_request` and `response_headers` in `on_response_head` (in place or by assigning a new list:
    the tunnel re-applies its own rules to whatever a hook was given, so a hop-by-hop or framing
    field a hook adds never reaches the other side), may change the request target the app is
    sent with `set_target` in `on_request`, may set `route` (the endpoint name telemetry uses) and
    keep their own data in `state`.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "client",
        "error",
        "method",
        "path",
        "query",
        "replaced",
        "request_headers",
        "request_id",
        "response_headers",
        "route",
        "scheme",
        "state",
        "status",
        "t_end",
        "t_response",
        "t_start",
        "target",
        "upgraded",
        "version",
    )

    def __init__(self, method: str, target: str, version: str, request_headers: Headers,
                 client: str, scheme: str = "http", request_id: str = "") -> None:
        self._begin(method, target, version, request_headers, client, scheme, request_id)

    def _begin(self, method: str, target: str, version: str, request_headers: Headers,
               client: str, scheme: str, request_id: str) -> None:
        """Every field's first value; the tunnel's own exchanges (a subclass) start here too."""
        self.method = method
        self.target = target
        q = target.find("?")
        self.path = target if q < 0 else target[:q]
        self.query = "" if q < 0 else target[q + 1:]
        self.version = version
        self.request_headers = request_headers
        self.client = client
        self.scheme = scheme
        self.request_id = request_id
        self.status = 0                      # final status sent to the client; 0 until known
        self.response_headers: Headers | None = None
        self.replaced = False                # True when a hook or the sidecar answered instead of the app
        self.bytes_in = 0                    # request body bytes read from the client
        self.bytes_out = 0                   # response body bytes written to the client
        self.t_start = time.monotonic()      # request head complete
        self.t_response = 0.0                # response head known (app's or a hook's)
        self.t_end = 0.0                     # last response byte written (or the exchange failed)
        self.error: str | None = None        # e.g. "upstream_refused", "upstream_timeout", "client_closed"
        self.route: str | None = None        # endpoint name (route template) set by hooks
        self.state: dict | None = None       # hooks' scratch space for this exchange
        self.upgraded = False                # became a raw tunnel after 101

    def set_target(self, target: str) -> None:
        """Send the app `target` ("/path?query") instead of what the client asked for (`on_request`
        only); `path` and `query` follow. Checked here, so a hook cannot put a space, a control
        character or a non-ASCII byte on the request line: ValueError (the hook failed)."""
        if not target.startswith("/") or not target.isascii() or any(c <= " " or c == "\x7f" for c in target):
            raise ValueError(f"a request target is '/' then printable ASCII without spaces, got {target!r}")
        self.target = target
        q = target.find("?")
        self.path = target if q < 0 else target[:q]
        self.query = "" if q < 0 else target[q + 1:]

    def request_header(self, name: bytes) -> bytes | None:
        return header_get(self.request_headers, name)

    def can_resend(self) -> bool:
        """Whether a response hook's Retry would be honoured now (see Retry). A simulated exchange
        has no body and nothing has gone out, so yes; the tunnel's exchanges say for themselves."""
        return True

    def kept_body(self) -> bytes | None:
        """The request's body when the tunnel kept it (see Hooks.keep_bodies), b"" when it had
        none, None when it was not kept. A simulated exchange has no body."""
        return b""

    def response_header(self, name: bytes) -> bytes | None:
        return header_get(self.response_headers, name) if self.response_headers else None

    @property
    def started_at(self) -> float:
        """Wall-clock time of t_start (derived: one clock read per exchange is enough)."""
        return time.time() - (time.monotonic() - self.t_start)

    @property
    def duration(self) -> float:
        """Seconds from request head to last response byte (or to now while in flight)."""
        return (self.t_end or time.monotonic()) - self.t_start

    @property
    def upstream_latency(self) -> float:
        """Seconds from request head to response head; 0.0 when there was no response head."""
        return self.t_response - self.t_start if self.t_response else 0.0


class Reply:
    """A response a hook sends instead of the app's.

    `body` is sent as is; when `file` is set the tunnel streams that file instead (its size
    gives Content-Length, read in chunks, never whole). Framing headers in `headers`
    (Content-Length, Transfer-Encoding, Connection...) are dropped: the tunnel frames replies itself.
    """

    __slots__ = ("body", "file", "headers", "reason", "status")

    def __init__(self, status: int, headers: Headers | None = None, body: bytes = b"",
                 file: str | None = None, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else []
        self.body = body
        self.file = file


# A hook asking again and again is a bug; the exchange stops honouring Retry after this many.
MAX_RESENDS = 10


class Retry:
    """What `on_response_head` returns to have the request sent to the app again instead of
    answering with this response (the app's answer, or the sidecar's own 502/504 with `ex.error`
    saying why, is dropped; the response phase runs again on the next answer).

    Honoured only while `ex.can_resend()`: nothing of the response went to the client, the request
    is not an Upgrade, and the app can be given the whole request again (it got none of it, or the
    request had no body, or the tunnel kept its body: see Hooks.keep_bodies). Otherwise, and
    after MAX_RESENDS, it counts as None.
    Which requests are safe to send twice (idempotent methods) is the hook's call.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str = "") -> None:
        self.reason = reason


_NOT_NAMED = object()


class Interest:
    """Which exchanges a hook may act on, so the tunnel skips the call for every other one.

    `by_key` maps a key (the method for the request phase, the status for the response phase) to
    the first path segments the hook may act on there, or None for every path. `"*"` stands for
    every key not named; a key neither named nor covered by `"*"` is not wanted at all.
    """

    __slots__ = ("by_key", "keyed", "star")

    def __init__(self, by_key: dict[Any, frozenset[str] | None]) -> None:
        self.by_key = by_key
        # Only "*": every key alike, and the key (a fresh method string) need not be hashed.
        self.keyed = bool(by_key.keys() - {"*"})
        self.star = by_key.get("*", _NOT_NAMED)

    def wants(self, key: Any, path: str) -> bool:
        segments = self.by_key.get(key, _NOT_NAMED) if self.keyed else _NOT_NAMED
        if segments is _NOT_NAMED:
            segments = self.star
            if segments is _NOT_NAMED:
                return False
        if segments is None:
            return True
        i = path.find("/", 1)  # first_segment(path), inline: this runs for every exchange
        return (path if i < 0 else path[:i]) in segments

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interest) and other.by_key == self.by_key

    def __repr__(self) -> str:
        return f"Interest({self.by_key!r})"


def merge_interests(interests: list[Interest | None]) -> Interest | None:
    """One Interest for several parts: wanted where any part wants it; None (everything) when
    any part makes no promise."""
    if not interests or any(i is None for i in interests):
        return None
    if len(interests) == 1:
        return interests[0]
    keys = set().union(*(i.by_key for i in interests))  # type: ignore[union-attr]
    out: dict[Any, frozenset[str] | None] = {}
    for key in keys:
        sets = [i.by_key.get(key, i.by_key.get("*", frozenset())) for i in interests]  # type: ignore[union-attr]
        out[key] = None if any(s is None for s in sets) else frozenset().union(*sets)
    return Interest(out)


# What a request-phase hook may return: a Reply, None, or an awaitable of either (work that waits,
# such as asking an auth service; the tunnel holds the exchange until it resolves).
RequestResult = "Reply | None | Awaitable[Reply | None]"


class Hooks:
    """What the tunnel calls; subclass and set what you need, leave the rest None.

    on_request(ex) -> Reply | None | Awaitable[Reply | None]
        the request head is complete, before the app is called; a Reply answers directly.
        Return an awaitable only for work that must wait; the tunnel then runs it as a task.
    on_response_head(ex) -> Reply | Retry | None
        the response head is known (ex.status, ex.response_headers): the app's, or the sidecar's
        own 502/504; a Reply replaces it (the app's body is read and dropped); a Retry sends the
        request to the app again when `ex.can_resend()` (see Retry).
    on_complete(ex) -> None
        the exchange is over (also after errors: ex.error says why); ex.status is what the client got.

    Hooks are plain synchronous callables run on the event loop: they must not block. A hook
    that raises is logged and counted by the tunnel; the exchange goes on as if it had returned
    None. The tunnel takes the Hooks object once per exchange, so swapping `ProxyServer.hooks`
    (a reload) never changes an exchange in flight.

    request_interest / response_interest (None: every exchange) say which exchanges the
    hook may act on; the tunnel calls the hook for no other one. `keep_bodies` > 0 asks the
    tunnel to keep a copy of request bodies up to that many bytes that were complete when the
    app was asked, for a Retry and for `ex.kept_body()` (0: nothing is kept).
    """

    on_request: Callable[[Exchange], Any] | None = None
    on_response_head: Callable[[Exchange], Reply | None] | None = None
    on_complete: Callable[[Exchange], None] | None = None
    request_interest: Interest | None = None
    response_interest: Interest | None = None
    keep_bodies: int = 0


def hook_name(fn: Any) -> str:
    """A hook's name for logs: the bound object's class and method ('TelemetryHooks.observe')."""
    return getattr(fn, "__qualname__", None) or repr(fn)


class ChainedHooks(Hooks):
    """Several Hooks as one: request and response hooks in order until one replies, every
    completion hook. Each part is isolated: a part that raises is reported through `on_error`
    (the tunnel logs it under the part's name and counts it) and the next parts still run."""

    def __init__(self, parts: Iterable[Hooks]) -> None:
        self.parts = [p for p in parts if p is not None]
        self.on_error: Callable[[Any, Exchange], None] = _log_failure
        req = [(p.on_request, p.request_interest) for p in self.parts if p.on_request is not None]
        resp = [(p.on_response_head, p.response_interest) for p in self.parts if p.on_response_head is not None]
        done = [p.on_complete for p in self.parts if p.on_complete is not None]
        self.keep_bodies = max(p.keep_bodies for p in self.parts) if self.parts else 0
        if req:
            self._req = tuple(req)
            self.on_request = self._on_request
            self.request_interest = merge_interests([i for _, i in req])
        if resp:
            self._resp = tuple(resp)
            self.on_response_head = self._on_response_head
            self.response_interest = merge_interests([i for _, i in resp])
        if done:
            self._done = tuple(done)
            self.on_complete = self._on_complete

    def _on_request(self, ex: Exchange) -> Any:
        return self._request_from(0, ex)

    def _request_from(self, start: int, ex: Exchange) -> Any:
        """The request hooks from part `start` on, until one replies; an awaitable when one waits."""
        parts = self._req
        for n in range(start, len(parts)):
            fn, interest = parts[n]
            if interest is not None and not interest.wants(ex.method, ex.path):
                continue
            try:
                r = fn(ex)
            except Exception:
                self.on_error(fn, ex)
                continue
            if r is not None:
                if type(r) is Reply:
                    return r
                return self._await_rest(r, fn, n + 1, ex)
        return None

    async def _await_rest(self, pending: Awaitable, fn: Any, start: int, ex: Exchange) -> Reply | None:
        """A part answered with an awaitable: wait for it, then run the parts after it."""
        try:
            r = await pending
        except Exception:
            self.on_error(fn, ex)
            r = None
        if r is None:
            r = self._request_from(start, ex)
            if r is not None and type(r) is not Reply:
                r = await r  # a later part waits too (its own wait runs the parts after it)
        return r

    def _on_response_head(self, ex: Exchange) -> Reply | Retry | None:
        for fn, interest in self._resp:
            if interest is not None and not interest.wants(ex.status, ex.path):
                continue
            try:
                r = fn(ex)
            except Exception:
                self.on_error(fn, ex)
                continue
            if r is not None:
                return r
        return None

    def _on_complete(self, ex: Exchange) -> None:
        for fn in self._done:
            try:
                fn(ex)
            except Exception:
                self.on_error(fn, ex)


def _log_failure(fn: Any, ex: Exchange) -> None:
    log.exception("hook %s failed for %s %s (request %s); continuing without it",
                  hook_name(fn), ex.method, ex.target, ex.request_id)


def chain(*parts: Hooks | None) -> Hooks | None:
    """Combine hooks; None when nothing is left, so the tunnel's fast path stays hook-free."""
    live = [p for p in parts if p is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]
    return ChainedHooks(live)
