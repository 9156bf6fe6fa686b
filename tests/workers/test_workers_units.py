"""The sans-IO parts of workers: `--workers N|auto` (cgroup trees on disk), settings, and the sums
that make one pod's metrics and dashboard deltas out of several workers' snapshots."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from decorator.proxy.hooks import Exchange

from decorator.errors import UsageError
from decorator.settings import from_args
from decorator.telemetry.aggregate import Aggregator
from decorator.telemetry.merge import PodMetrics, PodStats, add_metrics, export_metrics
from decorator.telemetry.metrics import Metrics
from decorator.workers.count import MAX_AUTO, auto_workers, parse_workers

DATA = Path(__file__).resolve().parents[1] / "telemetry" / "data"


@pytest.mark.parametrize(("tree", "n", "why"), [
    ("v2", 1, "cgroup CPU limit 0.5 cores"),            # cpu.max 50000 100000: rounded up, never 0
    ("v2-namespaced", 2, "cgroup CPU limit 1.5 cores"),  # 150000 100000
    ("v1", 2, "cgroup CPU limit 1.5 cores"),             # cfs_quota_us 150000 / cfs_period_us 100000
    ("v2-unlimited", 4, "no cgroup CPU limit, 4 CPUs allowed"),  # cpu.max "max 100000"
    ("v1-unlimited", 4, "no cgroup CPU limit, 4 CPUs allowed"),  # quota -1
    ("absent", 4, "no cgroup CPU limit, 4 CPUs allowed"),
])
def test_auto_takes_the_cgroup_quota_rounded_up_else_the_cpus_allowed(tree, n, why):
    assert auto_workers(str(DATA / tree), affinity=4) == (n, "auto: " + why)


def _v2(tmp_path: Path, cpu_max: str) -> str:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/\n")
    cg = tmp_path / "sys/fs/cgroup"
    cg.mkdir(parents=True)
    (cg / "cgroup.controllers").write_text("cpu memory\n")
    (cg / "cpu.stat").write_text("usage_usec 1\n")
    (cg / "cpu.max").write_text(cpu_max + "\n")
    return str(tmp_path)


def test_auto_never_exceeds_the_cpus_allowed_nor_the_cap(tmp_path):
    assert auto_workers(_v2(tmp_path / "a", "400000 100000"), affinity=2) == (
        2, "auto: cgroup CPU limit 4 cores, 2 CPUs allowed")
    n, why = auto_workers(_v2(tmp_path / "b", "1200000 100000"), affinity=32)
    assert n == MAX_AUTO and why.endswith(f"capped at {MAX_AUTO}")
    assert auto_workers(str(DATA / "absent"), affinity=64)[0] == MAX_AUTO


@pytest.mark.parametrize("text", ["0", "-1", "two", "65", "1.5", ""])
def test_a_bad_worker_count_is_a_usage_error_naming_its_source(text):
    with pytest.raises(UsageError, match="WORKERS: expected"):
        parse_workers(text, "WORKERS")


def _args(**kw) -> argparse.Namespace:
    from decorator.cli import build_parser
    argv = ["run"] + [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", v)]
    return build_parser().parse_args(argv)


def test_settings_take_workers_from_the_flag_then_the_env_default_one():
    assert (from_args(_args(), env={}).workers, from_args(_args(), env={}).workers_reason) == (1, "default 1")
    s = from_args(_args(), env={"WORKERS": "3"})
    assert (s.workers, s.workers_reason) == (3, "WORKERS 3")
    s = from_args(_args(workers="2"), env={"WORKERS": "3"})
    assert (s.workers, s.workers_reason) == (2, "--workers 2")
    assert from_args(_args(workers="auto"), env={}).workers_reason.startswith("auto: ")
    with pytest.raises(UsageError, match="--workers"):
        from_args(_args(workers="many"), env={})


def _Ex(path: str, status: int, seconds: float) -> Exchange:
    """A finished exchange as the observer and the aggregator read it (a real Exchange: the compiled
    telemetry modules take nothing else)."""
    ex = Exchange("GET", path, "1.1", [], "127.0.0.1")
    ex.status = status
    ex.t_start, ex.t_response, ex.t_end = 100.0, 100.0, 100.0 + seconds
    ex.bytes_in, ex.bytes_out = 10, 20
    return ex


def _worker(latencies: list[float], path: str = "/a", requests: int = 0) -> tuple[Metrics, Aggregator]:
    agg = Aggregator()
    m = Metrics(endpoints=agg.endpoints, process=False, in_flight=lambda: 2)
    m.add_source(lambda: {"exchanges": requests, "in_flight": 2, "rule_hits": {"r": requests}})
    for s in latencies:
        ex = _Ex(path, 200, s)
        m.observe(ex)
        agg.record(ex)
    return m, agg


def test_metrics_sum_series_and_counters_and_an_exited_worker_keeps_its_counts_not_its_gauges():
    a, _ = _worker([0.001, 0.2], requests=2)
    b, _ = _worker([0.03], requests=1)
    live = add_metrics(add_metrics({}, export_metrics(a)), export_metrics(b))
    key = ("GET", "/a", "2xx")
    buckets, total, count = live["series"][key]
    assert count == 3 and total == pytest.approx(0.231) and sum(buckets) == 3
    assert live["counters"]["exchanges"] == 3 and live["counters"]["rule_hits"] == {"r": 3}
    assert live["in_flight"] == 4 and live["counters"]["in_flight"] == 4
    retired = add_metrics({}, export_metrics(b), gauges=False)
    assert "in_flight" not in retired["counters"] and retired.get("in_flight", 0) == 0
    assert retired["counters"]["exchanges"] == 1

    pod = PodMetrics()
    pod.add_source(lambda: {"rule_hits": {"r": 10}, "workers": 2})
    pod.show(live)
    body = pod.render()[0].decode()
    assert 'decorator_rule_hits_total{rule="r"} 13.0' in body  # workers' 3 plus the supervisor's 10
    assert "decorator_exchanges_total 3.0" in body
    assert "decorator_workers 2.0" in body
    assert 'http_server_request_duration_seconds_count{http_request_method="GET",' \
           'http_response_status_class="2xx",http_route="/a"} 3.0' in body


def test_pod_stats_add_histograms_bucket_by_bucket_so_percentiles_are_the_pod_s():
    _, a = _worker([0.0005] * 9 + [0.4])
    _, b = _worker([0.4] * 10)
    pod = PodStats()
    pod.add(a.snapshot_delta("w0"))
    pod.add(b.snapshot_delta("w1"))
    pod.add(None)
    d = pod.snapshot_delta("web-1")
    assert d["pod"] == "web-1" and len(d["endpoints"]) == 1
    ep = d["endpoints"][0]
    assert ep["count"] == 20 and ep["status"]["2xx"] == 20 and ep["bytes_out"] == 400
    # 9 fast, 11 slow: the pod's median is slow; averaging the workers' medians (0.5 ms, 400 ms) is not.
    assert ep["latency_buckets"][0] == 9 and ep["latency_buckets"][8] == 11
    assert ep["latency_ms_sum"] == pytest.approx(9 * 0.5 + 11 * 400, abs=0.01)
    assert pod.snapshot_delta("web-1") is None  # taken once
