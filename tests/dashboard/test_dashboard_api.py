"""The dashboard's HTTP API over a real socket and a real SQLite file: ingest, seed compatibility,
queries, bad and oversized payloads, gzip, auth, restart, retention and downsampling."""

from __future__ import annotations

import gzip
import json
import sqlite3

import pytest
from dash_helpers import endpoint, resources, stats

from decorator.dashboard.store import quantile
from decorator.wire.stats import N_BUCKETS, bucket_index

SEED_STATS = {"pod": "x-1", "stats": [
    {"endpoint": "/", "method": "GET", "response": {"status": "200", "state": "OK"}, "time": "9ms",
     "started": 1544042305989, "file": False},
    {"endpoint": "/", "method": "GET", "response": {"status": 200}, "time": 30, "started": 1544042306000,
     "file": False},
    {"endpoint": "/app.js", "method": "GET", "response": {"status": "500"}, "time": 1500,
     "started": 1544042307000, "file": True},
]}
SEED_RESOURCES = {"pod": "x-1", "resource": {"free_memory": 31891456, "total_memory": 8589934592, "cpus": [
    {"model": "Intel Xeon", "speed": 5300, "times": {"user": 153938390, "nice": 0, "sys": 73413290,
                                                     "idle": 808839530}}]}}


def _ok(r):
    assert r.status_code == 200, r.text
    return r.json()


def test_stats_are_stored_and_queried(dash):
    eps = [endpoint("/users/{id}", [3, 4, 40, 60, 300], statuses=[200, 200, 200, 404, 500]),
           endpoint("/health", [1, 1])]
    sample = {"endpoint": "/users/7", "route": "/users/{id}", "method": "GET", "status": 500, "time_ms": 300.0,
              "started": dash.store.clock(), "request_id": "req-1", "error": None}
    assert _ok(dash.client.post("/stats", json=stats("web-1", eps, [sample]))) == {"response": "saved", "rows": 3}

    top = _ok(dash.client.get("/api/endpoints", params={"window": "15m"}))
    assert [(e["endpoint"], e["hits"]) for e in top] == [("/users/{id}", 5), ("/health", 2)]
    users = top[0]
    assert users["status"] == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1}
    assert users["avg_ms"] == pytest.approx(81.4)
    assert 250 <= users["p95_ms"] <= 500      # the 300 ms exchange lands in the 250-500 bucket

    ov = _ok(dash.client.get("/api/overview", params={"window": "15m"}))
    assert ov["totals"]["requests"] == 7 and ov["totals"]["errors"] == 1
    assert [p["pod"] for p in ov["pods"]] == ["web-1"]
    assert ov["pods"][0]["traffic"]["requests"] == 7

    errors = _ok(dash.client.get("/api/events"))["errors"]
    assert [(e["pod"], e["endpoint"], e["status"], e["request_id"]) for e in errors] == [
        ("web-1", "/users/7", 500, "req-1")]
    assert _ok(dash.client.get("/stats"))[0]["pod"] == "web-1"

    # A real file in WAL mode, readable by anyone with sqlite3.
    with sqlite3.connect(dash.db) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 2      # incremental: prune gives pages back
        assert c.execute("PRAGMA user_version").fetchone()[0] == 3
        assert c.execute("SELECT COUNT(*) FROM stats").fetchone()[0] == 2


def test_seed_payloads_are_accepted(dash):
    """The seed's mothership API: POST {pod, stats:[...]}, POST {pod, resource}, GET lists per pod."""
    assert _ok(dash.client.post("/stats", json=SEED_STATS))["response"] == "saved"
    assert _ok(dash.client.post("/resources", json=SEED_RESOURCES))["response"] == "saved"

    assert [s["pod"] for s in _ok(dash.client.get("/stats"))] == ["x-1"]
    got = _ok(dash.client.get("/resources"))
    assert len(got) == 1 and got[0]["pod"] == "x-1"
    assert got[0]["resource"]["total_memory"] == 8589934592

    top = {e["endpoint"]: e for e in _ok(dash.client.get("/api/endpoints"))}
    assert top["/"]["hits"] == 2 and top["/"]["avg_ms"] == pytest.approx(19.5)
    assert top["/app.js"]["file"] is True and top["/app.js"]["errors"] == 1
    assert top["/app.js"]["avg_ms"] == 1500
    errors = _ok(dash.client.get("/api/events"))["errors"]
    assert [(e["endpoint"], e["status"]) for e in errors] == [("/app.js", 500)]
    assert errors[0]["started"] == pytest.approx(1544042307.0)   # the seed's epoch ms became seconds


