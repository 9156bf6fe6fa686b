"""Aggregation math, endpoint naming and caps, histogram buckets, the recent-errors ring."""

from __future__ import annotations

import pytest

from decorator.telemetry.aggregate import Aggregator, Endpoints, collapse_path, is_file
from decorator.wire.models import StatsPayload
from decorator.wire.stats import LATENCY_BOUNDS_MS, N_BUCKETS
from tests.telemetry.helpers import make_ex


@pytest.mark.parametrize("path, expected", [
    ("/", "/"),
    ("/users", "/users"),
    ("/users/42", "/users/{id}"),
    ("/users/42/orders/7", "/users/{id}/orders/{id}"),
    ("/items/3fa85f64-5717-4562-b3fc-2c963f66afa6", "/items/{id}"),
    ("/items/3FA85F64-5717-4562-B3FC-2C963F66AFA6/x", "/items/{id}/x"),
    ("/objects/507f1f77bcf86cd799439011", "/objects/{id}"),                     # Mongo ObjectId
    ("/commits/da39a3ee5e6b4b0d3255bfef95601890afd80709", "/commits/{id}"),     # sha1
    ("/t/dGhpcyBpcyBhIHRva2VuMTIz", "/t/{id}"),                                   # base64 token
    ("/t/aB3_xY9-kLmN0pQrS", "/t/{id}"),                                          # base64url token
    ("/img/123.png", "/img/{id}.png"),
    ("/static/app.js", "/static/app.js"),
    ("/v1/users", "/v1/users"),
    ("/api/v2/accounts", "/api/v2/accounts"),
    ("/blog/my-long-article-title-here", "/blog/my-long-article-title-here"),   # a slug, not an id
    ("/cafe", "/cafe"),
    ("/deadbeef", "/deadbeef"),                  # hex letters only: a word as likely as an id
    ("/users/{id}", "/users/{id}"),
    ("/a//b/", "/a//b/"),
])
def test_collapse_path(path, expected):
    assert collapse_path(path) == expected


@pytest.mark.parametrize("path, expected", [
    ("/index.html", True), ("/a/b.JS", True), ("/users/42", False), ("/dir/", False), ("/", False)])
def test_is_file_is_the_seeds_rule(path, expected):
    assert is_file(path) is expected


def test_counts_status_classes_latency_and_bytes():
    agg = Aggregator()
    agg.record(make_ex("/users/1", status=200, ms=3, bytes_in=10, bytes_out=100))
    agg.record(make_ex("/users/2?x=1", status=404, ms=30, bytes_out=50))
    agg.record(make_ex("/users/3", status=503, ms=3000))
    agg.record(make_ex("/users", method="POST", status=201, ms=1, bytes_in=7))
    snap = agg.snapshot_delta("web-1")
    StatsPayload.model_validate(snap)
    by = {(e["method"], e["endpoint"]): e for e in snap["endpoints"]}
    assert set(by) == {("GET", "/users/{id}"), ("POST", "/users")}
    e = by[("GET", "/users/{id}")]
    assert e["count"] == 3
    assert e["status"] == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 1, "5xx": 1}
    assert e["latency_ms_sum"] == pytest.approx(3033.0)
    assert sum(e["latency_buckets"]) == 3
    assert e["latency_buckets"][LATENCY_BOUNDS_MS.index(5)] == 1       # 3 ms -> (2, 5]
    assert e["latency_buckets"][LATENCY_BOUNDS_MS.index(50)] == 1      # 30 ms -> (25, 50]
    assert e["latency_buckets"][LATENCY_BOUNDS_MS.index(5000)] == 1    # 3 s -> (2500, 5000]
    assert (e["bytes_in"], e["bytes_out"]) == (10, 150)
    assert e["file"] is False
    assert by[("POST", "/users")]["latency_buckets"][0] == 1           # 1 ms is <= 1: the first bucket
    assert snap["pod"] == "web-1" and snap["interval"] > 0


@pytest.mark.parametrize("ms, index", [
    (0.0, 0), (1.0, 0), (1.0001, 1), (2.0, 1), (10.0, 3), (10000.0, 12), (10000.1, 13), (1e9, 13)])
def test_histogram_bucket_edges_are_inclusive_upper_bounds(ms, index):
    agg = Aggregator()
    agg.record(make_ex("/x", ms=ms))
    buckets = agg.snapshot_delta()["endpoints"][0]["latency_buckets"]
    assert len(buckets) == N_BUCKETS == 14
    assert buckets.index(1) == index and sum(buckets) == 1


