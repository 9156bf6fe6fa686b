"""/metrics content, scraped and parsed with prometheus_client's own parser."""

from __future__ import annotations

import prometheus_client
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from decorator.proxy.hooks import Hooks, chain
from decorator.telemetry import Aggregator, Endpoints, Metrics, TelemetryHooks, status_info
from tests.telemetry.helpers import make_ex


def scrape(m: Metrics) -> dict:
    body, ctype = m.render()
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def samples(fam, name: str) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples if s.name == name}


def test_duration_histogram_by_method_route_and_status_class():
    m = Metrics(process=False)
    for ms in (3, 30, 3000):
        m.observe(make_ex("/users/7", ms=ms, status=200))
    m.observe(make_ex("/users/8", ms=2, status=503))
    m.observe(make_ex("/x", method="POST", ms=1, status=201, route="/x/{name}"))
    m.observe(make_ex("/y", status=0, error="client_closed"))
    fams = scrape(m)
    h = fams["http_server_request_duration_seconds"]
    assert h.type == "histogram"
    counts = samples(h, "http_server_request_duration_seconds_count")
    ok = (("http_request_method", "GET"), ("http_response_status_class", "2xx"), ("http_route", "/users/{id}"))
    assert counts[ok] == 3
    assert counts[(("http_request_method", "GET"), ("http_response_status_class", "5xx"),
                   ("http_route", "/users/{id}"))] == 1
    assert counts[(("http_request_method", "POST"), ("http_response_status_class", "2xx"),
                   ("http_route", "/x/{name}"))] == 1
    assert counts[(("http_request_method", "GET"), ("http_response_status_class", "0xx"),
                   ("http_route", "/y"))] == 1
    sums = samples(h, "http_server_request_duration_seconds_sum")
    assert abs(sums[ok] - 3.033) < 1e-9
    buckets = {s.labels["le"]: s.value for s in h.samples
               if s.name.endswith("_bucket") and s.labels["http_route"] == "/users/{id}"
               and s.labels["http_response_status_class"] == "2xx"}
    assert buckets["0.005"] == 1 and buckets["0.05"] == 2 and buckets["2.5"] == 2
    assert buckets["5.0"] == 3 and buckets["+Inf"] == 3
    assert len(buckets) == 14


def test_in_flight_gauge_cannot_go_negative():
    m = Metrics(process=False)
    hooks = TelemetryHooks(m)
    exs = [make_ex(f"/{i}") for i in range(3)]
    for ex in exs:
        hooks.on_request(ex)
    hooks.on_complete(exs[0])
    assert samples(scrape(m)["http_server_active_requests"], "http_server_active_requests") == {(): 2}
    hooks.on_complete(exs[0])                 # twice
    hooks.on_complete(make_ex("/never-started"))
    assert samples(scrape(m)["http_server_active_requests"], "http_server_active_requests") == {(): 2}


def test_route_label_cardinality_follows_the_endpoint_cap():
    names = Endpoints(max_endpoints=5)
    m = Metrics(process=False, endpoints=names)
    for i in range(100):
        m.observe(make_ex(f"/page-{'abcdefghij'[i % 10]}{'klmnopqrst'[i // 10]}"))
    routes = {s.labels["http_route"] for s in scrape(m)["http_server_request_duration_seconds"].samples}
    assert len(routes) == 6 and "other" in routes


def test_sources_are_read_at_scrape_time():
    counters = {"rule_hits": {"page-on-5xx": 2}, "notify_sent": {"page-on-5xx": 1},
                "notify_failed": {}, "notify_dropped": {"page-on-5xx": 4}}
    reload = {"reloads": 3, "reload_failures": 1}
    m = Metrics(process=False)
    m.add_source(lambda: counters)
    m.add_source(lambda: reload)
    m.add_source(lambda: {"connect_errors": 5, "odd key!": {"a": 1}}, label="kind")
    counters["rule_hits"]["page-on-5xx"] = 7          # changed after add_source: the scrape sees it
    counters["rule_hits"]["other-rule"] = 1
    fams = scrape(m)
    assert fams["decorator_rule_hits"].type == "counter"
    assert samples(fams["decorator_rule_hits"], "decorator_rule_hits_total") == {
        (("rule", "page-on-5xx"),): 7, (("rule", "other-rule"),): 1}
    assert samples(fams["decorator_notify_sent"], "decorator_notify_sent_total") == {(("rule", "page-on-5xx"),): 1}
    assert samples(fams["decorator_notify_dropped"], "decorator_notify_dropped_total") == {
        (("rule", "page-on-5xx"),): 4}
    assert samples(fams["decorator_rule_reloads"], "decorator_rule_reloads_total") == {(): 3}
    assert samples(fams["decorator_rule_reload_failures"], "decorator_rule_reload_failures_total") == {(): 1}
    assert samples(fams["decorator_upstream_connect_errors"], "decorator_upstream_connect_errors_total") == {
        (): 5}
    assert samples(fams["decorator_odd_key_"], "decorator_odd_key_") == {(("kind", "a"),): 1}


