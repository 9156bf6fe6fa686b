"""OTLP/HTTP (protobuf) export of traces and metrics: the OTLP exporter behind telemetry's exporter seam.

Owns turning span records (telemetry.tracing) and the Metrics tables into ExportTraceServiceRequest /
ExportMetricsServiceRequest bodies and handing them to the shared delivery client (batches, bounded
queue, drops counted, retries honouring Retry-After). Nothing here runs on the request path except
Delivery.submit. Must not import rules, settings or pydantic; opentelemetry-proto loads only when an
endpoint is set.

Spans are written with a small protobuf writer (the wire format of opentelemetry-proto's
trace.proto, field numbers below, every byte checked against the package in the tests): building
the package's message objects costs about 16 us per span, several times the whole exchange's budget;
the writer, with its cache of encoded attributes, a few. Metrics (a few dozen series a minute) use
the package's classes directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from binascii import unhexlify
import gzip
import logging
import time
from struct import pack
from typing import TYPE_CHECKING, Any

from decorator import __version__
from decorator.delivery import Delivery, Poster, Result
from decorator.telemetry.otel import OtelConfig, Signal
from decorator.telemetry.tracing import Sampler

if TYPE_CHECKING:
    from decorator.telemetry.metrics import Metrics

log = logging.getLogger("decorator.telemetry")

SCOPE = "decorator"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_KIND_INTERNAL, _KIND_SERVER = 1, 2
_STATUS_ERROR = b"\x7a\x02\x18\x02"  # Span.status (15) = Status{code (3): STATUS_CODE_ERROR}
# Span.flags (16, fixed32): the sampled trace flag, "is_remote is known", "the parent is remote".
_FLAGS_ROOT = b"\x85\x01" + pack("<I", 0x101)
_FLAGS_REMOTE_PARENT = b"\x85\x01" + pack("<I", 0x301)
_FLAGS_LOCAL_PARENT = b"\x85\x01" + pack("<I", 0x101)


# -- a protobuf writer: just what spans need ---------------------------------------------------------
def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, embedded messages)."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _any(value: Any) -> bytes:
    """AnyValue: string_value (1), bool_value (2), int_value (3), double_value (4)."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement as a varint
    if isinstance(value, float):
        return b"\x21" + pack("<d", value)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return _ld(1, str(value).encode())


_KV: dict[tuple[str, Any], bytes] = {}
_KV_MAX = 8192


def _kv(field: int, key: str, value: Any) -> bytes:
    """KeyValue{key (1), value (2)} as field `field`; the few values that repeat (methods, routes,
    statuses, hosts, clients) are encoded once."""
    k = (key, value, field)
    b = _KV.get(k)
    if b is None:
        b = _ld(field, _ld(1, key.encode()) + _ld(2, _any(value)))
        if len(_KV) >= _KV_MAX:
            _KV.clear()
        _KV[k] = b
    return b


def _server(host: bytes | None) -> tuple[str, int]:
    """server.address and server.port from a Host header ('' / 0 when absent or unparseable)."""
    if not host:
        return "", 0
    text = host.decode("latin-1").strip()
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        addr, _, port = text.partition(":")
    return addr, int(port) if port.isdigit() and len(port) <= 5 else 0


# What a span says besides its ids and times depends on a few values that repeat (method, path, route,
# status, client, host...): the encoded name, kind, attributes and status of each such shape are kept.
_SHAPES: dict[tuple, bytes] = {}
_SHAPES_MAX = 4096


def _shape(key: tuple) -> bytes:
    method, path, route, status, client, host, version, scheme, error, replaced = key
    known = method if method in _METHODS else "_OTHER"
    parts = [_ld(5, (f"{known} {route}" if route else known).encode()), b"\x30\x02",
             _kv(9, "http.request.method", known), _kv(9, "url.path", path), _kv(9, "url.scheme", scheme),
             _kv(9, "client.address", client), _kv(9, "network.protocol.version", version)]
    if known != method:
        parts.append(_kv(9, "http.request.method_original", method))
    if route:
        parts.append(_kv(9, "http.route", route))
    if status:
        parts.append(_kv(9, "http.response.status_code", status))
    addr, port = _server(host)
    if addr:
        parts.append(_kv(9, "server.address", addr))
    if port:
        parts.append(_kv(9, "server.port", port))
    failed = error is not None or status >= 500 or not status
    if failed:
        parts.append(_kv(9, "error.type", error or (str(status) if status else "_OTHER")))
    if replaced:
        parts.append(_kv(9, "decorator.replied", True))
    if failed:
        parts.append(_STATUS_ERROR)
    if len(_SHAPES) >= _SHAPES_MAX:
        _SHAPES.clear()
    b = _SHAPES[key] = b"".join(parts)
    return b