def test_fields_choose_what_is_recorded():
    agg = Aggregator()
    agg.record(make_ex("/a", status=500, ms=10, bytes_out=99), frozenset({"status"}))
    e = agg.snapshot_delta()["endpoints"][0]
    assert e["count"] == 1 and e["status"]["5xx"] == 1
    assert sum(e["latency_buckets"]) == 0 and e["latency_ms_sum"] == 0 and e["bytes_out"] == 0
    agg.record(make_ex("/a", status=500, ms=10, bytes_out=99), frozenset({"timing", "size"}))
    e = agg.snapshot_delta()["endpoints"][0]
    assert e["status"]["5xx"] == 0 and sum(e["latency_buckets"]) == 1 and e["bytes_out"] == 99


def test_route_wins_over_the_path_and_file_flag_follows_the_path():
    agg = Aggregator()
    agg.record(make_ex("/users/abc", route="/users/{name}"))
    agg.record(make_ex("/users/def", route="/users/{name}"))
    agg.record(make_ex("/assets/site.css"))
    by = {e["endpoint"]: e for e in agg.snapshot_delta()["endpoints"]}
    assert by["/users/{name}"]["count"] == 2
    assert by["/assets/site.css"]["file"] is True


def test_unknown_methods_share_one_name():
    agg = Aggregator()
    for m in ("FOO", "BAR", "get"):
        agg.record(make_ex("/x", method=m))
    (e,) = agg.snapshot_delta()["endpoints"]
    assert (e["method"], e["count"]) == ("_OTHER", 3)


def test_endpoint_cap_counts_the_rest_under_other():
    agg = Aggregator(max_endpoints=3)
    for i in range(10):
        agg.record(make_ex(f"/page-{chr(97 + i)}"))
    agg.record(make_ex("/page-a"))          # an admitted name stays admitted
    agg.record(make_ex("/x", method="POST"))
    snap = agg.snapshot_delta()
    by = {(e["method"], e["endpoint"]): e["count"] for e in snap["endpoints"]}
    assert by == {("GET", "/page-a"): 2, ("GET", "/page-b"): 1, ("GET", "/page-c"): 1,
                  ("GET", "other"): 7, ("POST", "other"): 1}
    t = agg.totals()
    assert (t["requests"], t["endpoints"], t["overflow"]) == (12, 3, 8)


def test_endpoint_names_are_shared_and_capped_across_users():
    names = Endpoints(max_endpoints=1)
    assert names.key(make_ex("/a/1")) == ("GET", "/a/{id}")
    assert names.key(make_ex("/b")) == ("GET", "other")
    assert names.key(make_ex("/a/2")) == ("GET", "/a/{id}")
    assert len(names) == 1


def test_snapshot_is_a_delta_and_none_when_nothing_is_new():
    agg = Aggregator()
    assert agg.snapshot_delta() is None
    for _ in range(3):
        agg.record(make_ex("/a", ms=5, bytes_out=10))
    agg.record(make_ex("/b"))
    first = agg.snapshot_delta()
    assert {e["endpoint"]: e["count"] for e in first["endpoints"]} == {"/a": 3, "/b": 1}
    assert agg.snapshot_delta() is None
    agg.record(make_ex("/a", status=500, ms=7, bytes_out=1))
    second = agg.snapshot_delta("p")
    StatsPayload.model_validate(second)
    (e,) = second["endpoints"]                       # /b did not change: not sent again
    assert (e["endpoint"], e["count"], e["bytes_out"]) == ("/a", 1, 1)
    assert e["status"] == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 1}
    assert e["latency_ms_sum"] == pytest.approx(7.0) and sum(e["latency_buckets"]) == 1
    assert agg.totals()["requests"] == 5 and agg.totals()["bytes_out"] == 31


def test_error_ring_is_bounded_and_samples_are_sent_once():
    agg = Aggregator(ring=5)
    for i in range(20):
        agg.record(make_ex(f"/e/{i}", status=502, ms=2, request_id=f"r{i}", error="upstream_refused"))
    agg.record(make_ex("/ok", status=200))
    agg.record(make_ex("/gone", status=0, error="client_closed"))
    assert agg.totals()["recent_errors"] == 5
    snap = agg.snapshot_delta()
    assert [s["request_id"] for s in snap["samples"]] == ["r16", "r17", "r18", "r19", None]
    s = snap["samples"][0]
    assert (s["endpoint"], s["route"], s["method"], s["status"], s["error"]) == \
        ("/e/16", "/e/{id}", "GET", 502, "upstream_refused")
    assert snap["samples"][-1]["error"] == "client_closed"
    assert agg.totals()["errors"] == 21
    agg.record(make_ex("/e/99", status=500, request_id="last"))
    assert [s["request_id"] for s in agg.snapshot_delta()["samples"]] == ["last"]


