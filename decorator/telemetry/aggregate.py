"""Per-endpoint aggregation of exchanges: counts, status classes, latency histogram, bytes, recent errors.

Owns endpoint naming (route template, else the path with ids collapsed; 4xx on a path never seen
answered otherwise grouped as `(unmatched)`; a cap with an `other` overflow) and the StatsPayload deltas the pusher sends (as plain dicts, by wire.stats' numbers). Must not import
rules, settings, dashboard or proxy internals (only proxy.hooks), nor pydantic.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

from decorator.proxy.hooks import Exchange
from decorator.wire.stats import LATENCY_BOUNDS_MS, MAX_METHOD, MAX_SHORT, MAX_TEXT, N_BUCKETS, STATUS_CLASSES

ALL_FIELDS: frozenset[str] = frozenset({"timing", "status", "size"})
OTHER = "other"  # the endpoint every exchange past the cap is counted under
UNMATCHED = "(unmatched)"  # 4xx answers on paths that no route names and that never answered otherwise
OTHER_METHOD = "_OTHER"  # OpenTelemetry's name for a method outside the known set

# Methods outside this set are client-chosen tokens: naming them would let clients grow our tables.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

# One path segment that names an instance rather than a resource: a number, a UUID, a long hex
# string (object ids, digests) or a long opaque token (base64/base64url with mixed case and digits).
# An extension after it is kept, so /img/123.png becomes /img/{id}.png.
_ID_SEGMENT = re.compile(
    r"(?:"
    r"\d+"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}"
    r"|(?=[\w=-]*\d)(?=[\w=-]*[a-z])(?=[\w=-]*[A-Z])[\w-]{16,}={0,2}"
    r")(\.[A-Za-z0-9]{1,8})?"
)
_GROUPS = frozenset({OTHER, UNMATCHED})  # names that stand for many paths (never a file)
_FILE = re.compile(r"\.[0-9a-z]+$", re.IGNORECASE)  # the seed's isFile
_BOUNDS_MS = [float(b) for b in LATENCY_BOUNDS_MS]  # floats: a float compared with an int is the slow path
_CACHE_MAX = 4096          # distinct raw paths whose collapsed form is remembered
_CACHE_PATH_MAX = 256      # longer paths are collapsed every time rather than pinned in memory


def collapse_path(path: str) -> str:
    """`/users/42/orders/9f1c...` -> `/users/{id}/orders/{id}`: segments that look like ids become `{id}`."""
    parts = path.split("/")
    changed = False
    for i, seg in enumerate(parts):
        if seg and seg[0] != "{":
            m = _ID_SEGMENT.fullmatch(seg)
            if m is not None:
                parts[i] = "{id}" + (m.group(1) or "")
                changed = True
    out = "/".join(parts) if changed else path
    return out if len(out) <= MAX_TEXT else out[:MAX_TEXT]


def is_file(path: str) -> bool:
    """The seed's isFile: the path ends with `.ext`."""
    return _FILE.search(path) is not None


