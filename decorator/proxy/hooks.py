"""The contract between the tunnel and whatever decorates it: Exchange, Reply and Hooks.

Owns the per-exchange record the tunnel fills in and the three hook points it calls.
Must not import rules, actions, telemetry or pydantic: the proxy knows nothing of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

# Header lists are kept as on the wire: (name as sent, value), in order, duplicates kept.
Headers = list[tuple[bytes, bytes]]


def header_get(headers: Headers, name: bytes) -> bytes | None:
    """First value of header `name` (lower-case bytes), case-insensitively; None when absent."""
    for k, v in headers:
        if len(k) == len(name) and k.lower() == name:
            return v
    return None


class Exchange:
    """One request/response pair as the tunnel saw it.

    The tunnel creates it when a request head is complete, and fills the response side and
    the accounting as the exchange goes. Hooks may read everything, may edit
    `request_headers` in `on_request` and `response_headers` in `on_response_head`, and may set
    `route` (the endpoint name used by telemetry) and keep their own data in `state`.

    To edit headers, assign a new list (`ex.request_headers = [...]`): the tunnel notices an edit
    by the list's identity (or a change of its length), not by comparing every field, and then
    re-applies its own rules (hop-by-hop fields dropped, framing kept its own).
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "client",
        "error",
        "method",
        "path",
        "query",
        "reason",
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
        self.reason = ""
        self.response_headers: Headers | None = None
        self.replaced = False                # True when a hook or the proxy answered instead of the app
        self.bytes_in = 0                    # request body bytes read from the client
        self.bytes_out = 0                   # response body bytes written to the client
        self.t_start = time.monotonic()      # request head complete
        self.t_response = 0.0                # response head known (app's or a hook's)
        self.t_end = 0.0                     # last response byte written (or the exchange failed)
        self.error: str | None = None        # e.g. "upstream_refused", "upstream_timeout", "client_closed"
        self.route: str | None = None        # endpoint name (route template) set by hooks
        self.state: dict | None = None       # hooks' scratch space for this exchange
        self.upgraded = False                # became a raw tunnel after 101

    def request_header(self, name: bytes) -> bytes | None:
        return header_get(self.request_headers, name)

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
    gives Content-Length, read in chunks, never whole). `headers` must not carry framing
    headers (Content-Length/Transfer-Encoding/Connection): the tunnel frames the reply itself.
    """

    __slots__ = ("body", "file", "headers", "reason", "status")

    def __init__(self, status: int, headers: Headers | None = None, body: bytes = b"",
                 file: str | None = None, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else []
        self.body = body
        self.file = file


class Hooks:
    """What the tunnel calls; subclass and set what you need, leave the rest None.

    All three are plain synchronous callables run on the event loop: they must not block.
    Work that waits (webhooks, pushes) is queued to a task by the hook itself.

    on_request(ex) -> Reply | None
        the request head is complete, before the app is called; a Reply answers directly.
    on_response_head(ex) -> Reply | None
        the app's response head is known (ex.status, ex.response_headers); a Reply replaces
        the app's response (its body is discarded).
    on_complete(ex) -> None
        the exchange is over (also after errors: ex.error says why); ex.status is what the
        client got.

    A hook that raises is logged and counted by the tunnel; the exchange goes on as if the hook
    had returned None. The tunnel takes the Hooks object once per exchange, so swapping
    `Server.hooks` (a reload) never changes an exchange in flight.
    """

    on_request: Callable[[Exchange], Reply | None] | None = None
    on_response_head: Callable[[Exchange], Reply | None] | None = None
    on_complete: Callable[[Exchange], None] | None = None
    # When set, on_response_head is only called for these statuses (None: for every status). A
    # promise by the hooks that other statuses would get None anyway; it saves a call per response.
    response_statuses: frozenset[int] | None = None
    # Promises by first path segment ('/api' of '/api/v1/x'; the whole path when it has one
    # segment). request_heads maps a method (or "*", every other method) to the segments for
    # which on_request may do anything; response_heads maps a status to the segments for which
    # on_response_head may. A missing map or a None entry: no promise, always call.
    request_heads: dict[str, frozenset[str] | None] | None = None
    response_heads: dict[int, frozenset[str] | None] | None = None


def path_head(path: str) -> str:
    """The first segment of a path, as the head promises use it ('/api/v1' -> '/api')."""
    i = path.find("/", 1)
    return path if i < 0 else path[:i]


class ChainedHooks(Hooks):
    """Several Hooks as one: request/response hooks in order until one replies; every completion hook."""

    def __init__(self, parts: Iterable[Hooks]) -> None:
        self.parts = [p for p in parts if p is not None]
        req = [p.on_request for p in self.parts if p.on_request is not None]
        resp = [p.on_response_head for p in self.parts if p.on_response_head is not None]
        done = [p.on_complete for p in self.parts if p.on_complete is not None]
        if req:
            self.on_request = req[0] if len(req) == 1 else _first_reply(req)
        if resp:
            self.on_response_head = resp[0] if len(resp) == 1 else _first_reply(resp)
            sets = [p.response_statuses for p in self.parts if p.on_response_head is not None]
            self.response_statuses = None if any(x is None for x in sets) else frozenset().union(*sets)
            self.response_heads = _merge_heads([p.response_heads for p in self.parts
                                                if p.on_response_head is not None])
        if req:
            self.request_heads = _merge_heads([p.request_heads for p in self.parts if p.on_request is not None])
        if done:
            self.on_complete = done[0] if len(done) == 1 else _all(done)


def _merge_heads(maps: list) -> dict | None:
    """One promise for several parts: a key's segments are the union of the parts' (None if
    any part makes no promise for it); a key only some parts name falls back to their "*"."""
    if not maps or any(m is None for m in maps):
        return None
    if len(maps) == 1:
        return maps[0]
    out: dict = {}
    for key in set().union(*maps):
        sets = [m.get(key, m.get("*")) for m in maps]
        out[key] = None if any(x is None for x in sets) else frozenset().union(*sets)
    return out


def chain(*parts: Hooks | None) -> Hooks | None:
    """Combine hooks; None when nothing is left, so the tunnel's fast path stays hook-free."""
    live = [p for p in parts if p is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]
    return ChainedHooks(live)


def _first_reply(fns: list[Callable[[Exchange], Reply | None]]) -> Callable[[Exchange], Reply | None]:
    def call(ex: Exchange) -> Reply | None:
        for fn in fns:
            r = fn(ex)
            if r is not None:
                return r
        return None
    return call


def _all(fns: list[Callable[[Exchange], None]]) -> Callable[[Exchange], None]:
    if len(fns) == 2:
        # Telemetry plus rules, the usual pair: this runs for every exchange, so no loop.
        first, second = fns

        def call2(ex: Exchange) -> None:
            first(ex)
            second(ex)
        return call2

    def call(ex: Exchange) -> None:
        for fn in fns:
            fn(ex)
    return call
