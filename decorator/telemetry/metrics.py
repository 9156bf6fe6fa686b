"""Prometheus metrics for /metrics: request duration histogram, in-flight requests, other parts' counters.

Owns the sidecar's own CollectorRegistry (never the global one), the always-on observer and
TelemetryHooks. Must not import rules or proxy internals (only proxy.hooks); other parts' counters
arrive as plain dicts through `add_source`, read at scrape time.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from decorator.proxy.hooks import Exchange, Hooks
from decorator.telemetry.aggregate import ALL_FIELDS, Aggregator, Endpoints
from decorator.wire.stats import LATENCY_BOUNDS_MS, N_BUCKETS

if TYPE_CHECKING:  # prometheus_client itself loads at the first scrape (see Metrics.registry)
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = logging.getLogger("decorator.telemetry")

DURATION = "http_server_request_duration_seconds"
ACTIVE = "http_server_active_requests"
_LABELS = ["http_request_method", "http_route", "http_response_status_class"]
_BOUNDS_S = [b / 1000.0 for b in LATENCY_BOUNDS_MS]   # the dashboard's buckets, so both views agree
BOUNDS_S = tuple(_BOUNDS_S)                            # for the other exporters (OTLP)
_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")  # 0xx: no response was sent (client gone, ...)

# Counters other parts keep in plain dicts: source key -> (metric name, type, help, label for dict values).
# A source key not listed here is exported as `decorator_<key>` with type unknown.
KNOWN: dict[str, tuple[str, str, str, str | tuple[str, ...] | None]] = {
    # the rules runtime (runtime.counters: {counter: {rule name: n}})
    "rule_hits": ("decorator_rule_hits", "counter", "Exchanges a rule matched.", "rule"),
    "action_errors": ("decorator_action_errors", "counter", "Rule actions that raised (isolated).", "rule"),
    "records": ("decorator_records", "counter", "record actions run without a telemetry sink.", "rule"),
    "notify_sent": ("decorator_notify_sent", "counter", "Notifications delivered.", "rule"),
    "notify_failed": ("decorator_notify_failed", "counter", "Notifications that failed.", "rule"),
    "notify_dropped": ("decorator_notify_dropped", "counter",
                       "Notifications dropped (queue full or rate limited).", "rule"),
    "notify_suppressed": ("decorator_notify_suppressed", "counter",
                          "Notifications held back by a rule's window or threshold.", "rule"),
    "fault_delays": ("decorator_fault_delays", "counter", "Requests a fault rule delayed.", "rule"),
    "fault_aborts": ("decorator_fault_aborts", "counter", "Requests a fault rule answered with an error.", "rule"),
    "auth_allowed": ("decorator_auth_allowed", "counter",
                     "Requests basic_auth or forward_auth let through.", "rule"),
    "auth_denied": ("decorator_auth_denied", "counter",
                    "Requests basic_auth or forward_auth answered (401, the service's answer).", "rule"),
    "auth_errors": ("decorator_auth_errors", "counter",
                    "forward_auth calls that failed or timed out (503 unless on_error: allow).", "rule"),
    "mirror_sent": ("decorator_mirror_sent", "counter", "Mirror copies the target answered.", "rule"),
    "mirror_failed": ("decorator_mirror_failed", "counter",
                      "Mirror copies that failed (target down, slow or broken).", "rule"),
    "mirror_dropped": ("decorator_mirror_dropped", "counter", "Mirror copies dropped (queue full).", "rule"),
    "mirror_skipped": ("decorator_mirror_skipped", "counter",
                       "Requests not mirrored: body over max_body or not kept.", "rule"),
    "retries": ("decorator_retries", "counter", "Requests sent to the app again by a retry rule.", "rule"),
    "retry_budget_exhausted": ("decorator_retry_budget_exhausted", "counter",
                               "Retries not made: the rule's budget was spent.", "rule"),
    "retry_not_resendable": ("decorator_retry_not_resendable", "counter",
                             "Retries not made: the request body had streamed to the app.", "rule"),
    "ratelimit_rejected": ("decorator_ratelimit_rejected", "counter",
                           "Requests a ratelimit rule answered with 429 (the app never saw them).", "rule"),
    "cors_preflights": ("decorator_cors_preflights", "counter",
                        "CORS preflight requests a cors rule answered.", "rule"),
    # {rule: {action: n}}: one series per (rule, action)
    "shadow_hits": ("decorator_rule_shadow_hits", "counter",
                    "Actions a shadow-mode rule would have taken (not applied).", ("rule", "action")),
    # the reloader (reload.counters())
    "reloads": ("decorator_rule_reloads", "counter", "Rule sets loaded and swapped in.", None),
    "reload_failures": ("decorator_rule_reload_failures", "counter",
                        "Rule reloads rejected (the previous rules stay).", None),
    # the tunnel (ProxyServer.stats)
    "connections_total": ("decorator_connections", "counter", "Client connections accepted.", None),
    "connections_refused": ("decorator_connections_refused", "counter",
                            "Client connections refused (over the connection limit or draining).", None),
    "exchanges": ("decorator_exchanges", "counter", "Exchanges started.", None),
    "in_flight": ("decorator_exchanges_in_flight", "gauge", "Exchanges in flight, as the tunnel counts.", None),
    "bad_requests": ("decorator_bad_requests", "counter", "Requests refused as malformed or too large.", None),
    "upstream_errors": ("decorator_upstream_errors", "counter",
                        "Connections to the app that failed or broke (502).", None),
    "upstream_timeouts": ("decorator_upstream_timeouts", "counter", "App answers that timed out (504).", None),
    "hook_errors": ("decorator_hook_errors", "counter", "Hooks that raised (the exchange went on).", None),
    "replies": ("decorator_replies", "counter", "Answers sent by a hook or the proxy instead of the app.", None),
    # the upstream pool (ProxyServer.upstream_stats)
    "connect_errors": ("decorator_upstream_connect_errors", "counter",
                       "Connections to the app that could not be opened.", None),
    "connects": ("decorator_upstream_connects", "counter", "Connections opened to the app.", None),
    "reuses": ("decorator_upstream_reuses", "counter", "Exchanges sent on a pooled app connection.", None),
    # the supervisor of a multi-worker pod (decorator.workers)
    "workers": ("decorator_workers", "gauge", "Worker processes the pod runs (--workers).", None),
    "workers_ready": ("decorator_workers_ready", "gauge", "Worker processes listening and serving.", None),
    "worker_requests": ("decorator_worker_requests", "counter",
                        "Exchanges each worker process started (an imbalance shows here).", "worker"),
    "worker_restarts": ("decorator_worker_restarts", "counter",
                        "Worker processes started again after they exited.", "worker"),
    "worker_resident_memory_bytes": ("decorator_worker_resident_memory_bytes", "gauge",
                                     "Resident memory of each worker process.", "worker"),
    # the pusher (Pusher.counters)
    "push_sent": ("decorator_push_sent", "counter", "Telemetry posts the dashboard accepted.", None),
    "push_failed": ("decorator_push_failed", "counter", "Telemetry posts that failed.", None),
    "push_dropped": ("decorator_push_dropped", "counter",
                     "Stats batches dropped (buffer full or rejected by the dashboard).", None),
    "push_buffered": ("decorator_push_buffered", "gauge", "Stats batches waiting for the dashboard.", None),
    # the OTLP exporter (OtlpExporter.counters)
    "otlp_spans_sent": ("decorator_otlp_spans_sent", "counter", "Spans the OTLP collector accepted.", None),
    "otlp_spans_dropped": ("decorator_otlp_spans_dropped", "counter",
                           "Spans dropped (queue full, rejected, or retries spent).", None),
    "otlp_spans_queued": ("decorator_otlp_spans_queued", "gauge", "Spans waiting for export.", None),
    "otlp_trace_export_failures": ("decorator_otlp_trace_export_failures", "counter",
                                   "Span batch posts that failed (retried with backoff).", None),
    "otlp_metric_exports": ("decorator_otlp_metric_exports", "counter", "Metric snapshots the collector accepted.",
                            None),
    "otlp_metric_export_failures": ("decorator_otlp_metric_export_failures", "counter",
                                    "Metric snapshot posts that failed.", None),
}
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")

Source = Callable[[], Mapping[str, Any]]


class _Series:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * N_BUCKETS
        self.total = 0.0
        self.count = 0


class Metrics:
    """The sidecar's metrics; `observe(ex)` is called for every completed exchange.

    The duration histogram is kept in plain lists (no locks, no label lookups: everything runs on
    the event loop) and handed to prometheus_client as a metric family at scrape time. Its
    `http_route` label uses the same capped endpoint names as the aggregator, which bounds the
    number of series.
    """

    def __init__(self, registry: CollectorRegistry | None = None, endpoints: Endpoints | None = None,
                 process: bool = True, in_flight: Callable[[], int] | None = None) -> None:
        # prometheus_client (about 3 MB of RSS with what it imports) loads at the first scrape:
        # a sidecar without an admin port, or never scraped, does not carry it.
        self._registry = registry
        self._process = process
        self.endpoints = endpoints if endpoints is not None else Endpoints()
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._sources: list[tuple[Source, str | None]] = []
        self.in_flight: set[Exchange] = set()
        # When the tunnel counts exchanges in flight itself, read its count at scrape time and keep
        # the per-request set operations (and the on_request hook) off the hot path.
        self.in_flight_count = in_flight
        self.source_errors = 0
        self._registered = False

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            from prometheus_client import CollectorRegistry
            self._registry = CollectorRegistry()
        if not self._registered:
            self._registered = True
            self._registry.register(_collector(self))
            if self._process:
                from prometheus_client import PlatformCollector, ProcessCollector
                ProcessCollector(registry=self._registry)
                PlatformCollector(registry=self._registry)
        return self._registry

    def request_started(self, ex: Exchange) -> None:
        self.in_flight.add(ex)

    def observe(self, ex: Exchange) -> None:
        # A set rather than a number: an exchange completed without being started (a hook earlier in
        # the chain replied before ours ran, a head rejected before on_request) cannot push the gauge
        # below zero.
        self.in_flight.discard(ex)
        method, route = self.endpoints.key(ex)
        status = ex.status
        key = (method, route, _CLASSES[status // 100] if 0 <= status < 600 else "0xx")
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series()
        seconds = ex.duration
        s.buckets[bisect_left(_BOUNDS_S, seconds)] += 1
        s.total += seconds
        s.count += 1

    def _in_flight(self) -> int:
        return self.in_flight_count() if self.in_flight_count is not None else len(self.in_flight)

    # -- what exporters read (Prometheus at scrape, OTLP every interval) ---------------------------------
    def in_flight_now(self) -> int:
        return self._in_flight()

    def series(self) -> list[tuple[tuple[str, str, str], _Series]]:
        """The duration histogram: ((method, route, status class), series with buckets/total/count)."""
        return list(self._series.items())

    def read_sources(self) -> list[tuple[str, Any, str | None]]:
        """(key, value, label) of every source's counters now; a source that raises is skipped
        (logged, counted in source_errors)."""
        out = []
        for fn, label in self._sources:
            try:
                data = fn()
                out.extend((key, value, label) for key, value in data.items())
            except Exception:
                self.source_errors += 1
                log.exception("metrics source %r failed", fn)
        return out

    def add_source(self, fn: Source, label: str | None = None) -> None:
        """Export the counters `fn()` returns at each scrape.

        `fn` returns {key: number} or {key: {name: number}}; keys listed in KNOWN get their
        documented name and type, others become `decorator_<key>`. A dict value gets one label,
        named after KNOWN's entry, else `label`, else "name". A source that raises is skipped for
        that scrape (logged, counted in decorator_metrics_source_errors_total).
        """
        self._sources.append((fn, label))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) for the admin server's /metrics, negotiated from the Accept header.

        Without an Accept asking for OpenMetrics this is the classic text format 0.0.4, which every
        Prometheus version scrapes.
        """
        from prometheus_client.exposition import choose_encoder
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def status(self) -> dict[str, Any]:
        return {"in_flight": self._in_flight(), "series": len(self._series),
                "source_errors": self.source_errors}

    def _families(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        h = HistogramMetricFamily(DURATION, "Duration of HTTP server requests, head to last byte.",
                                  labels=_LABELS, unit="seconds")
        for (method, route, cls), s in list(self._series.items()):
            cum, acc = [], 0
            for le, n in zip(_le(), s.buckets):
                acc += n
                cum.append((le, acc))
            cum.append(("+Inf", s.count))
            h.add_metric([method, route, cls], cum, s.total)
        yield h
        yield GaugeMetricFamily(ACTIVE, "HTTP server requests in flight.", value=self._in_flight())
        families: dict[str, tuple[Metric, bool, set]] = {}
        for key, value, label in self.read_sources():
            _add(families, key, value, label)
        yield from (f for f, _, _ in families.values())
        yield CounterMetricFamily("decorator_metrics_source_errors", "Metric sources that raised at scrape.",
                                  value=self.source_errors)


def _add(families: dict[str, tuple[Metric, bool, set]], key: str, value: Any, label: str | None) -> None:
    name, kind, doc, known_label = KNOWN.get(key) or (
        "decorator_" + _NAME_OK.sub("_", str(key)), "unknown", f"{key} (from a component's counters).", None)
    entry = families.get(name)
    if entry is None:
        labelled = isinstance(value, Mapping)
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, UnknownMetricFamily
        cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}.get(kind, UnknownMetricFamily)
        names = list(known_label) if isinstance(known_label, tuple) else [known_label or label or "name"]
        fam = cls(name, doc, labels=names if labelled else None)
        entry = families[name] = (fam, labelled, set())
    fam, labelled, seen = entry
    # Two sources giving the same series (or the same key in two shapes) would make the scrape
    # invalid; the first one wins.
    if labelled and isinstance(value, Mapping):
        for labels, n in _series(value):
            if labels not in seen:
                seen.add(labels)
                fam.add_metric(list(labels), float(n))
    elif not labelled and not isinstance(value, Mapping) and not seen:
        seen.add("")
        fam.add_metric([], float(value))