def test_get_resources_is_latest_per_pod(dash, clock):
    for tick in (1, 2, 3):
        for pod in ("b-pod", "a-pod"):
            _ok(dash.client.post("/resources", json=resources(pod, tick=tick, free=tick << 30)))
        clock.advance(1)
    got = _ok(dash.client.get("/resources"))
    assert [(r["pod"], r["resource"]["free_memory"]) for r in got] == [("a-pod", 3 << 30), ("b-pod", 3 << 30)]
    pods = {p["pod"]: p for p in _ok(dash.client.get("/api/overview"))["pods"]}
    # CPU load comes from the difference between two pushes of cumulative times.
    assert pods["a-pod"]["cpus"] == [pytest.approx(25.0), pytest.approx(27.5)]
    assert pods["a-pod"]["memory"] == {"used": 5 << 30, "total": 8 << 30}
    assert pods["a-pod"]["container"]["memory_limit"] == 512 << 20


@pytest.mark.parametrize(("body", "headers", "status", "reason"), [
    (b"not json", {}, 400, "not JSON"),
    (b"", {}, 400, "empty body"),
    (b"\xff\xfe", {}, 400, "not JSON"),
    (b"[1, 2]", {}, 422, "expected a JSON object"),
    (json.dumps({"endpoints": []}).encode(), {}, 422, "pod"),
    (json.dumps({"pod": "", "endpoints": []}).encode(), {}, 422, "pod"),
    (json.dumps({"pod": "p" * 300}).encode(), {}, 422, "pod"),
    (json.dumps({"pod": "a", "endpoints": [endpoint("/x", [1]) | {"latency_buckets": [1, 2]}]}).encode(), {},
     422, "latency_buckets"),
    (json.dumps({"pod": "a", "endpoints": [endpoint("/x", [1]) | {"count": -1}]}).encode(), {}, 422, "count"),
    (b'{"pod": "a", "endpoints": [], "interval": NaN}', {}, 422, "interval"),
    (json.dumps({"pod": "a", "endpoints": "many"}).encode(), {}, 422, "endpoints"),
    (b'{"pod": "a"}', {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    (b'{"pod": "a"}', {"Content-Encoding": "gzip"}, 400, "gzip"),
    (gzip.compress(b'{"pod": "a"}')[:-4], {"Content-Encoding": "gzip"}, 400, "truncated"),
    (gzip.compress(b'{"pod": "a"}') + b"junk", {"Content-Encoding": "gzip"}, 400, "after the end"),
])
def test_bad_stats_are_refused_with_a_reason_and_not_stored(dash, body, headers, status, reason):
    r = dash.client.post("/stats", content=body, headers={"Content-Type": "application/json", **headers})
    assert r.status_code == status, r.text
    assert reason in json.dumps(r.json())
    assert dash.store.counts() == dict.fromkeys(dash.store.counts(), 0)


def test_bad_resources_and_events_are_refused(dash):
    r = dash.client.post("/resources", json={"pod": "a", "resource": {"free_memory": "lots"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == "resource.free_memory"
    r = dash.client.post("/events", json={"rule": "no-event-name"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == "event"
    r = dash.client.post("/stats", json={"pod": "a", "stats": [{"method": "GET"}]})   # seed shape, no endpoint
    assert r.status_code == 422 and "SeedStatsPayload" in r.json()["error"]
    assert dash.store.counts() == dict.fromkeys(dash.store.counts(), 0)


def test_body_limits_apply_to_compressed_and_decompressed_size(start_dashboard, clock):
    dash = start_dashboard(clock=clock, max_body=20_000)
    big = json.dumps(stats("a", [endpoint(f"/e/{i}", [1]) for i in range(200)])).encode()
    assert len(big) > 20_000
    r = dash.client.post("/stats", content=big)
    assert r.status_code == 413 and "limit" in r.json()["error"]

    # Chunked (no Content-Length): refused once the stream passes the cap.
    def chunks():
        for i in range(0, len(big), 4096):
            yield big[i:i + 4096]
    r = dash.client.post("/stats", content=chunks())
    assert r.status_code == 413

    # A zip bomb: 50 MB of JSON whitespace in ~50 KB of gzip; decompression stops at the cap.
    bomb = gzip.compress(b'{"pod": "a", "endpoints": []' + b" " * 50_000_000 + b"}", 9)
    assert len(bomb) < 20_000 * 4
    small_bomb = gzip.compress(b'{"pod": "a", "endpoints": []' + b" " * 5_000_000 + b"}", 9)
    assert len(small_bomb) < 20_000
    r = dash.client.post("/stats", content=small_bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json()["error"]
    r = dash.client.post("/stats", content=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert dash.store.counts() == dict.fromkeys(dash.store.counts(), 0)

    # Under the cap, gzip is accepted.
    ok = gzip.compress(json.dumps(stats("a", [endpoint("/small", [2, 3])])).encode())
    r = dash.client.post("/stats", content=ok, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert [e["endpoint"] for e in _ok(dash.client.get("/api/endpoints"))] == ["/small"]


def test_token_required_on_posts_when_configured(start_dashboard, clock):
    dash = start_dashboard(clock=clock, token="s3cret")
    body = stats("a", [endpoint("/x", [1])])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                    {"Authorization": "Basic s3cret"}, {"Authorization": "Bearer s3cret-and-more"}):
        for path, payload in (("/stats", body), ("/resources", resources("a")), ("/events", {"event": "x"})):
            r = dash.client.post(path, json=payload, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
    assert dash.store.counts() == dict.fromkeys(dash.store.counts(), 0)
    # The token is checked before the body is read: a bad token never costs a decompression.
    r = dash.client.post("/stats", content=b"\x1f\x8b garbage", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 401

    ok = {"Authorization": "Bearer s3cret"}
    assert dash.client.post("/stats", json=body, headers=ok).status_code == 200
    assert dash.client.post("/events", json={"event": "x"}, headers=ok).status_code == 200
    # Reads stay open (documented: the page has no login; keep the port private).
    assert dash.client.get("/stats").status_code == 200
    assert _ok(dash.client.get("/healthz"))["auth"] is True


def test_no_token_means_open_posts(dash):
    assert dash.client.post("/events", json={"event": "x"}).status_code == 200
    assert _ok(dash.client.get("/healthz"))["auth"] is False


def test_restart_keeps_data(start_dashboard, clock, tmp_path):
    first = start_dashboard(clock=clock)
    _ok(first.client.post("/stats", json=stats("web-1", [endpoint("/kept", [5, 6, 7])])))
    _ok(first.client.post("/resources", json=resources("web-1")))
    _ok(first.client.post("/events", json={"event": "rule.matched", "rule": "r1", "pod": "web-1"}))
    first.stop()

    second = start_dashboard(clock=clock)
    assert second.db == first.db
    assert [(e["endpoint"], e["hits"]) for e in _ok(second.client.get("/api/endpoints"))] == [("/kept", 3)]
    assert [r["pod"] for r in _ok(second.client.get("/resources"))] == ["web-1"]
    assert [a["rule"] for a in _ok(second.client.get("/api/events"))["alerts"]] == ["r1"]
    # New data lands next to the old.
    _ok(second.client.post("/stats", json=stats("web-1", [endpoint("/kept", [8])])))
    assert _ok(second.client.get("/api/endpoints"))[0]["hits"] == 4


def test_downsampling_keeps_totals_and_retention_drops_old_data(start_dashboard, clock):
    dash = start_dashboard(clock=clock, retention=6 * 3600, raw_keep=3600, minute_keep=3 * 3600)
    clock.t = 1_800_000_000.0   # on a 10-minute boundary
    for i in range(24):         # two minutes of pushes, every 5 s, two pods
        for pod, lat in (("a", [2, 8, 30]), ("b", [400, 700])):
            _ok(dash.client.post("/stats", json=stats(pod, [endpoint("/x", lat)])))
        _ok(dash.client.post("/resources", json=resources("a", tick=i + 1)))
        _ok(dash.client.post("/resources", json=resources("b", tick=i + 1, container={})))   # no cgroup data
        clock.advance(5)

    def snapshot():
        totals = _ok(dash.client.get("/api/overview", params={"window": "6h"}))["totals"]
        totals.pop("rps_now")   # the current rate moves with the clock; the window's numbers must not
        return (_ok(dash.client.get("/api/endpoints", params={"window": "6h"})), totals)
    before = snapshot()
    assert before[0][0]["hits"] == 24 * 5

    clock.advance(2 * 3600)
    done = dash.store.prune()
    assert done["stats_rolled"] == 48 and done["resources_rolled"] == 48 and done["minutes_rolled"] == 0
    counts = dash.store.counts()
    assert counts["stats"] == 0 and counts["resources"] == 0
    assert counts["stats_1m"] == 4          # 2 minutes x 2 pods
    assert counts["pod_stats_1m"] == 4 and counts["pod_stats"] == 0
    assert counts["resources_1m"] == 4
    assert snapshot() == before
    mem = _ok(dash.client.get("/api/series", params={"metric": "memory", "window": "6h"}))
    assert mem["step"] % 60 == 0            # rolled-up minutes never alias into half-empty buckets
    lines = {s["name"]: {v for v in s["values"] if v is not None} for s in mem["series"]}
    assert lines == {"a": {200 << 20}, "b": {5 << 30}}   # b has no container: its node memory is drawn

    # A second prune has nothing left to roll up and must not double-count.
    assert dash.store.prune()["stats_rolled"] == 0
    assert snapshot() == before

    clock.advance(2 * 3600)                 # older than minute_keep: minutes become 10-minute rows
    assert dash.store.prune()["minutes_rolled"] == 4 + 4
    counts = dash.store.counts()
    assert counts["stats_1m"] == 2 and counts["resources_1m"] == 2 and counts["pod_stats_1m"] == 2
    assert snapshot() == before
    assert dash.store.prune()["minutes_rolled"] == 0
    rps = _ok(dash.client.get("/api/series", params={"metric": "rps", "window": "6h"}))
    assert rps["step"] % 600 == 0
    assert sum(rps["series"][0]["values"]) * rps["step"] == pytest.approx(24 * 5)
    mem = _ok(dash.client.get("/api/series", params={"metric": "memory", "window": "6h"}))
    assert {s["name"]: {v for v in s["values"] if v is not None} for s in mem["series"]} == lines

    clock.advance(6 * 3600)
    done = dash.store.prune()
    assert done["pods_forgotten"] == 2
    assert dash.store.counts() == dict.fromkeys(dash.store.counts(), 0)
    assert _ok(dash.client.get("/stats")) == []


def test_series_cover_the_window_and_sum_up(dash, clock):
    clock.t = 1_800_000_000.0
    for _ in range(12):
        _ok(dash.client.post("/stats", json=stats("a", [endpoint("/x", [10] * 9 + [900], statuses=[200] * 9 + [503])])))
        _ok(dash.client.post("/resources", json=resources("a")))
        clock.advance(5)
    rps = _ok(dash.client.get("/api/series", params={"metric": "rps", "window": "5m"}))
    assert rps["step"] == 5 and len(rps["t"]) == 60
    assert rps["t"][-1] + rps["step"] <= clock()
    by_name = {s["name"]: s["values"] for s in rps["series"]}
    assert sum(by_name["requests/s"]) * rps["step"] == pytest.approx(120)
    assert sum(by_name["5xx/s"]) * rps["step"] == pytest.approx(12)

    lat = _ok(dash.client.get("/api/series", params={"metric": "latency", "window": "5m"}))
    assert [s["name"] for s in lat["series"]] == ["p50", "p95", "p99"]
    p99 = [v for v in lat["series"][2]["values"] if v is not None]
    assert p99 and all(500 <= v <= 1000 for v in p99)

    status = _ok(dash.client.get("/api/series", params={"metric": "status", "window": "5m", "pod": "a"}))
    assert {s["name"] for s in status["series"]} == {"2xx", "3xx", "4xx", "5xx"}

    cpu = _ok(dash.client.get("/api/series", params={"metric": "cpu", "window": "5m", "pod": "a"}))
    assert [s["name"] for s in cpu["series"]] == ["node CPU %", "container CPU %"]
    assert _ok(dash.client.get("/api/series", params={"metric": "rps", "pod": "nobody"}))["series"][0]["values"] \
        == [0] * 90

    _ok(dash.client.post("/stats", json=stats("a", [endpoint("/other", [5] * 30)])))
    clock.advance(5)
    only_x = _ok(dash.client.get("/api/series", params={"metric": "rps", "window": "5m", "endpoint": "/x"}))
    every = _ok(dash.client.get("/api/series", params={"metric": "rps", "window": "5m"}))
    assert sum(only_x["series"][0]["values"]) * 5 == pytest.approx(120)
    assert sum(every["series"][0]["values"]) * 5 == pytest.approx(150)

    assert dash.client.get("/api/series", params={"metric": "disk"}).status_code == 400
    assert dash.client.get("/api/overview", params={"window": "soon"}).status_code == 400
    assert dash.client.get("/api/events", params={"limit": "0"}).status_code == 400


def test_pods_without_resources_for_a_while_are_stale(start_dashboard, clock):
    dash = start_dashboard(clock=clock, stale_after=10)
    _ok(dash.client.post("/resources", json=resources("gone")))
    clock.advance(30)
    _ok(dash.client.post("/resources", json=resources("alive")))
    ov = _ok(dash.client.get("/api/overview"))
    assert {p["pod"]: (p["stale"], p["age_s"]) for p in ov["pods"]} == {"gone": (True, 30), "alive": (False, 0)}
    assert ov["counts"] == {"pods": 2, "stale": 1}
    # Stats alone do not revive a pod: only resources are the heartbeat.
    _ok(dash.client.post("/stats", json=stats("gone", [endpoint("/x", [1])])))
    assert {p["pod"]: p["stale"] for p in _ok(dash.client.get("/api/overview"))["pods"]}["gone"] is True


def test_events_show_as_alerts(dash):
    ev = {"event": "rule.matched", "rule": "page-on-5xx", "pod": "web-7d9f-x2", "time": 1764180003.1, "count": 5,
          "window_s": 60, "request": {"method": "GET", "path": "/x", "request_id": "r-9"},
          "response": {"status": 503}, "duration_ms": 12.0, "message": "5 errors in 60s", "extra": "ignored"}
    _ok(dash.client.post("/events", json=ev))
    _ok(dash.client.post("/events", json={"event": "custom"}))   # a webhook from elsewhere: no pod
    alerts = _ok(dash.client.get("/api/events"))["alerts"]
    assert [(a["event"], a["rule"], a["pod"]) for a in alerts] == [
        ("custom", None, None), ("rule.matched", "page-on-5xx", "web-7d9f-x2")]
    assert alerts[1] | {"ts": 0} == {"ts": 0, "pod": "web-7d9f-x2", "event": "rule.matched", "rule": "page-on-5xx",
                                     "count": 5, "status": 503, "method": "GET", "path": "/x", "request_id": "r-9",
                                     "duration_ms": 12.0, "message": "5 errors in 60s"}
    assert _ok(dash.client.get("/api/events", params={"pod": "web-7d9f-x2"}))["alerts"][0]["rule"] == "page-on-5xx"


def test_the_page_and_vendored_chart_library_are_served(dash):
    page = dash.client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for ref in ("/static/app.js", "/static/style.css", "/static/vendor/uplot/uPlot.iife.min.js",
                "/static/vendor/uplot/uPlot.min.css"):
        assert ref in page.text
        assert dash.client.get(ref).status_code == 200, ref
    assert "MIT" in dash.client.get("/static/vendor/uplot/LICENSE").text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    lib = dash.client.get("/static/vendor/uplot/uPlot.iife.min.js", headers={"Accept-Encoding": "gzip"})
    assert lib.headers["content-encoding"] == "gzip" and "uPlot" in lib.text
    assert "http" not in page.text.replace("http://…", "")   # nothing from a CDN


def test_fleet_percentiles_merge_buckets_across_pods(dash):
    fast, slow = [2.0] * 90, [800.0] * 10
    _ok(dash.client.post("/stats", json=stats("fast", [endpoint("/x", fast)])))
    _ok(dash.client.post("/stats", json=stats("slow", [endpoint("/x", slow)])))
    merged = [0] * N_BUCKETS
    for ms in fast + slow:
        merged[bucket_index(ms)] += 1
    totals = _ok(dash.client.get("/api/overview"))["totals"]
    assert totals["p50_ms"] == quantile(merged, 0.5) <= 2
    assert totals["p95_ms"] == quantile(merged, 0.95) and 500 < totals["p95_ms"] <= 1000
    per_pod = {p["pod"]: p["traffic"]["p95_ms"] for p in _ok(dash.client.get("/api/overview"))["pods"]}
    assert per_pod["fast"] <= 2 and per_pod["slow"] > 500


def test_quantile_interpolates_inside_the_bucket():
    counts = [0] * N_BUCKETS
    assert quantile(counts, 0.5) is None
    counts[bucket_index(30)] = 100          # all in the 25-50 ms bucket
    assert quantile(counts, 0.5) == 37.5
    assert quantile(counts, 1.0) == 50
    counts = [0] * N_BUCKETS
    counts[-1] = 3                          # overflow: answered with the last finite bound
    assert quantile(counts, 0.99) == 10000


def test_a_large_push_is_accepted_whole(dash):
    """Big bodies take the worker-thread decode path; every row of the push lands in one transaction."""
    body = stats("big", [endpoint(f"/e/{i}", [1, 2]) for i in range(2000)],
                 [{"endpoint": f"/e/{i}", "status": 500, "error": "x" * 5000} for i in range(100)])
    assert len(json.dumps(body)) > 100_000
    assert _ok(dash.client.post("/stats", json=body))["rows"] == 2100
    assert len(_ok(dash.client.get("/api/endpoints", params={"limit": 500}))) == 500
    errors = _ok(dash.client.get("/api/events", params={"limit": 500}))["errors"]
    assert len(errors) == 100 and len(errors[0]["error"]) == 2048    # free text is cut, not refused
