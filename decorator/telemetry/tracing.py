"""Traces: W3C Trace Context in and out, the sampler, one server span per exchange, rule actions as events.

Owns the two hook parts a traced exchange meets (`TraceStart` first in the chain: reads `traceparent`,
decides, hands the app a `traceparent` naming the sidecar's span; `TraceEnd` last: the finished span,
as one tuple, goes to the exporter's queue) and `rule_event`, which the rules call for each action run.
The request path only parses, draws ids and appends; encoding and sending are the exporter's
(telemetry.otlp). Imports proxy.hooks only; must not import rules, settings or pydantic.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from random import getrandbits
from typing import Any

from decorator.proxy.hooks import Exchange, Hooks

SPAN = "trace.span"  # ex.state key of the exchange's span record (only on sampled exchanges)
# Span record fields (a list: rule_event appends events in place).
TRACE_ID, SPAN_ID, PARENT_ID, HOST, TRACESTATE, EVENTS = range(6)

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ROOT_NEVER, _ROOT_ALWAYS, _ROOT_RATIO = 0, 1, 2
_LOW64 = (1 << 64) - 1


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid W3C traceparent, else None (as if absent)."""
    m = _TRACEPARENT.fullmatch(value.strip(b" \t"))
    if m is None:
        return None
    version = m.group(1)
    if version == b"ff" or (version == b"00" and m.group(5) is not None):
        return None  # ff is forbidden; version 00 has exactly four fields
    trace_id = int(m.group(2), 16)
    parent = int(m.group(3), 16)
    if not trace_id or not parent:
        return None
    return trace_id, parent, int(m.group(4), 16)


class Sampler:
    """OTEL_TRACES_SAMPLER's decision. Root spans: always, never, or by trace id ratio (the trace
    id's low 64 bits below ratio * 2^64, as the OTel SDKs decide, so every service agrees on a
    trace). parentbased_*: a span with a remote parent follows the parent's sampled flag."""

    def __init__(self, name: str = "parentbased_always_on", ratio: float = 1.0) -> None:
        self.name = name
        self.parent_based = name.startswith("parentbased_")
        root = name.removeprefix("parentbased_")
        self.root = {"always_on": _ROOT_ALWAYS, "always_off": _ROOT_NEVER}.get(root, _ROOT_RATIO)
        self.bound = round(max(0.0, min(ratio, 1.0)) * (1 << 64))

    def sample(self, trace_id: int, parent_flags: int) -> bool:
        """parent_flags: the remote parent's trace flags, or -1 when the span is a root."""
        if parent_flags >= 0 and self.parent_based:
            return bool(parent_flags & 1)
        r = self.root
        if r == _ROOT_RATIO:
            return (trace_id & _LOW64) < self.bound
        return r == _ROOT_ALWAYS


class TraceStart(Hooks):
    """First in the chain: continue or start the trace, decide, and tell the app its parent."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.on_request = self.start

    def start(self, ex: Exchange) -> None:
        headers = ex.request_headers
        at = -1
        parent = host = tracestate = None
        for i, (name, value) in enumerate(headers):  # one pass for the three fields a span needs
            n = len(name)
            if n == 11:
                if name.lower() == b"traceparent":
                    at, parent = i, value
            elif n == 4:
                if name.lower() == b"host":
                    host = value
            elif n == 10 and name.lower() == b"tracestate":
                tracestate = value
        got = parse_traceparent(parent) if parent is not None else None
        if got is not None:
            trace_id, parent_id, flags = got
            if not self.sampler.sample(trace_id, flags):
                return None  # not recorded: the caller's traceparent goes on unchanged
        else:
            trace_id = getrandbits(128) or 1
            parent_id = 0
            if not self.sampler.sample(trace_id, -1):
                # Not recorded either, but the app learns the decision (parent-based samplers follow it).
                value = b"00-%032x-%016x-00" % (trace_id, getrandbits(64) or 1)
                if at >= 0:
                    headers[at] = (headers[at][0], value)
                else:
                    headers.append((b"traceparent", value))
                return None
        span_id = getrandbits(64) or 1
        value = b"00-%032x-%016x-01" % (trace_id, span_id)
        if at >= 0:
            headers[at] = (headers[at][0], value)
        else:
            headers.append((b"traceparent", value))
        span = [trace_id, span_id, parent_id, host, tracestate, None]
        st = ex.state
        if st is None:
            ex.state = {SPAN: span}
        else:
            st[SPAN] = span
        return None


class TraceEnd(Hooks):
    """Last in the chain (after the rules' completion actions): the finished span goes to `submit`
    as one tuple; the exporter encodes it later, off the request path."""

    def __init__(self, submit: Callable[[Any], bool]) -> None:
        self.submit = submit
        self.on_complete = self.end

    def end(self, ex: Exchange) -> None:
        st = ex.state
        if st is None:
            return
        span = st.get(SPAN)
        if span is None:
            return
        self.submit((span, ex.method, ex.path, ex.route, ex.status, ex.client, ex.version, ex.scheme,
                     ex.error, ex.replaced, ex.t_start, ex.t_response, ex.t_end or time.monotonic()))


def rule_event(rule: str, action: str, phase: str, ex: Exchange) -> None:
    """The rules call this after each action they ran (Runtime.trace): an event on a sampled span."""
    st = ex.state
    if st is None:
        return
    span = st.get(SPAN)
    if span is None:
        return
    event = (time.monotonic(), action, rule, phase)
    events = span[EVENTS]
    if events is None:
        span[EVENTS] = [event]
    else:
        events.append(event)
