"""One exchange's order, without sockets: request hooks, the app or a reply, response hooks, completion.

Owns which hook runs when, and what the sidecar re-applies to headers a hook was handed (hop-by-hop
and framing fields never pass). The tunnel drives real exchanges through these phases;
`decorator test` and `decorator explain` drive simulated ones through simulate(), so the three
cannot disagree on the order. Must not import rules, actions, telemetry or sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from decorator.proxy.hooks import MAX_RESENDS, Exchange, Headers, Hooks, Reply, Retry
from decorator.proxy.http import HOP_BY_HOP, connection_tokens

# A hook's failure is reported here: (the hook, the exchange); the tunnel logs and counts.
OnError = Callable[[Any, Exchange], None]

# Fields a hook may not set on either side: hop-by-hop ones and the body's framing.
_NOT_FROM_HOOKS = HOP_BY_HOP | {b"content-length"}


# What a phase returns when no hook was called for the exchange (none set, or its Interest does not
# want it): the caller then knows the headers were not handed to a hook and need no cleaning.
NOT_CALLED = object()


def _call(fn: Any, interest: Any, key: Any, ex: Exchange, on_error: OnError) -> Any:
    """Call hook `fn` for ex if its interest wants (key, path): what it returned, None if it raised
    (reported), NOT_CALLED if it was not called."""
    if fn is None:
        return NOT_CALLED
    if interest is not None and not interest.wants(key, ex.path):
        return NOT_CALLED
    try:
        return fn(ex)
    except Exception:
        on_error(fn, ex)
        return None


def request_phase(hooks: Hooks, ex: Exchange, on_error: OnError) -> Any:
    """Run on_request if it wants this exchange: a Reply, None, an awaitable of either, or NOT_CALLED."""
    return _call(hooks.on_request, hooks.request_interest, ex.method, ex, on_error)


def response_phase(hooks: Hooks | None, ex: Exchange, on_error: OnError) -> Any:
    """Run on_response_head for the head in ex (status, response_headers) if it wants it: the Reply
    that replaces the response, a Retry, None (the hook saw, and may have edited, the headers), or
    NOT_CALLED."""
    if hooks is None:
        return NOT_CALLED
    return _call(hooks.on_response_head, hooks.response_interest, ex.status, ex, on_error)


def complete_phase(hooks: Hooks | None, ex: Exchange, on_error: OnError) -> None:
    if hooks is None:
        return
    fn = hooks.on_complete
    if fn is not None:
        try:
            fn(ex)
        except Exception:
            on_error(fn, ex)


def clean_headers(headers: Any) -> Headers:
    """What a hook handed back, as a fresh list without hop-by-hop or framing fields (and without
    the fields a Connection header it added names). Anything not a list of pairs of bytes raises
    TypeError: a hook's bug, reported like any other."""
    named: frozenset[bytes] = frozenset()
    out: Headers = []
    for field in headers:
        name, value = field
        if type(name) is not bytes or type(value) is not bytes:
            raise TypeError(f"header fields are (bytes, bytes) pairs, got {field!r}")
        low = name.lower()
        if low in _NOT_FROM_HOOKS:
            if low == b"connection":
                named = named | connection_tokens(value)
            continue
        out.append((name, value))
    if named:
        out = [f for f in out if f[0].lower() not in named]
    return out


def _not_reported(fn: Any, ex: Exchange) -> None:
    raise  # simulate() lets a hook's bug surface with its own traceback


class Outcome:
    """What a simulated exchange ended as: what the client got, and what the app was sent."""

    __slots__ = ("body", "exchange", "headers", "replaced", "route", "status", "upstream_headers")

    def __init__(self, ex: Exchange, body: bytes, upstream_headers: Headers | None) -> None:
        self.exchange = ex
        self.status = ex.status
        self.headers = list(ex.response_headers or [])
        self.body = body
        self.replaced = ex.replaced
        self.upstream_headers = upstream_headers
        self.route = ex.route


# The app of a simulation: the exchange as it would be forwarded -> (status, headers, body).
App = Callable[[Exchange], "tuple[int, Headers, bytes]"]


def simulate(hooks: Hooks | None, ex: Exchange, app: App, on_error: OnError = _not_reported) -> Outcome:
    """Drive one exchange through `hooks` in the tunnel's order, with `app` in place of the network."""
    reply: Reply | None = None
    seen_by_app: Headers | None = None
    if hooks is not None and hooks.on_request is not None:
        r = request_phase(hooks, ex, on_error)
        if r is not None and r is not NOT_CALLED and type(r) is not Reply:
            r = asyncio.run(_resolve(r))
        if type(r) is Reply:
            reply = r
        else:
            # Unlike the tunnel's, these headers never went through check_request: always cleaned.
            ex.request_headers = clean_headers(ex.request_headers)
    if reply is None:
        resends = 0
        while True:
            seen_by_app = list(ex.request_headers)
            ex.status, ex.response_headers, body = app(ex)
            ex.t_response = ex.t_start
            r = response_phase(hooks, ex, on_error)
            if type(r) is not Retry:
                break
            if resends >= MAX_RESENDS or not ex.can_resend():
                r = None  # as in the tunnel: a Retry that cannot be honoured counts as None
                break
            resends += 1  # the app is asked again, as the tunnel would
        if r is None:
            ex.response_headers = clean_headers(ex.response_headers)
        elif r is not NOT_CALLED:
            reply = r
    if reply is not None:
        ex.replaced = True
        ex.status = reply.status
        ex.response_headers = clean_headers(reply.headers)
        if reply.file is not None:
            with open(reply.file, "rb") as f:
                body = f.read()
        else:
            body = reply.body
    if ex.method == "HEAD" or ex.status in (204, 304) or ex.status < 200:
        body = b""  # as on the wire: no body whatever the reply or the app had
    ex.t_response = ex.t_response or ex.t_start
    ex.bytes_out = len(body)
    ex.t_end = ex.t_start
    complete_phase(hooks, ex, on_error)
    return Outcome(ex, body, seen_by_app)


async def _resolve(pending: Any) -> Reply | None:
    return await pending