class Endpoints:
    """Names exchanges as (method, endpoint) and caps how many distinct names exist.

    Shared by the aggregator and the Prometheus observer so both agree on names and on the cap
    (which is also what bounds Prometheus label cardinality).

    A route template (set by a rule) always names its exchange: templates come from the rule set, so
    they are bounded already and never fall into `other`. Without one, the path with ids collapsed
    is the name, but it takes one of the `max_endpoints` places only once the app answered it with a
    status outside 4xx: until then a 4xx on it is counted under `(method, "(unmatched)")`, as
    instrumentations group untemplated handlers (a scanner's `/random-10853/x` 404s are one row, not
    200). Once a name is known its 4xx count under it. Once the places are taken, every new path name
    is `(method, "other")` for the life of the process.
    """

    __slots__ = ("_cache", "_known", "_last_ex", "_last_key", "_paths", "max_endpoints")

    def __init__(self, max_endpoints: int = 200) -> None:
        self.max_endpoints = max_endpoints
        self._known: set[tuple[str, str]] = set()
        self._paths = 0          # names in _known that came from a path, not a route (what the cap counts)
        self._cache: dict[str, str] = {}
        self._last_ex: Exchange | None = None
        self._last_key: tuple[str, str] = ("", "")

    def key(self, ex: Exchange) -> tuple[str, str]:
        # The metrics observer and a `record` rule name the same finished exchange back to back.
        if ex is self._last_ex:
            return self._last_key
        key = self._key(ex)
        self._last_ex = ex
        self._last_key = key
        return key

    def _key(self, ex: Exchange) -> tuple[str, str]:
        method = ex.method if ex.method in _METHODS else OTHER_METHOD
        name = ex.route
        if name:
            if len(name) > MAX_TEXT:
                name = name[:MAX_TEXT]
            key = (method, name)
            if key not in self._known:
                self._known.add(key)
            return key
        path = ex.path
        name = self._cache.get(path)
        if name is not None:
            key = (method, name)
            if key in self._known:
                return key
        else:
            name = collapse_path(path) or "/"
            key = (method, name)
        # A name not yet known (everything below runs once per name, or for each unmatched 4xx).
        if key not in self._known:
            if 400 <= ex.status < 500:
                return (method, UNMATCHED)
            if self._paths >= self.max_endpoints:
                return (method, OTHER)
            self._known.add(key)
            self._paths += 1
        # Only known names are cached, so a scanner's paths never push real ones out of the cache.
        if len(path) <= _CACHE_PATH_MAX:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()  # cheaper than LRU bookkeeping on every hit
            self._cache[path] = name
        return key

    def __len__(self) -> int:
        return len(self._known)


class _Stat:
    """Cumulative numbers for one (method, endpoint); `base` is what the last snapshot saw."""

    __slots__ = (
        "base",
        "buckets",
        "bytes_in",
        "bytes_out",
        "count",
        "endpoint",
        "file",
        "lat_sum",
        "method",
        "status",
    )

    def __init__(self, method: str, endpoint: str, file: bool) -> None:
        self.method = method
        self.endpoint = endpoint
        self.file = file
        self.count = 0
        self.status = [0, 0, 0, 0, 0]
        self.lat_sum = 0.0
        self.buckets = [0] * N_BUCKETS
        self.bytes_in = 0
        self.bytes_out = 0
        self.base: tuple | None = None

    def values(self) -> tuple:
        return (self.count, tuple(self.status), self.lat_sum, tuple(self.buckets),
                self.bytes_in, self.bytes_out)

    def delta(self, now: tuple) -> dict[str, Any]:
        b = self.base or (0, (0,) * 5, 0.0, (0,) * N_BUCKETS, 0, 0)
        return {
            "endpoint": self.endpoint,
            "method": self.method,
            "count": now[0] - b[0],
            "status": {c: n - o for c, n, o in zip(STATUS_CLASSES, now[1], b[1])},
            "latency_ms_sum": round(now[2] - b[2], 3),
            "latency_buckets": [n - o for n, o in zip(now[3], b[3])],
            "bytes_in": now[4] - b[4],
            "bytes_out": now[5] - b[5],
            "file": self.file,
        }


class FieldRecorder:
    """An Aggregator's `record` with the fields bound (what `Aggregator.recorder` hands out)."""

    def __init__(self, aggregator: Aggregator, fields: frozenset[str]) -> None:
        self.aggregator = aggregator
        self.fields = fields

    def record(self, ex: Exchange) -> None:
        self.aggregator._record(self.fields, ex)


