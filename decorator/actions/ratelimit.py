"""`ratelimit`: a token bucket per key, kept as GCRA (one "theoretical arrival time" per key, O(1)),
in an LRU-bounded table that outlives reloads. Over the limit: 429 with Retry-After and the IETF
RateLimit-Policy / RateLimit fields (draft-ietf-httpapi-ratelimit-headers), before the app is called.

Imports proxy.hooks, rules.match (the exchange view, for JMESPath keys) and rules.values; never
pydantic (the config model lives in actions.configs_traffic).
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from decorator.actions.registry import Action, RuleInfo, register, request_only
from decorator.proxy.hooks import Exchange, Reply, header_get
from decorator.rules.values import parse_seconds

_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*((?:[0-9]+(?:\.[0-9]+)?\s*)?(?:ms|s|m|h|d))\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_REQUEST_VIEW = ("request", "route")  # what a JMESPath key may read: the request phase has no response


def parse_rate(text: str) -> tuple[float, float]:
    """'100/s' -> (100, 1.0); '10/30s' -> (10, 30.0); ValueError saying what was expected."""
    m = _RATE.match(text)
    if not m:
        raise ValueError(f"expected a rate such as 100/s, 600/m, 5000/h or 10/30s, found {text!r}")
    count = float(m.group(1))
    span = m.group(2).replace(" ", "")
    seconds = _UNIT[span] if span in _UNIT else parse_seconds(span)
    if count <= 0 or seconds <= 0:
        raise ValueError(f"a rate needs a positive count and span, found {text!r}")
    return count, seconds


def key_problem(key: str) -> str | None:
    """Why `key` is not a ratelimit key, or None."""
    if key in ("client", "route"):
        return None
    if key.startswith("header:"):
        name = key[len("header:"):].strip()
        if not _TOKEN.match(name):
            return f"expected header:NAME with a header name, found {key!r}"
        return None
    import jmespath
    from jmespath.exceptions import JMESPathError

    from decorator.rules.match import root_fields
    try:
        parsed = jmespath.compile(key)
    except JMESPathError as e:
        return (f"expected client, route, header:NAME or a JMESPath expression, found {key!r} "
                f"({getattr(e, 'msg', None) or e})")
    extra = sorted(root_fields(parsed.parsed) - set(_REQUEST_VIEW))
    if extra:
        return (f"a ratelimit key is computed before the app answers: it may read "
                f"{', '.join(_REQUEST_VIEW)}, not {', '.join(extra)} (in {key!r})")
    return None


def key_function(key: str) -> Callable[[Exchange], str]:
    """The key's value for an exchange (absent header / null expression: one shared "" key)."""
    if key == "client":
        return lambda ex: ex.client
    if key == "route":
        return lambda ex: ex.route or ex.path
    if key.startswith("header:"):
        name = key[len("header:"):].strip().lower().encode("latin-1")
        return lambda ex: (header_get(ex.request_headers, name) or b"").decode("latin-1")
    import jmespath

    from decorator.rules.match import exchange_view
    expr = jmespath.compile(key)

    def by_expression(ex: Exchange) -> str:
        v = expr.search(exchange_view(ex))
        return "" if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return by_expression


class Buckets:
    """GCRA per key in an LRU-bounded table. `take(key, now)` -> (allowed, remaining, reset_s,
    retry_after_s): allowed requests move the key's arrival time on by one interval; rejected ones
    change nothing (a client hammering a full bucket does not dig itself deeper)."""

    def __init__(self, count: float, period: float, burst: int, max_keys: int) -> None:
        self.interval = period / count          # seconds per request at the sustained rate
        self.burst = burst
        self.tolerance = burst * self.interval  # how far ahead of now a key's arrival time may run
        self.max_keys = max_keys
        self.tat: OrderedDict[str, float] = OrderedDict()
        self.evicted = 0

    def take(self, key: str, now: float) -> tuple[bool, int, float, float]:
        tat = self.tat.get(key, now)
        if tat < now:
            tat = now
        new = tat + self.interval
        if new - now > self.tolerance + 1e-9:
            return False, 0, tat - now, new - now - self.tolerance
        self.tat[key] = new
        self.tat.move_to_end(key)
        if len(self.tat) > self.max_keys:
            self.tat.popitem(last=False)
            self.evicted += 1
        remaining = int((self.tolerance - (new - now)) / self.interval + 1e-9)
        return True, remaining, new - now, 0.0


@register
class RateLimit(Action):
    name = "ratelimit"
    Config = "decorator.actions.configs_traffic:RateLimitConfig"
    summary = "Limit requests per key (client, header, route, JMESPath): 429 with Retry-After and RateLimit headers."

    @classmethod
    def phase_errors(cls, config: Any, rule: RuleInfo) -> list[tuple[tuple, str]]:
        return request_only("ratelimit", rule)

    def __init__(self, config: Any, rule: RuleInfo, prepared: Any, runtime: Any) -> None:
        super().__init__(config, rule, prepared, runtime)
        count, period = parse_rate(config.rate)
        burst = config.burst if config.burst is not None else max(1, int(count))
        # The buckets outlive a reload (and a shadow -> enforce switch) while the limit is unchanged.
        state = runtime.state_for(("ratelimit", rule.name, config.rate, burst, config.key, config.max_keys))
        if "buckets" not in state:
            state["buckets"] = Buckets(count, period, burst, config.max_keys)
        self.buckets: Buckets = state["buckets"]
        self._key = key_function(config.key)
        self._clock = runtime.clock
        window = max(1, math.ceil(burst * self.buckets.interval))
        self._policy = (b"RateLimit-Policy", f'"{rule.name}";q={burst};w={window}'.encode("latin-1"))
        self._name = rule.name
        self.request = self._limit
        if config.headers:
            self.response = self._headers

    def _fields(self, remaining: int, reset: float) -> list[tuple[bytes, bytes]]:
        return [self._policy,
                (b"RateLimit", f'"{self._name}";r={remaining};t={math.ceil(reset)}'.encode("latin-1"))]

    def _limit(self, ex: Exchange) -> Reply | None:
        allowed, remaining, reset, retry = self.buckets.take(self._key(ex), self._clock())
        if allowed:
            if self.response is not None:
                if ex.state is None:
                    ex.state = {}
                ex.state[self] = (remaining, reset)
            return None
        self.runtime.count("ratelimit_rejected", self._name)
        headers = [(b"Retry-After", str(max(1, math.ceil(retry))).encode()),
                   *self._fields(0, reset), (b"Content-Type", b"text/plain; charset=utf-8")]
        return Reply(429, headers, body=b"rate limit exceeded\n")

    def _headers(self, ex: Exchange, reply: Reply | None) -> None:
        got = ex.state.get(self) if ex.state is not None else None
        if got is None:  # a 429 (it has them) or a request this rule did not take a token for
            return
        if reply is not None:
            reply.headers = reply.headers + self._fields(*got)
            ex.response_headers = reply.headers
        elif ex.response_headers is not None:
            ex.response_headers = ex.response_headers + self._fields(*got)

    def would(self, ex: Exchange, phase: str) -> str | None:
        if phase != "request":
            return None  # the headers it would add on a pass are not an effect worth a count
        allowed, _, _, retry = self.buckets.take(self._key(ex), self._clock())
        if allowed:
            return None
        return f"reject with 429 (Retry-After {max(1, math.ceil(retry))}s)"
