"""Traces and metrics over OTLP/HTTP: the whole sidecar (decorator.app.App) on port 0 in front of an app
that echoes the trace headers it got, exporting to a real OTLP receiver that decodes with the
opentelemetry-proto package."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest

from decorator.app import App
from decorator.proxy.hooks import Exchange
from decorator.settings import Settings
from decorator.telemetry import OtelConfig
from decorator.telemetry.otlp import encode_traces
from decorator.telemetry.tracing import SPAN, Sampler, TracingHooks, parse_traceparent
from tests.support import free_port, wait_port
from tests.telemetry.helpers import wait_until
from tests.telemetry.otlp_helpers import EchoApp, OtlpReceiver, attrs

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"

RULES = """
rules:
  - name: maintenance
    match: {path: /maint}
    respond: {status: 503, body: "back soon"}
  - name: users
    match: {path: "/users/{id}"}
    record: {}
"""


@pytest.fixture
async def echo():
    app = await EchoApp().start()
    yield app
    await app.stop()


@pytest.fixture
async def collector():
    r = await OtlpReceiver().start()
    yield r
    await r.stop()


async def run_app(app_port: int, env: dict[str, str], rules: str | None = None, tmp_path=None) -> App:
    paths: tuple[str, ...] = ()
    if rules is not None:
        p = tmp_path / "rules.yaml"
        p.write_text(textwrap.dedent(rules))
        paths = (str(p),)
    s = Settings(host="127.0.0.1", port=0, target_port=app_port, admin_port=0, rules=paths, pod="web-7",
                 watch=False, reload_poll=0.0, otel_env=tuple(env.items()))
    app = App(s)
    await app.start()
    return app


def otel_env(collector: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_METRIC_EXPORT_INTERVAL": "100", **extra}


async def test_spans_parents_attributes_resource_and_propagation(echo, collector, tmp_path):
    env = otel_env(collector, OTEL_SERVICE_NAME="shop-web", POD_NAME="web-7", POD_NAMESPACE="shop",
                   OTEL_RESOURCE_ATTRIBUTES="deployment.environment=prod,team=a%20b",
                   OTEL_EXPORTER_OTLP_HEADERS="x-api-key=s3cret")
    app = await run_app(echo.port, env, RULES, tmp_path)
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.proxy.port}", timeout=5.0)
    try:
        caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        r1 = await client.get("/users/42?x=1", headers={"traceparent": caller, "tracestate": "vendor=abc,x=1"})
        r2 = await client.get("/plain")
        r3 = await client.get("/maint", headers={"traceparent": caller})
        assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 503)
        got1, got2 = r1.json(), r2.json()
        await wait_until(lambda: len(collector.spans()) >= 5, what="3 server spans and 2 upstream spans")
    finally:
        await client.aclose()
        await app.stop()

    # The app got one traceparent each time: the caller's trace, the sidecar's span as parent.
    [tp1] = got1["traceparent"]
    [tp2] = got2["traceparent"]
    assert got1["tracestate"] == ["vendor=abc,x=1"]           # passed through untouched
    trace1, parent1, sampled1 = parse_traceparent(tp1.encode())
    assert trace1.decode() == CALLER_TRACE and parent1.decode() != CALLER_SPAN and sampled1
    trace2, parent2, _ = parse_traceparent(tp2.encode())
    assert trace2.decode() != CALLER_TRACE

    spans = collector.spans()
    servers = {attrs(s.attributes)["url.path"]: (res, s) for res, s in spans if s.kind == s.SPAN_KIND_SERVER}
    assert set(servers) == {"/users/42", "/plain", "/maint"}
    res, s1 = servers["/users/42"]
    assert s1.name == "GET /users/{id}" and servers["/plain"][1].name == "GET"   # a route names the span
    assert res["service.name"] == "shop-web" and res["k8s.pod.name"] == "web-7"
    assert res["k8s.namespace.name"] == "shop" and res["service.instance.id"] == "web-7"
    assert res["deployment.environment"] == "prod" and res["team"] == "a b"
    assert s1.trace_id.hex() == CALLER_TRACE and s1.parent_span_id.hex() == CALLER_SPAN
    assert s1.span_id.hex() == parent1.decode()                 # the app's parent is this span
    assert s1.trace_state == "vendor=abc,x=1"
    a1 = attrs(s1.attributes)
    assert a1["http.request.method"] == "GET" and a1["url.path"] == "/users/42" and a1["url.scheme"] == "http"
    assert a1["http.route"] == "/users/{id}" and a1["http.response.status_code"] == 200
    assert a1["server.address"] == "127.0.0.1" and a1["server.port"] == app.proxy.port
    assert a1["client.address"] == "127.0.0.1" and a1["network.protocol.version"] == "1.1"
    assert "error.type" not in a1 and s1.status.code == s1.status.STATUS_CODE_UNSET
    assert s1.start_time_unix_nano < s1.end_time_unix_nano
    assert [e.name for e in s1.events] == ["rule.record"]
    assert attrs(s1.events[0].attributes) == {"rule.name": "users", "decorator.rule.phase": "complete"}

    _, s2 = servers["/plain"]
    assert s2.trace_id.hex() == trace2.decode() and s2.span_id.hex() == parent2.decode()
    assert s2.parent_span_id == b""                               # a root: no caller's traceparent

    _, s3 = servers["/maint"]
    a3 = attrs(s3.attributes)
    assert a3["http.response.status_code"] == 503 and a3["error.type"] == "503" and a3["decorator.replied"]
    assert s3.status.code == s3.status.STATUS_CODE_ERROR
    assert [e.name for e in s3.events] == ["rule.respond"]

    # The wait for the app: a child of each span that reached the app, none for the rule's answer.
    ups = [s for _, s in spans if s.name == "upstream"]
    assert sorted(u.parent_span_id.hex() for u in ups) == sorted([s1.span_id.hex(), s2.span_id.hex()])
    for u in ups:
        parent = s1 if u.parent_span_id == s1.span_id else s2
        assert parent.start_time_unix_nano <= u.start_time_unix_nano <= u.end_time_unix_nano
        assert u.end_time_unix_nano <= parent.end_time_unix_nano
    assert all(h.get("x-api-key") == "s3cret" and h["content-type"] == "application/x-protobuf"
               for _, h in collector.requests)


async def test_metrics_over_otlp_match_the_prometheus_instruments(echo, collector, tmp_path):
    app = await run_app(echo.port, otel_env(collector), RULES, tmp_path)
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.proxy.port}", timeout=5.0)
    try:
        for i in range(5):
            await client.get(f"/users/{i}")
        await client.get("/maint")

        def exported():
            for req in collector.metrics[-1:]:
                for m in req.resource_metrics[0].scope_metrics[0].metrics:
                    if m.name == "http.server.request.duration":
                        return sum(p.count for p in m.histogram.data_points) == 6
            return False
        await wait_until(exported, what="a metrics export with the 6 requests")
    finally:
        await client.aclose()
        await app.stop()
    req = collector.metrics[-1]
    rm = req.resource_metrics[0]
    assert attrs(rm.resource.attributes)["service.name"] == "decorator"
    ms = {m.name: m for m in rm.scope_metrics[0].metrics}
    h = ms["http.server.request.duration"]
    assert h.unit == "s" and h.histogram.aggregation_temporality == 2  # cumulative
    by_route = {attrs(p.attributes)["http.route"]: p for p in h.histogram.data_points}
    users = by_route["/users/{id}"]
    assert users.count == 5 and sum(users.bucket_counts) == 5 and len(users.bucket_counts) == len(
        users.explicit_bounds) + 1
    assert attrs(users.attributes)["http.response.status_class"] == "2xx"
    hits = {attrs(p.attributes)["rule"]: p.as_double for p in ms["decorator.rule_hits"].sum.data_points}
    assert hits == {"users": 5.0, "maintenance": 1.0} and ms["decorator.rule_hits"].sum.is_monotonic
    assert "http.server.active_requests" in ms and "decorator.upstream_connects" in ms
    assert "decorator.otlp_spans_sent" in ms and "decorator.rule_reloads" in ms


@pytest.mark.parametrize("mode", ["down", "black_hole"])
async def test_collector_down_or_black_hole_costs_proxied_traffic_nothing(echo, mode, tmp_path):
    hole = await OtlpReceiver(black_hole=True).start()
    url = hole.url if mode == "black_hole" else f"http://127.0.0.1:{free_port()}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_BSP_SCHEDULE_DELAY": "10", "OTEL_BSP_MAX_QUEUE_SIZE": "64",
           "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "16", "OTEL_EXPORTER_OTLP_TIMEOUT": "300",
           "OTEL_METRIC_EXPORT_INTERVAL": "50"}
    app = await run_app(echo.port, env)
    limits = httpx.Limits(max_connections=20)
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.proxy.port}", timeout=10.0, limits=limits)
    statuses: list[int] = []
    try:
        async def worker(n: int) -> None:
            for i in range(n):
                r = await client.get(f"/load/{i}")
                statuses.append(r.status_code)
                assert r.json()["traceparent"]
        await asyncio.gather(*(worker(30) for _ in range(20)))
        otlp = app.telemetry.otlp
        await wait_until(lambda: otlp.spans_dropped > 0 and otlp.traces.failed > 0, what="drops and failures")
    finally:
        await client.aclose()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await app.stop()
        stop_took = loop.time() - t0
        await hole.stop()
    assert statuses == [200] * 600
    c = app.telemetry.otlp.counters
    assert c["otlp_spans_sent"] == 0 and c["otlp_spans_dropped"] + c["otlp_spans_queued"] <= 600
    assert c["otlp_spans_dropped"] >= 600 - 64 - 16  # the queue's bound held: the rest was counted
    assert app.proxy.stats["hook_errors"] == 0
    assert stop_took < 30  # bounded by the flush timeout, not by the collector (a hang would be minutes)


async def test_tracing_off_adds_no_hook_and_no_header(echo, tmp_path):
    app = await run_app(echo.port, {"OTEL_SERVICE_NAME": "x"}, RULES, tmp_path)  # no endpoint: off
    try:
        assert app.telemetry.otlp is None and app.runtime.trace is None
        assert not any(isinstance(p, TracingHooks) for p in getattr(app.proxy.hooks, "parts", []))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.proxy.port}") as client:
            r = await client.get("/x")
        assert r.json() == {"traceparent": None, "tracestate": None}
    finally:
        await app.stop()
    disabled = await run_app(echo.port, {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    try:
        assert disabled.telemetry.otlp is None
    finally:
        await disabled.stop()


def ex_with(headers: list[tuple[bytes, bytes]]) -> Exchange:
    return Exchange("GET", "/", "1.1", list(headers), "127.0.0.1")


@pytest.mark.parametrize("sampler, arg, parent_flags, sampled", [
    ("always_on", "", None, True), ("always_off", "", None, False),
    ("always_on", "", "00", True), ("always_off", "", "01", False),          # not parent-based: parent ignored
    ("parentbased_always_on", "", "00", False), ("parentbased_always_off", "", "01", True),
    ("parentbased_always_off", "", None, False), ("parentbased_traceidratio", "0", "01", True),
    ("parentbased_traceidratio", "0", None, False), ("traceidratio", "1", None, True),
])
def test_sampler_variables(sampler, arg, parent_flags, sampled):
    cfg = OtelConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": sampler,
                               "OTEL_TRACES_SAMPLER_ARG": arg})
    start = tracer(Sampler(cfg.sampler, cfg.ratio))
    headers = [(b"Host", b"h")]
    if parent_flags is not None:
        headers.append((b"TraceParent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-{parent_flags}".encode()))
    ex = ex_with(headers)
    start.start(ex)
    assert (ex.state is not None and SPAN in ex.state) == sampled
    [tp] = [v for k, v in ex.request_headers if k.lower() == b"traceparent"]
    trace_id, parent, flag = parse_traceparent(tp)
    if parent_flags is not None:
        assert trace_id.decode() == CALLER_TRACE
        assert (parent.decode() == CALLER_SPAN) == (not sampled)  # unsampled: the caller's goes on
    assert flag == (sampled if parent_flags is None or sampled else parent_flags == "01")


def tracer(sampler: Sampler) -> TracingHooks:
    return TracingHooks(sampler, lambda record: True, None)


def test_traceidratio_decides_by_trace_id_as_the_sdks_do():
    s = Sampler("traceidratio", 0.25)
    assert s.sample(b"%032x" % ((1 << 64) // 4 - 1), None) and not s.sample(b"%032x" % ((1 << 64) // 4), None)
    assert s.sample(b"%032x" % ((0xFFFF << 64) | 5), None)           # only the low 64 bits count
    start = tracer(s)
    kept = 0
    for _ in range(4000):
        ex = ex_with([])
        start.start(ex)
        kept += ex.state is not None
    assert 800 < kept < 1200                          # about a quarter (binomial sd ~27)


@pytest.mark.parametrize("value", [
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
    b"garbage"])
def test_invalid_traceparent_starts_a_new_trace(value):
    start = tracer(Sampler("parentbased_always_on"))
    ex = ex_with([(b"traceparent", value)])
    start.start(ex)
    assert ex.state[SPAN][2] == b""                    # no parent: a new root
    [tp] = [v for k, v in ex.request_headers if k == b"traceparent"]
    assert parse_traceparent(tp) is not None and CALLER_TRACE.encode() not in tp


def test_a_future_version_is_read_by_its_known_fields():
    got = parse_traceparent(f"01-{CALLER_TRACE}-{CALLER_SPAN}-01-future".encode())
    assert got == (CALLER_TRACE.encode(), CALLER_SPAN.encode(), True)


def test_otel_config_from_the_standard_variables():
    c = OtelConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://col:4318/",
                             "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:9/custom",
                             "OTEL_EXPORTER_OTLP_HEADERS": "a=1, b = x%3Dy ,bad",
                             "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "t=2", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
                             "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}, pod="p-1")
    assert c.traces.url == "http://col:4318/v1/traces" and c.metrics.url == "http://m:9/custom"
    assert c.traces.headers == (("t", "2"),) and c.metrics.headers == (("a", "1"), ("b", "x=y"))
    assert c.traces.timeout == 2.5 and c.traces.gzip and c.sampler == "parentbased_always_on"
    assert dict(c.resource)["service.instance.id"] == "p-1"
    only_traces = OtelConfig.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/v1/traces",
                                       "OTEL_METRICS_EXPORTER": "none"})
    assert only_traces.traces.url == "http://t:1/v1/traces" and only_traces.metrics is None
    assert not OtelConfig.from_env({}).enabled
    assert not OtelConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "TRUE"}).enabled
    assert OtelConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "none"}).traces is None
    bad = OtelConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_SAMPLER": "sometimes",
                               "OTEL_TRACES_SAMPLER_ARG": "2", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                               "OTEL_BSP_MAX_QUEUE_SIZE": "lots"})
    assert bad.sampler == "parentbased_always_on" and bad.traces is None and bad.max_queue == 2048
    assert len(bad.warnings) == 4  # sampler, protocol (traces, metrics), queue size: each said once
    ratio = OtelConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c",
                                 "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"})
    assert ratio.sampler == "parentbased_traceidratio" and ratio.ratio == 0.1


def test_span_bytes_decode_with_the_package_for_odd_values():
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    span = [b"f" * 32, b"f" * 16, b"%016x" % 1, [(5.0, "notify", "r\u00e9gle", "complete")]]
    headers = [(b"HOST", b"[::1]:8080"), (b"TraceState", b"a=1")]
    record = (span, headers, "BREW", "/caf\u00e9", None, 0, "::1", "1.0", "https", None, False, 1.0, 0.0, 6.0)
    msg = ExportTraceServiceRequest.FromString(encode_traces([record], b"", b""))
    [s] = msg.resource_spans[0].scope_spans[0].spans
    a = attrs(s.attributes)
    assert s.trace_id == b"\xff" * 16 and s.span_id == b"\xff" * 8 and s.parent_span_id == (1).to_bytes(8, "big")
    assert s.name == "_OTHER" and a["http.request.method_original"] == "BREW" and a["url.path"] == "/caf\u00e9"
    assert a["server.address"] == "::1" and a["server.port"] == 8080 and a["error.type"] == "_OTHER"
    assert "http.response.status_code" not in a and s.flags == 0x301 and s.trace_state == "a=1"
    assert s.end_time_unix_nano - s.start_time_unix_nano == 5_000_000_000
    assert [(e.name, attrs(e.attributes)["rule.name"]) for e in s.events] == [("rule.notify", "r\u00e9gle")]


def test_the_app_gets_exactly_one_traceparent():
    start = tracer(Sampler("always_on"))
    ex = ex_with([(b"traceparent", b"junk"), (b"x", b"y")])
    start.start(ex)
    assert [k for k, _ in ex.request_headers].count(b"traceparent") == 1
    ex = ex_with([(b"x", b"y")])
    start.start(ex)
    assert json.dumps([k.decode() for k, _ in ex.request_headers]) == '["x", "traceparent"]'


async def test_decorator_run_reads_the_variables_and_flushes_spans_at_shutdown(echo, collector, tmp_path):
    """The real CLI in a child process: OTEL_* and the Downward API's variables from its environment;
    a batch delay of an hour, so the span arrives only through the flush at SIGTERM."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DASHBOARD", "MOTHERSHIP", "RULES"))}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="3600000",
               OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0",
               POD_NAME="web-abc", POD_NAMESPACE="prod", OTEL_SERVICE_NAME="web")
    log = tmp_path / "run.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "decorator", "run", "--host", "127.0.0.1", "--port",
                                 str(port), "--admin-port", "0", "--target", str(echo.port)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, wait_port, port, proc)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            sampled = await client.get("/a", headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
            unsampled = await client.get("/b")          # a root, and the ratio is 0: not recorded
        assert sampled.json()["traceparent"][0].endswith("-01")
        assert unsampled.json()["traceparent"][0].endswith("-00")
        await asyncio.sleep(0.2)
        assert collector.spans() == []                  # still waiting for its batch
        proc.send_signal(signal.SIGTERM)
        assert await loop.run_in_executor(None, proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    await wait_until(lambda: collector.spans(), what="the spans flushed at shutdown")
    spans = collector.spans()
    assert {s.name for _, s in spans} == {"GET", "upstream"}
    res = spans[0][0]
    assert (res["service.name"], res["k8s.pod.name"], res["k8s.namespace.name"]) == ("web", "web-abc", "prod")
    assert all(s.trace_id.hex() == CALLER_TRACE for _, s in spans)


@pytest.mark.parametrize("error", [None, "upstream_timeout"])
def test_the_upstream_child_span(error):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    span = [CALLER_TRACE.encode(), b"0123456789abcdef", b"", None]
    status = 504 if error else 200
    record = (span, [(b"Host", b"h")], "GET", "/x", None, status, "10.0.0.1", "1.1", "http", error, False,
              1.0, 3.0, 4.0)
    msg = ExportTraceServiceRequest.FromString(encode_traces([record], b"", b""))
    server, child = msg.resource_spans[0].scope_spans[0].spans
    assert child.name == "upstream" and child.parent_span_id == server.span_id != child.span_id
    assert child.trace_id == server.trace_id and child.kind == child.SPAN_KIND_INTERNAL
    assert child.end_time_unix_nano - child.start_time_unix_nano == 2_000_000_000
    assert attrs(child.attributes).get("error.type") == error
    assert child.status.code == (child.status.STATUS_CODE_ERROR if error else child.status.STATUS_CODE_UNSET)
    assert attrs(server.attributes).get("error.type") == error