_UPSTREAM = _FLAGS_LOCAL_PARENT + _ld(5, b"upstream") + b"\x30\x01"
# An upstream child without error: trace id (2 + 16), span id (2 + 8), parent (2 + 8), the constant
# part, the times (18): its length never changes, so its field head is made once.
_CHILD_HEAD = b"\x12" + _varint(18 + 10 + 10 + len(_UPSTREAM) + 18) + b"\x0a\x10"


def encode_span(record: tuple, offset_ns: int) -> bytes:
    """One server span (plus its `upstream` child) from a TracingHooks record, as `spans` fields (2) of
    a ScopeSpans."""
    (span, headers, method, path, route, status, client, version, scheme, error, replaced,
     t_start, t_response, t_end) = record
    trace_id, span_id, parent_id, events = span
    host = tracestate = None
    for name, value in headers:
        n = len(name)
        if n == 4:
            if name.lower() == b"host":
                host = value
        elif n == 10 and name.lower() == b"tracestate":
            tracestate = value
    key = (method, path, route, status, client, host, version, scheme, error, replaced)
    shape = _SHAPES.get(key) or _shape(key)
    tid = unhexlify(trace_id)
    sid = unhexlify(span_id)
    start = int(t_start * 1e9) + offset_ns
    parts = [b"\x0a\x10", tid, b"\x12\x08", sid,
             b"\x22\x08" + unhexlify(parent_id) + _FLAGS_REMOTE_PARENT if parent_id else _FLAGS_ROOT,
             pack("<BQBQ", 0x39, start, 0x41, int(t_end * 1e9) + offset_ns), shape]
    if tracestate:
        parts.append(_ld(3, tracestate))
    if events:
        for t, action, rule, phase in events:
            parts.append(_ld(11, b"\x09" + pack("<Q", int(t * 1e9) + offset_ns) + _ld(2, f"rule.{action}".encode())
                             + _kv(3, "rule.name", rule) + _kv(3, "decorator.rule.phase", phase)))
    body = b"".join(parts)
    if not t_response or replaced:
        return b"\x12" + _varint(len(body)) + body
    # The wait for the app's response head, as a child: where the time went at a glance. Its id is
    # the server span's, bytes reversed (as random as the server span's; no second draw).
    cid = sid[::-1]
    if cid == sid:  # a palindrome (one in 2^32): any other id will do
        cid = sid[:7] + bytes((sid[7] ^ 1,))
    end = pack("<BQBQ", 0x39, start, 0x41, int(t_response * 1e9) + offset_ns)
    if error is None or not error.startswith("upstream"):
        return b"".join((b"\x12", _varint(len(body)), body, _CHILD_HEAD, tid, b"\x12\x08", cid, b"\x22\x08", sid,
                         _UPSTREAM, end))
    child = b"".join((b"\x0a\x10", tid, b"\x12\x08", cid, b"\x22\x08", sid, _UPSTREAM, end,
                      _kv(9, "error.type", error), _STATUS_ERROR))
    return b"".join((b"\x12", _varint(len(body)), body, b"\x12", _varint(len(child)), child))


def _resource_bytes(attrs: tuple[tuple[str, str], ...]) -> bytes:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    return Resource(attributes=[KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs]).SerializeToString()


def _scope_bytes() -> bytes:
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    return InstrumentationScope(name=SCOPE, version=__version__).SerializeToString()


def encode_traces(records: list, resource: bytes, scope: bytes) -> bytes:
    """ExportTraceServiceRequest{resource_spans (1): ResourceSpans{resource (1), scope_spans (2):
    ScopeSpans{scope (1), spans (2)...}}}."""
    offset = time.time_ns() - time.monotonic_ns()  # records carry monotonic times
    spans = b"".join(encode_span(r, offset) for r in records)
    return _ld(1, _ld(1, resource) + _ld(2, _ld(1, scope) + spans))


