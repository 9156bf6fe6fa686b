"""One pod's telemetry from several worker processes: metric snapshots summed, stats deltas merged.

Owns the plain-data snapshot a worker hands its supervisor (`export_metrics`), the sums over workers
(live ones plus what exited workers had counted, so counters never go back), `PodMetrics` (the
pod's /metrics, rendered by prometheus_client like a single process's) and `PodStats` (the pod's
dashboard deltas: histograms added bucket by bucket, so percentiles stay exact). Must not import
rules, proxy internals or the push client: the pusher reads `PodStats` as it reads an Aggregator.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from decorator.telemetry.metrics import KNOWN, Metrics, _Series
from decorator.wire.stats import STATUS_CLASSES

log = logging.getLogger("decorator.telemetry")

MAX_SAMPLES = 256  # recent error samples per pod delta, as one worker's ring holds

_GAUGES = frozenset(k for k, (_, kind, _, _) in KNOWN.items() if kind == "gauge")


def export_metrics(metrics: Metrics) -> dict[str, Any]:
    """A worker's metrics as plain data: histogram series, exchanges in flight and its sources'
    counters folded into one dict (the same keys a single process exports)."""
    counters: dict[str, Any] = {}
    for fn, _label in metrics._sources:
        try:
            add_counts(counters, fn())
        except Exception:
            metrics.source_errors += 1
    counters["metrics_source_errors"] = metrics.source_errors
    return {
        "series": {k: (list(s.buckets), s.total, s.count) for k, s in metrics._series.items()},
        "in_flight": metrics._in_flight(),
        "counters": counters,
    }


def add_counts(into: dict[str, Any], part: dict[str, Any], gauges: bool = True) -> dict[str, Any]:
    """Add `part`'s numbers ({key: n} or {key: {name: n}}) into `into`; `gauges=False` leaves out
    KNOWN's gauges (what an exited worker had in flight is not in flight any more)."""
    for key, value in part.items():
        if not gauges and key in _GAUGES:
            continue
        if isinstance(value, dict):
            d = into.get(key)
            if not isinstance(d, dict):
                d = into[key] = {}
            for sub, n in value.items():
                d[sub] = d.get(sub, 0) + n
        elif not isinstance(into.get(key, 0), dict):
            into[key] = into.get(key, 0) + value
    return into


def add_metrics(into: dict[str, Any], part: dict[str, Any], gauges: bool = True) -> dict[str, Any]:
    """Sum two exports (series bucket by bucket, counters key by key)."""
    series = into.setdefault("series", {})
    for key, (buckets, total, count) in part.get("series", {}).items():
        have = series.get(key)
        series[key] = ((list(buckets), total, count) if have is None else
                       ([a + b for a, b in zip(have[0], buckets)], have[1] + total, have[2] + count))
    if gauges:
        into["in_flight"] = into.get("in_flight", 0) + part.get("in_flight", 0)
    add_counts(into.setdefault("counters", {}), part.get("counters", {}), gauges=gauges)
    return into


class PodMetrics(Metrics):
    """The pod's /metrics: a Metrics whose series and counters are the sum `show()` was last given,
    plus the supervisor's own sources (added with `add_source`, summed with the workers')."""

    def __init__(self) -> None:
        super().__init__(process=True)
        self._in_flight_now = 0
        self._counters: dict[str, Any] = {}
        self.in_flight_count = lambda: self._in_flight_now
        self._own: list = []
        self._own_errors = 0

    def add_source(self, fn, label: str | None = None) -> None:
        self._own.append(fn)

    def show(self, merged: dict[str, Any]) -> None:
        series = {}
        for key, (buckets, total, count) in merged.get("series", {}).items():
            s = _Series()
            s.buckets, s.total, s.count = list(buckets), total, count
            series[key] = s
        counters = add_counts({}, merged.get("counters", {}))
        for fn in self._own:
            try:
                add_counts(counters, fn())
            except Exception:
                self._own_errors += 1
                log.exception("metrics source %r failed", fn)
        self.source_errors = self._own_errors + counters.pop("metrics_source_errors", 0)
        self._series = series
        self._in_flight_now = merged.get("in_flight", 0)
        self._counters = counters
        self._sources = [(lambda: self._counters, None)]


class PodStats:
    """The pod's dashboard stats: workers' `snapshot_delta` dicts go in (`add`), one delta per push
    comes out (`snapshot_delta`, what the Pusher calls on an Aggregator). Per endpoint the counts,
    status classes, bytes and latency buckets are summed, so the dashboard's rate and percentiles
    are the pod's; error samples are kept newest first up to MAX_SAMPLES."""

    def __init__(self) -> None:
        self._endpoints: dict[tuple[str, str], dict[str, Any]] = {}
        self._samples: deque[dict[str, Any]] = deque(maxlen=MAX_SAMPLES)
        self._last = time.time()
        self.requests = 0       # every exchange the workers recorded, since start
        self.deltas = 0         # worker deltas merged

    def add(self, delta: dict[str, Any] | None) -> None:
        if not delta:
            return
        self.deltas += 1
        for ep in delta.get("endpoints", ()):
            key = (ep["method"], ep["endpoint"])
            have = self._endpoints.get(key)
            self.requests += ep["count"]
            if have is None:
                self._endpoints[key] = {**ep, "status": dict(ep["status"]),
                                        "latency_buckets": list(ep["latency_buckets"])}
                continue
            for f in ("count", "bytes_in", "bytes_out"):
                have[f] += ep[f]
            have["latency_ms_sum"] = round(have["latency_ms_sum"] + ep["latency_ms_sum"], 3)
            for c in STATUS_CLASSES:
                have["status"][c] = have["status"].get(c, 0) + ep["status"].get(c, 0)
            have["latency_buckets"] = [a + b for a, b in zip(have["latency_buckets"], ep["latency_buckets"])]
            have["file"] = have["file"] or ep["file"]
        self._samples.extend(delta.get("samples", ()))

    def snapshot_delta(self, pod: str = "") -> dict[str, Any] | None:
        """A StatsPayload dict of what the workers sent since the previous call; None if nothing."""
        if not self._endpoints and not self._samples:
            return None
        now = time.time()
        interval = max(now - self._last, 0.001)
        self._last = now
        out = {"pod": pod, "time": now, "interval": round(interval, 3),
               "endpoints": list(self._endpoints.values()), "samples": list(self._samples)}
        self._endpoints = {}
        self._samples.clear()
        return out

