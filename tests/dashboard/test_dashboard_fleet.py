"""What the dashboard reports at fleet size, over a real socket and a real SQLite file: the current rate
next to the window's average, container CPU against what the container may use (its limit, else the
node's cores) on the card and the chart alike, and a file from the previous schema migrating in place."""

from __future__ import annotations

import asyncio
import random
import sqlite3

import pytest
from dash_helpers import Dashboard, endpoint, resources, stats
from prometheus_client import CollectorRegistry
from test_dashboard_sidecar import FAST, exchange, wait_until

from decorator.dashboard.store import _MIGRATIONS, Store, StoreConfig
from decorator.telemetry import Telemetry
from decorator.wire.models import StatsPayload


def _ok(r):
    assert r.status_code == 200, r.text
    return r.json()


def _push(dash, pod: str, n: int, interval: float = 10.0) -> None:
    body = stats(pod, [endpoint("/work", [5.0] * n)])
    body["interval"] = interval
    _ok(dash.client.post("/stats", json=body))


def test_the_tile_shows_the_current_rate_and_the_average_is_labelled_as_one(dash, clock):
    """The issue's case: 30/s for the last minute of a 15-minute window is 30/s now, 2/s on average
    (the tile used to show the average as the rate)."""
    clock.t = 1_800_000_000.0
    for _ in range(6):                       # one minute at 30/s from pod a, pushed every 10 s
        clock.advance(10)
        _push(dash, "a", 300)
        _push(dash, "b", 20)                 # 2/s from pod b
    ov = _ok(dash.client.get("/api/overview", params={"window": "15m"}))
    t = ov["totals"]
    assert t["requests"] == 6 * 320
    assert t["rps_now"] == pytest.approx(32.0)
    assert t["rps_avg"] == pytest.approx(6 * 320 / 900, abs=1e-3)
    assert ov["recent"] == 30.0
    traffic = {p["pod"]: p["traffic"] for p in ov["pods"]}
    assert traffic["a"]["rps_now"] == pytest.approx(30.0) and traffic["b"]["rps_now"] == pytest.approx(2.0)
    assert traffic["a"]["rps_avg"] == pytest.approx(1800 / 900, abs=1e-3)
    scoped = _ok(dash.client.get("/api/overview", params={"window": "15m", "pod": "b"}))["totals"]
    assert scoped["rps_now"] == pytest.approx(2.0)

    # The chart's last whole step says the same as the tile.
    rps = _ok(dash.client.get("/api/series", params={"metric": "rps", "window": "15m"}))
    assert rps["step"] == 10 and rps["series"][0]["values"][-1] == pytest.approx(32.0)

    # Traffic stops: after `recent` seconds without pushes the current rate is 0, the average is not.
    clock.advance(31)
    t = _ok(dash.client.get("/api/overview", params={"window": "15m"}))["totals"]
    assert t["rps_now"] == 0 and t["rps_avg"] > 2


def test_the_current_rate_uses_the_time_each_push_covers(dash, clock):
    clock.t = 1_800_000_000.0
    _push(dash, "slow", 50, interval=5.0)     # pushes every 5 s: 10/s
    clock.advance(5)
    _push(dash, "slow", 50, interval=5.0)
    _push(dash, "idle", 60, interval=60.0)    # a minute idle then one push: 1/s over what it covers
    _ok(dash.client.post("/stats", json={"pod": "seed", "stats": [   # the seed's shape has no interval
        {"endpoint": "/", "method": "GET", "response": {"status": 200}, "time": 3}] * 15}))
    rates = {p["pod"]: p["traffic"]["rps_now"] for p in _ok(dash.client.get("/api/overview"))["pods"]}
    assert rates == {"slow": 10.0, "idle": 1.0, "seed": 0.5}      # 15 over the 30-s recent window