def _series(value: Mapping) -> Iterable[tuple[tuple[str, ...], Any]]:
    """{a: n} -> ((a,), n); nested {a: {b: n}} -> ((a, b), n)."""
    for sub, n in value.items():
        if isinstance(n, Mapping):
            for labels, m in _series(n):
                yield (str(sub), *labels), m
        else:
            yield (str(sub),), n


_LE: list[str] = []


def _le() -> list[str]:
    """The histogram's `le` labels, as prometheus_client spells floats (computed at the first scrape)."""
    if not _LE:
        from prometheus_client.utils import floatToGoString
        _LE.extend(floatToGoString(b) for b in _BOUNDS_S)
    return _LE


def _collector(metrics: Metrics) -> Any:
    from prometheus_client.registry import Collector

    class _Collector(Collector):
        def collect(self) -> Iterable[Metric]:
            return metrics._families()

    return _Collector()


class TelemetryHooks(Hooks):
    """Hooks that feed the metrics (and, when given, the aggregator) from every exchange.

    Chain it with the rules' hooks (`proxy.hooks.chain(telemetry_hooks, rules_hooks)`); completion
    hooks all run, so the rules' `route` is set by the time `on_complete` names the endpoint.
    Pass `aggregator` to record every exchange for the dashboard (the seed's behaviour); leave it
    None when the rules' `record` actions decide what is recorded.
    """

    def __init__(self, metrics: Metrics, aggregator: Aggregator | None = None) -> None:
        self.metrics = metrics
        self.aggregator = aggregator
        if metrics.in_flight_count is None:
            self.on_request = metrics.request_started
        if aggregator is None:
            self.on_complete = metrics.observe
        else:
            observe, record = metrics.observe, aggregator.record

            def on_complete(ex: Exchange) -> None:
                observe(ex)
                record(ex, ALL_FIELDS)

            self.on_complete = on_complete