def test_long_paths_are_cut_to_the_wire_limit():
    agg = Aggregator()
    agg.record(make_ex("/" + "a" * 5000, status=500))
    snap = agg.snapshot_delta("p")
    StatsPayload.model_validate(snap)
    assert len(snap["endpoints"][0]["endpoint"]) == 2048


def test_an_exchange_recorded_twice_counts_once_with_the_union_of_fields():
    agg = Aggregator()
    ex = make_ex("/a", status=500, ms=10, bytes_out=5)
    agg.record(ex, frozenset({"status"}))
    agg.record(ex, frozenset({"status", "timing"}))
    agg.record(ex, frozenset({"timing", "size"}))
    agg.record(ex)
    snap = agg.snapshot_delta("p")
    (e,) = snap["endpoints"]
    assert (e["count"], e["status"]["5xx"], sum(e["latency_buckets"]), e["bytes_out"]) == (1, 1, 1, 5)
    assert len(snap["samples"]) == 1
    agg.record(make_ex("/a", status=500, ms=10))       # the next exchange counts again
    assert agg.snapshot_delta("p")["endpoints"][0]["count"] == 1


def test_4xx_on_paths_never_answered_otherwise_are_one_name_and_take_no_place():
    """A scanner's 404s become one `(unmatched)` row per method; real endpoints keep every place."""
    agg = Aggregator(max_endpoints=3)
    for i in range(500):
        agg.record(make_ex(f"/random-{10853 + i}/x", status=404))
        agg.record(make_ex(f"/wp-{i}.php", method="POST", status=403))
    for path in ("/users/1", "/orders", "/health"):
        agg.record(make_ex(path, status=200))
    agg.record(make_ex("/users/2", status=404))          # a known name keeps its own 4xx
    agg.record(make_ex("/later", status=200))            # the places are taken by real endpoints
    by = {(e["method"], e["endpoint"]): e for e in agg.snapshot_delta()["endpoints"]}
    assert {k: e["count"] for k, e in by.items()} == {
        ("GET", "(unmatched)"): 500, ("POST", "(unmatched)"): 500, ("GET", "/users/{id}"): 2,
        ("GET", "/orders"): 1, ("GET", "/health"): 1, ("GET", "other"): 1}
    assert by[("GET", "/users/{id}")]["status"]["4xx"] == 1
    assert by[("POST", "(unmatched)")]["file"] is False      # /wp-1.php looks like a file; the group is not
    t = agg.totals()
    assert (t["endpoints"], t["overflow"], t["unmatched"]) == (3, 1, 1000)


def test_a_path_becomes_an_endpoint_once_answered_outside_4xx():
    names = Endpoints(max_endpoints=10)
    assert names.key(make_ex("/items/7", status=404)) == ("GET", "(unmatched)")
    assert names.key(make_ex("/items/8", status=200)) == ("GET", "/items/{id}")
    assert names.key(make_ex("/items/9", status=404)) == ("GET", "/items/{id}")
    assert names.key(make_ex("/items/9", method="DELETE", status=405)) == ("DELETE", "(unmatched)")
    assert names.key(make_ex("/boom/1", status=503)) == ("GET", "/boom/{id}")   # 5xx: the app has it
    assert names.key(make_ex("/moved", status=301)) == ("GET", "/moved")
    assert len(names) == 3


def test_route_templates_always_name_their_exchanges_even_past_the_cap():
    names = Endpoints(max_endpoints=1)
    assert names.key(make_ex("/a", status=200)) == ("GET", "/a")
    assert names.key(make_ex("/b", status=200)) == ("GET", "other")
    # The rule set bounds route templates: they never spend or need a place, whatever the status.
    assert names.key(make_ex("/users/x", route="/users/{name}", status=200)) == ("GET", "/users/{name}")
    assert names.key(make_ex("/users/y", route="/users/{name}", status=404)) == ("GET", "/users/{name}")
    assert names.key(make_ex("/c", status=200)) == ("GET", "other")
    assert len(names) == 2


def test_scanner_paths_do_not_fill_the_name_cache():
    names = Endpoints()
    names.key(make_ex("/real/1", status=200))
    for i in range(10_000):
        names.key(make_ex(f"/scan-{i}/x", status=404))
    assert names._cache == {"/real/1": "/real/{id}"}