# -- metrics: the same instruments as /metrics, with the OTel names -----------------------------------
def otel_name(prometheus_name: str) -> str:
    """decorator_rule_hits -> decorator.rule_hits: OTel's namespace dot, the words kept."""
    return "decorator." + prometheus_name.removeprefix("decorator_")


def encode_metrics(metrics: Metrics, resource_attrs: tuple[tuple[str, str], ...], start_ns: int) -> bytes:
    """ExportMetricsServiceRequest with cumulative points: the duration histogram, active requests and
    every counter the /metrics sources give (rule hits, notify, reloads, pool, push, OTLP...)."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum)
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    from decorator.telemetry.metrics import BOUNDS_S, KNOWN

    cumulative = 2  # AGGREGATION_TEMPORALITY_CUMULATIVE
    now = time.time_ns()

    def attrs(pairs) -> list:
        return [KeyValue(key=k, value=AnyValue(string_value=str(v))) for k, v in pairs]

    points = [HistogramDataPoint(
        attributes=attrs((("http.request.method", method), ("http.route", route),
                          ("http.response.status_class", cls))),
        start_time_unix_nano=start_ns, time_unix_nano=now, count=s.count, sum=s.total,
        bucket_counts=list(s.buckets), explicit_bounds=BOUNDS_S)
        for (method, route, cls), s in metrics.series()]
    out = [Metric(name="http.server.request.duration", unit="s",
                  description="Duration of HTTP server requests, head to last byte.",
                  histogram=Histogram(data_points=points, aggregation_temporality=cumulative)),
           Metric(name="http.server.active_requests", unit="{request}", description="HTTP server requests in flight.",
                  sum=Sum(data_points=[NumberDataPoint(start_time_unix_nano=start_ns, time_unix_nano=now,
                                                       as_int=int(metrics.in_flight_now()))],
                          aggregation_temporality=cumulative, is_monotonic=False))]
    seen: set[str] = set()
    for key, value, label in metrics.read_sources():
        name, kind, doc, known_label = KNOWN.get(key) or ("decorator_" + str(key), "gauge", str(key), None)
        name = otel_name(name)
        if name in seen:
            continue  # two sources with one key: the first wins, as on /metrics
        seen.add(name)
        if isinstance(value, dict):
            pairs = [((known_label or label or "name", sub), n) for sub, n in value.items()]
        else:
            pairs = [(None, value)]
        dps = [NumberDataPoint(attributes=attrs([a]) if a else [], start_time_unix_nano=start_ns, time_unix_nano=now,
                               as_double=float(n)) for a, n in pairs]
        if kind == "counter":
            out.append(Metric(name=name, description=doc, sum=Sum(data_points=dps, is_monotonic=True,
                                                                  aggregation_temporality=cumulative)))
        else:
            out.append(Metric(name=name, description=doc, gauge=Gauge(data_points=dps)))
    req = ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(
        resource=Resource(attributes=attrs(resource_attrs)),
        scope_metrics=[ScopeMetrics(scope=InstrumentationScope(name=SCOPE, version=__version__), metrics=out)])])
    return req.SerializeToString()


class OtlpExporter:
    """Traces and metrics over OTLP/HTTP, from an OtelConfig (telemetry.otel).

    Traces: `sampler` and `traces.submit` make telemetry's TracingHooks (Telemetry.wrap); finished
    spans wait in the delivery client's queue (OTEL_BSP_MAX_QUEUE_SIZE, new spans dropped and counted
    past it) and leave in batches of OTEL_BSP_MAX_EXPORT_BATCH_SIZE, or after OTEL_BSP_SCHEDULE_DELAY.
    Metrics: a cumulative snapshot every OTEL_METRIC_EXPORT_INTERVAL and one at close.
    """

    name = "otlp"

    def __init__(self, config: OtelConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.start_ns = time.time_ns()
        self.spans_sent = self.spans_dropped = self.metrics_sent = 0
        self.sampler: Sampler | None = None
        self.traces: Delivery | None = None
        self.metric_delivery: Delivery | None = None
        self._task: asyncio.Task | None = None
        self._resource = b""
        self._scope = b""
        if config.traces is not None:
            self._trace_poster = _poster(config.traces)
            self.traces = Delivery("otlp traces", self._send_traces, queue_size=config.max_queue,
                                   batch=config.max_batch, linger=config.schedule_delay, retries=4, backoff=1.0,
                                   backoff_max=30.0, jitter=True, on_settled=self._spans_settled, logger=log)
            self.sampler = Sampler(config.sampler, config.ratio)
        if config.metrics is not None and metrics is not None:
            self._metric_poster = _poster(config.metrics)
            # A newer cumulative snapshot supersedes an older one: keep two at most.
            self.metric_delivery = Delivery("otlp metrics", self._send_metrics, queue_size=2, drop_oldest=True,
                                            retries=2, backoff=1.0, backoff_max=30.0, jitter=True, logger=log)

    @property
    def counters(self) -> dict[str, int]:
        """For Metrics.add_source (so /metrics and OTLP itself show what OTLP export did)."""
        out = {}
        if self.traces is not None:
            out.update(otlp_spans_sent=self.spans_sent, otlp_spans_dropped=self.spans_dropped,
                       otlp_spans_queued=len(self.traces.queue), otlp_trace_export_failures=self.traces.failed)
        if self.metric_delivery is not None:
            out.update(otlp_metric_exports=self.metrics_sent,
                       otlp_metric_export_failures=self.metric_delivery.failed)
        return out

    def status(self) -> dict[str, Any]:
        c = self.config
        return {"traces": c.traces.url if c.traces else None, "metrics": c.metrics.url if c.metrics else None,
                "sampler": c.sampler if c.sampler.endswith("on") or c.sampler.endswith("off")
                else f"{c.sampler}:{c.ratio:g}", "service.name": c.service_name, **self.counters,
                "last_error": (self.traces.last_error if self.traces else None)
                or (self.metric_delivery.last_error if self.metric_delivery else None)}

    async def start(self) -> None:
        self._resource = _resource_bytes(self.config.resource)
        self._scope = _scope_bytes()
        if self.traces is not None:
            self._trace_poster.warm()
            await self.traces.start()
        if self.metric_delivery is not None:
            self._metric_poster.warm()
            await self.metric_delivery.start()
            self._task = asyncio.create_task(self._metrics_loop(), name="otlp-metrics")

    async def close(self) -> None:
        timeout = min(self.config.export_timeout, 5.0)  # inside the pod's grace period, collector or not
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._take_metrics()
        waits = [d.close(timeout) for d in (self.traces, self.metric_delivery) if d is not None]
        await asyncio.gather(*waits)
        for p in ("_trace_poster", "_metric_poster"):
            if hasattr(self, p):
                await getattr(self, p).close()

    def _spans_settled(self, items: list, how: str) -> None:
        if how == "sent":
            self.spans_sent += len(items)
        else:
            self.spans_dropped += len(items)

    async def _send_traces(self, batch: list) -> Result:
        assert self.config.traces is not None
        body = encode_traces(batch, self._resource, self._scope)
        return await _post(self._trace_poster, self.config.traces, body)

    async def _metrics_loop(self) -> None:
        interval = self.config.metric_interval
        while True:
            await asyncio.sleep(interval)
            try:
                self._take_metrics()
            except Exception:  # a bug in a snapshot must not end metrics export for the life of the pod
                log.exception("OTLP metrics snapshot failed")

    def _take_metrics(self) -> None:
        if self.metric_delivery is not None and self.metrics is not None:
            self.metric_delivery.submit(encode_metrics(self.metrics, self.config.resource, self.start_ns))

    async def _send_metrics(self, batch: list) -> Result:
        assert self.config.metrics is not None
        r = await _post(self._metric_poster, self.config.metrics, batch[0])
        if r.outcome == "ok":
            self.metrics_sent += 1
        return r


def _poster(signal: Signal) -> Poster:
    headers = {"Content-Type": "application/x-protobuf", "User-Agent": f"decorator/{__version__}"}
    headers.update(signal.headers)
    if signal.gzip:
        headers["Content-Encoding"] = "gzip"
    return Poster(headers, max_connections=2)


async def _post(poster: Poster, signal: Signal, body: bytes) -> Result:
    if signal.gzip:
        body = gzip.compress(body, compresslevel=6, mtime=0)
    return await poster.post(signal.url, body, timeout=signal.timeout)