def test_container_cpu_is_measured_against_its_limit_else_the_node_on_card_and_chart(dash, clock):
    """198% of one core on a 4-core node without a limit is 49.5% of what the container may use; with a
    0.5-core limit, 40% of one core is 80% of the limit; a cpuset of 2 CPUs counts 2."""
    clock.t = 1_800_000_000.0
    cases = {
        "nolimit": ({"memory_usage": 300 << 20, "memory_limit": None, "cpu_usage_seconds": 9.0,
                     "cpu_limit_cores": None, "cpu_percent": 198.0}, 4, 49.5, 4.0, "node"),
        "limited": ({"memory_usage": 200 << 20, "memory_limit": 512 << 20, "cpu_usage_seconds": 2.0,
                     "cpu_limit_cores": 0.5, "cpu_percent": 40.0}, 4, 80.0, 0.5, "limit"),
        "cpuset": ({"memory_usage": 1 << 20, "memory_limit": None, "cpu_usage_seconds": 1.0,
                    "cpu_limit_cores": None, "cpu_percent": 198.0, "cpu_cores": 2}, 8, 99.0, 2.0, "node"),
    }
    for _ in range(3):
        for pod, (container, cpus, *_) in cases.items():
            _ok(dash.client.post("/resources", json=resources(pod, cpus=cpus, container=container)))
        clock.advance(1)
    pods = {p["pod"]: p for p in _ok(dash.client.get("/api/overview", params={"window": "5m"}))["pods"]}
    fleet = _ok(dash.client.get("/api/series", params={"metric": "cpu", "window": "5m"}))
    lines = {s["name"]: {v for v in s["values"] if v is not None} for s in fleet["series"]}
    for pod, (_, _, share, cores, of) in cases.items():
        c = pods[pod]["container"]
        assert (c["cpu_share"], c["cpu_capacity_cores"], c["cpu_capacity"]) == (share, cores, of)
        assert lines[pod] == {share}                     # the fleet chart draws what the card says
        mine = _ok(dash.client.get("/api/series", params={"metric": "cpu", "window": "5m", "pod": pod}))
        by = {s["name"]: {v for v in s["values"] if v is not None} for s in mine["series"]}
        assert by["container CPU %"] == {share}


def test_a_file_from_the_previous_schema_migrates_and_keeps_its_rows(tmp_path, clock):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.executescript(f"BEGIN; {_MIGRATIONS[0]}; PRAGMA user_version=1; COMMIT;")
        c.execute("INSERT INTO pod_stats (ts, pod, count) VALUES (?, 'old', 7)", (clock() - 5,))
        c.execute("INSERT INTO resources_1m (ts, pod, cpu_sum, cpu_n, ccpu_sum, ccpu_n) "
                  "VALUES (?, 'old', 10, 1, 150, 1)", (clock() - 3000,))
    store = Store(db, clock=clock)
    try:
        assert store.totals(clock() - 60, clock())["requests"] == 7
        assert store.current_rates() == {"old": pytest.approx(7 / 30, abs=1e-3)}    # no span: over `recent`
        store.prune(clock() + 7200)        # rolls into the migrated minute rows without NULL poisoning
        with sqlite3.connect(db) as c:
            assert c.execute("PRAGMA user_version").fetchone()[0] == len(_MIGRATIONS)
            assert c.execute("SELECT cshare_sum, cshare_n FROM resources_1m").fetchall() == [(0, 0)]
    finally:
        store.close()


async def test_a_scanner_through_the_real_pusher_is_one_row_and_real_endpoints_keep_their_names(tmp_path):
    """The sidecar's telemetry, capped at 5 names, sees 400 random 404 paths and five real endpoints:
    the dashboard lists the five by name and the scan as `(unmatched)`; nothing falls into `other`.
    The container's CPU arrives with what it is measured against."""
    dash = await asyncio.to_thread(Dashboard, tmp_path / "scan.db")
    tel = Telemetry(dashboard=dash.url, pod="web-scan", registry=CollectorRegistry(), max_endpoints=5, **FAST)
    await tel.start()
    try:
        real = ["/users/1", "/orders", "/health", "/cart/9", "/login"]
        for i in range(400):
            for ex in (exchange(f"/random-{10853 + i}/x", 404, 2), exchange(real[i % 5], 200, 5)):
                tel.hooks.on_request(ex)
                tel.hooks.on_complete(ex)

        def names() -> dict[str, int]:
            return {e["endpoint"]: e["hits"] for e in dash.client.get("/api/endpoints").json()}
        await wait_until(lambda: sum(names().values()) == 800, "every exchange on the dashboard")
        assert names() == {"(unmatched)": 400, "/users/{id}": 80, "/orders": 80, "/health": 80,
                           "/cart/{id}": 80, "/login": 80}

        def container() -> dict:
            pods = dash.client.get("/api/overview").json()["pods"]
            return (pods[0].get("container") or {}) if pods else {}
        await wait_until(lambda: container().get("cpu_capacity") is not None, "resources with a capacity")
        c = container()
        assert c["cpu_capacity"] in ("limit", "node") and c["cpu_capacity_cores"] > 0
    finally:
        await tel.close()
        await asyncio.to_thread(dash.stop)


