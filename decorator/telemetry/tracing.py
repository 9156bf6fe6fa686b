"""Traces: W3C Trace Context in and out, the sampler, one server span per exchange, rule actions as events.

Owns TracingHooks (on_request: reads `traceparent`, decides, hands the app a `traceparent` naming the
sidecar's span; on_complete: the finished span, as one tuple, goes to the exporter's queue) and
`rule_event`, which the rules call for each action they run. The request path only matches, draws ids
and appends; encoding and sending are the exporter's (telemetry.otlp). Imports proxy.hooks only; must
not import rules, settings or pydantic.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from random import getrandbits
from typing import Any

from decorator.proxy.hooks import Exchange, Hooks

SPAN = "trace.span"  # ex.state key of the exchange's span record (only on sampled exchanges)
# A span record is a list (rule_event appends events in place): ids as lower-case hex bytes, as on the wire
# of traceparent (the exporter turns them into raw bytes), the parent's b"" for a root.
TRACE_ID, SPAN_ID, PARENT_ID, EVENTS = range(4)

# version (not ff), trace id (not all zeros), parent id (not all zeros), flags; more fields after a
# future version's four.
_TRACEPARENT = re.compile(rb"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(?:-.*)?",
                          re.DOTALL)
_match = _TRACEPARENT.fullmatch
_SAMPLED_DIGITS = frozenset(b"13579bdf")  # the last hex digit of the flags has the sampled bit set
_ROOT_NEVER, _ROOT_ALWAYS, _ROOT_RATIO = 0, 1, 2


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """(trace id, parent span id, sampled) of a valid W3C traceparent, ids as hex; else None (as if absent)."""
    if _TRACEPARENT.fullmatch(value) is None or (len(value) != 55 and value[:2] == b"00"):
        return None  # version 00 has exactly four fields
    return value[3:35], value[36:52], value[54] in _SAMPLED_DIGITS


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

    def sample(self, trace_id: bytes, parent_sampled: bool | None) -> bool:
        """trace_id as 32 hex digits; parent_sampled: the remote parent's flag, None for a root."""
        if parent_sampled is not None and self.parent_based:
            return parent_sampled
        r = self.root
        if r == _ROOT_RATIO:
            return int(trace_id[16:], 16) < self.bound
        return r == _ROOT_ALWAYS


class TracingHooks(Hooks):
    """Telemetry's hooks with tracing: one object, so a rule-free sidecar still makes one hook call per phase.

    on_request: continue or start the trace, decide, and hand the app a traceparent naming the
    sidecar's span. on_complete: telemetry's own completion (`complete`), then the finished span goes
    to `submit` as one tuple (rule events appended later still land on it: the exporter encodes
    it later, off the request path).
    """

    def __init__(self, sampler: Sampler, submit: Callable[[Any], bool], complete: Callable[[Exchange], None] | None,
                 request: Callable[[Exchange], None] | None = None) -> None:
        self.sampler = sampler
        self.submit = submit
        self.complete = complete if complete is not None else _nothing
        self.request = request
        self.follow_parent = sampler.parent_based
        self.root = sampler.root    # the root decision, inline in start() (Sampler.sample's)
        self.bound = sampler.bound
        self.on_request = self.start if request is None else self._start_after_request
        self.on_complete = self.end

    def _start_after_request(self, ex: Exchange) -> None:
        self.request(ex)  # type: ignore[misc]
        self.start(ex)

    def start(self, ex: Exchange) -> None:
        headers = ex.request_headers
        at = 0
        for name, value in headers:
            if len(name) == 11 and name.lower() == b"traceparent":
                # parse_traceparent, inline: this runs for every exchange
                if _match(value) is not None and (len(value) == 55 or value[:2] != b"00"):
                    trace_id = value[3:35]
                    if not (value[54] in _SAMPLED_DIGITS if self.follow_parent
                            else self.sampler.sample(trace_id, None)):
                        return None  # not recorded: the caller's traceparent goes on unchanged
                    span_id = b"%016x" % (getrandbits(64) or 1)
                    headers[at] = (name, b"00-" + trace_id + b"-" + span_id + b"-01")
                    _keep(ex, [trace_id, span_id, value[36:52], None])
                    return None
                break  # invalid: replaced by a new trace's
            at += 1
        else:
            at = -1
        trace_id = b"%032x" % (getrandbits(128) or 1)
        root = self.root
        if root != _ROOT_ALWAYS and (root == _ROOT_NEVER or int(trace_id[16:], 16) >= self.bound):
            # Not recorded, but the app learns the decision (parent-based samplers follow it).
            _put(headers, at, b"00-%s-%016x-00" % (trace_id, getrandbits(64) or 1))
            return None
        span_id = b"%016x" % (getrandbits(64) or 1)
        value = b"00-" + trace_id + b"-" + span_id + b"-01"
        if at >= 0:
            headers[at] = (headers[at][0], value)
        else:
            headers.append((b"traceparent", value))
        st = ex.state
        if st is None:
            ex.state = {SPAN: [trace_id, span_id, b"", None]}
        else:
            st[SPAN] = [trace_id, span_id, b"", None]
        return None

    def end(self, ex: Exchange) -> None:
        self.complete(ex)
        st = ex.state
        if st is None:
            return
        span = st.get(SPAN)
        if span is None:
            return
        self.submit((span, ex.request_headers, ex.method, ex.path, ex.route, ex.status, ex.client, ex.version,
                     ex.scheme, ex.error, ex.replaced, ex.t_start, ex.t_response, ex.t_end or time.monotonic()))


def _nothing(ex: Exchange) -> None:
    pass


def _keep(ex: Exchange, span: list) -> None:
    st = ex.state
    if st is None:
        ex.state = {SPAN: span}
    else:
        st[SPAN] = span


def _put(headers: list, at: int, value: bytes) -> None:
    """The app gets exactly one traceparent: ours replaces the caller's in place, or is added."""
    if at >= 0:
        headers[at] = (headers[at][0], value)
    else:
        headers.append((b"traceparent", value))


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
