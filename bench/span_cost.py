"""What one traced exchange costs decorator's tracing against the OpenTelemetry Python SDK, per span.

Request path: decorator's TracingHooks start + end on an exchange with a caller's traceparent, against
the SDK's extract + start_span + inject + end with a BatchSpanProcessor (the same attributes). Export:
decorator's OTLP encoding of a batch of 512 spans against the SDK exporter's encode_spans +
SerializeToString. Microseconds per span, best of 5; the SDK part runs only where opentelemetry-sdk
and opentelemetry-exporter-otlp-proto-http are installed (they are not decorator's dependencies):

    python -m venv /tmp/sdk && /tmp/sdk/bin/pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
    PYTHONPATH=$PWD DECORATOR_PURE_PYTHON=1 /tmp/sdk/bin/python bench/span_cost.py
"""

from __future__ import annotations

import time
from collections import deque

from decorator.proxy.hooks import Exchange
from decorator.telemetry.otlp import _resource_bytes, _scope_bytes, encode_traces
from decorator.telemetry.tracing import Sampler, TracingHooks

N = 20000
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEADERS = [(b"Host", b"127.0.0.1:18080"), (b"traceparent", TRACEPARENT.encode())]


def best(fn, n: int) -> float:
    out = []
    for _ in range(5):
        t = time.perf_counter()
        fn(n)
        out.append((time.perf_counter() - t) / n * 1e6)
    return min(out)


def decorator_figures() -> tuple[float, float]:
    spans: deque = deque()
    hooks = TracingHooks(Sampler("always_on"), spans.append, None)

    def make(n: int) -> None:
        for _ in range(n):
            Exchange("GET", "/", "1.1", list(HEADERS), "127.0.0.1")

    def traced(n: int) -> None:
        for _ in range(n):
            ex = Exchange("GET", "/", "1.1", list(HEADERS), "127.0.0.1")
            hooks.start(ex)
            ex.status, ex.t_response, ex.t_end = 200, ex.t_start + 0.001, ex.t_start + 0.002
            hooks.end(ex)
        if len(spans) > 100000:
            spans.clear()

    request = best(traced, N) - best(make, N)
    spans.clear()
    traced(512)
    batch = list(spans)
    assert len(batch) == 512
    resource, scope = _resource_bytes((("service.name", "web"),)), _scope_bytes()
    encode = best(lambda n: [encode_traces(batch, resource, scope) for _ in range(n)], 20) / 512
    return request, encode


def sdk_figures() -> tuple[float, float] | None:
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    finished: list = []

    class Keep(SpanExporter):
        def export(self, spans):
            finished.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Keep(), max_queue_size=10**6, schedule_delay_millis=3600_000,
                                                   max_export_batch_size=10**6))
    tracer = provider.get_tracer("bench")
    prop = TraceContextTextMapPropagator()
    carrier = {"traceparent": TRACEPARENT}
    attrs = {"http.request.method": "GET", "url.path": "/", "url.scheme": "http", "client.address": "127.0.0.1",
             "network.protocol.version": "1.1", "server.address": "127.0.0.1", "server.port": 18080}

    def traced(n: int) -> None:
        for _ in range(n):
            span = tracer.start_span("GET", context=prop.extract(carrier), kind=SpanKind.SERVER, attributes=attrs)
            prop.inject({}, context=set_span_in_context(span))
            span.set_attribute("http.response.status_code", 200)
            span.end()

    request = best(traced, N)
    provider.force_flush()
    batch = finished[:512]
    encode = best(lambda n: [encode_spans(batch).SerializeToString() for _ in range(n)], 20) / 512
    return request, encode


if __name__ == "__main__":
    ours = decorator_figures()
    print(f"decorator     request path {ours[0]:6.1f} us per span   OTLP encoding {ours[1]:6.1f} us per span")
    sdk = sdk_figures()
    if sdk is None:
        print("OTel SDK      not installed here (see the docstring)")
    else:
        print(f"OTel SDK      request path {sdk[0]:6.1f} us per span   OTLP encoding {sdk[1]:6.1f} us per span")
        print(f"ratio SDK/decorator: request path {sdk[0] / ours[0]:.1f}x, encoding {sdk[1] / ours[1]:.1f}x")