def _fleet_equals_sum_of_pods(store: Store, since: float, until: float, step: float) -> None:
    pods = ["p0", "p1", "p2"]
    fleet = {(e["endpoint"], e["method"]): e["hits"] for e in store.endpoints(since, until, None, 500)}
    summed: dict = {}
    for p in pods:
        for e in store.endpoints(since, until, p, 500):
            summed[(e["endpoint"], e["method"])] = summed.get((e["endpoint"], e["method"]), 0) + e["hits"]
    assert fleet == summed
    assert store.totals(since, until)["requests"] == sum(store.totals(since, until, p)["requests"] for p in pods)
    for only in (None, "/e1"):
        whole = store.stats_series("rps", since, until, step, None, only)[0]["values"]
        parts = [store.stats_series("rps", since, until, step, p, only)[0]["values"] for p in pods]
        assert whole == pytest.approx([sum(v) for v in zip(*parts)], abs=1e-2)


def test_fleet_wide_buckets_answer_exactly_what_the_per_pod_rows_do(tmp_path, clock):
    """The fleet's reads come from 10-s buckets and the edges from per-push rows; whatever the window's
    alignment, before and after roll-ups, they add up to the per-pod answers. A file from before the
    buckets existed is filled from its rows when it is opened."""
    rng = random.Random(3)
    clock.t = 1_800_000_003.7
    db = tmp_path / "fleet.db"
    # Start on the previous schema, with rows, so the buckets' back-fill is checked too.
    with sqlite3.connect(db) as c:
        for i, script in enumerate(_MIGRATIONS[:2], start=1):
            c.executescript(f"BEGIN; {script}; PRAGMA user_version={i}; COMMIT;")
        for k in range(40):
            ts, pod = clock() - 400 + k * 9.7, f"p{k % 3}"
            for e in (f"/e{k % 4}", "/e1"):
                c.execute("INSERT INTO stats (ts, pod, endpoint, method, count) VALUES (?, ?, ?, 'GET', 3)", (ts, pod, e))
            c.execute("INSERT INTO pod_stats (ts, pod, count) VALUES (?, ?, 6)", (ts, pod))

    def push(store) -> None:
        pod = f"p{rng.randrange(3)}"
        eps = [endpoint(f"/e{rng.randrange(4)}", [1.0] * rng.randint(1, 9), method=rng.choice(["GET", "POST"]))
               for _ in range(rng.randint(1, 3))]
        store.add_stats(StatsPayload.model_validate(stats(pod, eps)))

    store = Store(db, clock=clock)
    try:
        _fleet_equals_sum_of_pods(store, math_floor(clock() - 600, 10), math_floor(clock(), 10), 10)
        for _ in range(600):
            clock.advance(rng.uniform(0.1, 6.0))
            push(store)
        now = clock()
        for since, until, step in [(now - 900, now, 10), (now - 903.3, now, 10), (now - 900, now - 7.5, 10),
                                   (math_floor(now - 300, 5), math_floor(now, 5), 5),
                                   (math_floor(now - 1800, 30), math_floor(now, 30), 30)]:
            _fleet_equals_sum_of_pods(store, since, until, step)
        whole = (store.totals(now - 3600, now), store.endpoints(now - 3600, now, None, 500))
        store.config = StoreConfig(raw_keep=60.0)  # a short raw_keep: most rows roll, in many 5-s slices
        store.prune(now + 30)
        store.prune(now + 30)                     # a second prune changes nothing
        assert (store.totals(now - 3600, now), store.endpoints(now - 3600, now, None, 500)) == whole
        assert store.counts()["stats_1m"] > 0 and store.counts()["ep_stats_1m"] > 0
        store.config = StoreConfig()
        store.prune(now + 1200)                   # everything older than 15 min rolls into minutes
        clock.advance(1200)
        now = clock()
        _fleet_equals_sum_of_pods(store, now - 3600, now, 60)
        _fleet_equals_sum_of_pods(store, math_floor(now - 3600, 60), math_floor(now, 60), 60)
    finally:
        store.close()


def math_floor(t: float, step: float) -> float:
    return (t // step) * step