def test_a_failing_source_does_not_break_the_scrape():
    m = Metrics(process=False)
    m.add_source(lambda: 1 / 0)
    m.add_source(lambda: {"reloads": 1})
    m.observe(make_ex("/"))
    fams = scrape(m)
    assert "http_server_request_duration_seconds" in fams and "decorator_rule_reloads" in fams
    assert samples(fams["decorator_metrics_source_errors"], "decorator_metrics_source_errors_total") == {(): 1}


def test_duplicate_series_from_two_sources_keep_the_first():
    m = Metrics(process=False)
    m.add_source(lambda: {"reloads": 1, "rule_hits": {"a": 1}})
    m.add_source(lambda: {"reloads": 2, "rule_hits": {"a": 5, "b": 2}})
    fams = scrape(m)
    assert samples(fams["decorator_rule_reloads"], "decorator_rule_reloads_total") == {(): 1}
    assert samples(fams["decorator_rule_hits"], "decorator_rule_hits_total") == {
        (("rule", "a"),): 1, (("rule", "b"),): 2}


def test_openmetrics_when_asked():
    m = Metrics(process=False)
    m.observe(make_ex("/"))
    body, ctype = m.render("application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    fams = {f.name: f for f in openmetrics_families(body.decode())}
    assert fams["http_server_request_duration_seconds"].type == "histogram"


def test_own_registry_with_process_metrics_and_not_the_global_one():
    m = Metrics()
    m.observe(make_ex("/"))
    fams = scrape(m)
    assert "process_cpu_seconds" in fams or "process_resident_memory_bytes" in fams
    assert b"http_server_request_duration_seconds" not in prometheus_client.generate_latest()


def test_telemetry_hooks_chained_with_rules_see_the_route_and_feed_the_aggregator():
    class Rules(Hooks):
        def __init__(self):
            def on_request(ex):
                if ex.path.startswith("/users/"):
                    ex.route = "/users/{name}"
            self.on_request = on_request

    agg = Aggregator()
    m = Metrics(process=False, endpoints=agg.endpoints)
    hooks = chain(TelemetryHooks(m, aggregator=agg), Rules())
    for name in ("ann", "bob"):
        ex = make_ex(f"/users/{name}", status=500)
        hooks.on_request(ex)
        hooks.on_complete(ex)
    counts = samples(scrape(m)["http_server_request_duration_seconds"], "http_server_request_duration_seconds_count")
    assert counts == {(("http_request_method", "GET"), ("http_response_status_class", "5xx"),
                       ("http_route", "/users/{name}")): 2}
    (e,) = agg.snapshot_delta("p")["endpoints"]
    assert (e["endpoint"], e["count"], e["status"]["5xx"]) == ("/users/{name}", 2, 2)
    info = status_info(aggregator=agg, metrics=m)
    assert info["aggregator"]["requests"] == 2 and info["metrics"]["in_flight"] == 0
    assert info["push"] is None


def test_tunnel_stats_and_runtime_counters_get_their_documented_names():
    tunnel = {"connections_total": 4, "connections_refused": 0, "exchanges": 9, "in_flight": 2,
              "bad_requests": 1, "upstream_errors": 3, "upstream_timeouts": 0, "hook_errors": 0, "replies": 5}
    runtime = {"rule_hits": {"r": 2}, "action_errors": {}, "records": {"r": 1}, "notify_sent": {},
               "notify_failed": {}, "notify_dropped": {}, "notify_suppressed": {"r": 6}}
    m = Metrics(process=False)
    m.add_source(lambda: tunnel)
    m.add_source(lambda: runtime)
    fams = scrape(m)
    assert samples(fams["decorator_upstream_errors"], "decorator_upstream_errors_total") == {(): 3}
    assert samples(fams["decorator_connections"], "decorator_connections_total") == {(): 4}
    assert fams["decorator_exchanges_in_flight"].type == "gauge"
    assert samples(fams["decorator_notify_suppressed"], "decorator_notify_suppressed_total") == {(("rule", "r"),): 6}
    assert all(f.type in ("counter", "gauge", "histogram") for n, f in fams.items() if n.startswith("decorator"))


def test_in_flight_read_from_the_tunnel_keeps_on_request_off_the_hot_path():
    from prometheus_client.parser import text_string_to_metric_families

    from decorator.telemetry.metrics import Metrics, TelemetryHooks

    count = {"n": 7}
    m = Metrics(process=False, in_flight=lambda: count["n"])
    hooks = TelemetryHooks(m)
    assert hooks.on_request is None and hooks.on_complete is not None
    body, _ = m.render()
    gauges = {s.name: s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    assert gauges["http_server_active_requests"] == 7
    count["n"] = 0
    body, _ = m.render()
    gauges = {s.name: s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    assert gauges["http_server_active_requests"] == 0