class Aggregator:
    """The `record` sink: per-endpoint numbers plus a bounded ring of recent error exchanges.

    `record()` runs on the request path (from the rules' `record` action or TelemetryHooks): a dict
    lookup, a few additions and a bisect. Everything else (`snapshot_delta`, `totals`) runs on the
    pusher's and the admin server's schedule.
    """

    def __init__(self, max_endpoints: int = 200, ring: int = 256, endpoints: Endpoints | None = None) -> None:
        self.endpoints = endpoints if endpoints is not None else Endpoints(max_endpoints)
        self._stats: dict[tuple[str, str], _Stat] = {}
        self._dirty: set[_Stat] = set()
        self._ring: deque[tuple[int, dict[str, Any]]] = deque(maxlen=ring)
        self._seq = 0            # samples ever added
        self._sent_seq = 0       # samples handed to a snapshot
        self._last_snapshot = time.time()
        self.errors_total = 0    # exchanges that went to the ring, ever
        self._last_ex: Exchange | None = None
        self._last_fields: frozenset[str] = frozenset()

    def record(self, ex: Exchange, fields: frozenset[str] = ALL_FIELDS) -> None:
        """Count one finished exchange; `fields` says which of timing/status/size to add.

        Several `record` actions (or a rule plus TelemetryHooks) may record the same exchange from
        its completion hooks, which run back to back: the exchange is counted once, with the union
        of the fields asked for.
        """
        self._record(fields, ex)

    def recorder(self, fields: frozenset[str] = ALL_FIELDS) -> Callable[[Exchange], None]:
        """`record` with `fields` bound, for a hook that runs on every exchange (one argument, no
        keyword dict or partial in between)."""
        return FieldRecorder(self, fields).record

    def _record(self, fields: frozenset[str], ex: Exchange) -> None:
        if ex is self._last_ex:
            fields = fields - self._last_fields
            if not fields:
                return
            self._last_fields = self._last_fields | fields
            again = True
        else:
            self._last_ex, self._last_fields, again = ex, fields, False
        key = self.endpoints.key(ex)
        st = self._stats.get(key)
        if st is None:
            st = self._stats[key] = _Stat(key[0], key[1], key[1] not in _GROUPS and is_file(ex.path))
        self._dirty.add(st)
        if not again:
            st.count += 1
        status = ex.status
        if "status" in fields and 100 <= status < 600:
            st.status[status // 100 - 1] += 1
        ms = ((ex.t_end or time.monotonic()) - ex.t_start) * 1000.0
        if "timing" in fields:
            st.lat_sum += ms
            st.buckets[bisect_left(_BOUNDS_MS, ms)] += 1
        if "size" in fields:
            st.bytes_in += ex.bytes_in
            st.bytes_out += ex.bytes_out
        if (status >= 500 or ex.error) and not again:
            self._sample(ex, key[1], ms)

    def _sample(self, ex: Exchange, name: str, ms: float) -> None:
        self._seq += 1
        self.errors_total += 1
        self._ring.append((self._seq, {
            "endpoint": ex.path[:MAX_TEXT],
            "route": name,
            "method": ex.method[:MAX_METHOD],
            "status": ex.status if 0 <= ex.status <= 999 else None,
            "time_ms": round(ms, 3),
            "started": ex.started_at,
            "request_id": ex.request_id[:MAX_SHORT] or None,
            "error": ex.error,
        }))

    def snapshot_delta(self, pod: str = "") -> dict[str, Any] | None:
        """A StatsPayload dict of what changed since the previous call; None when nothing did."""
        if not self._dirty and self._seq == self._sent_seq:
            return None
        now = time.time()
        endpoints = []
        for st in self._dirty:
            vals = st.values()
            endpoints.append(st.delta(vals))
            st.base = vals
        self._dirty = set()
        samples = [s for seq, s in self._ring if seq > self._sent_seq]
        self._sent_seq = self._seq
        interval = max(now - self._last_snapshot, 0.001)
        self._last_snapshot = now
        return {"pod": pod, "time": now, "interval": round(interval, 3),
                "endpoints": endpoints, "samples": samples}

    def totals(self) -> dict[str, Any]:
        """Cumulative numbers since start, for /status."""
        status = [0, 0, 0, 0, 0]
        count = overflow = unmatched = bytes_in = bytes_out = 0
        for st in self._stats.values():
            count += st.count
            bytes_in += st.bytes_in
            bytes_out += st.bytes_out
            for i, n in enumerate(st.status):
                status[i] += n
            if st.endpoint == OTHER:
                overflow += st.count
            elif st.endpoint == UNMATCHED:
                unmatched += st.count
        return {
            "requests": count,
            "status": dict(zip(STATUS_CLASSES, status)),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "endpoints": len(self.endpoints),
            "max_endpoints": self.endpoints.max_endpoints,
            "overflow": overflow,
            "unmatched": unmatched,
            "errors": self.errors_total,
            "recent_errors": len(self._ring),
        }
