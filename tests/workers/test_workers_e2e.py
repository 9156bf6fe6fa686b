"""`decorator run --workers N` as real processes: every worker serves, one killed is restarted while
traffic continues, /metrics sums the workers, rules reach every worker once validated, SIGTERM
drains every worker. Servers on port 0 (the supervisor resolves it once), an app in a thread."""

from __future__ import annotations

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from decorator.workers.count import auto_workers
from tests.workers.pod import AppServer, Pod, Receiver, metric, metric_sum, wait_until

DURATION_COUNT = "http_server_request_duration_seconds_count"


@pytest.fixture
def app():
    a = AppServer()
    yield a
    a.close()


def _pods(request, tmp_path):
    started = []

    def start(*args, **kw):
        pod = Pod(tmp_path, *args, **kw)
        started.append(pod)
        return pod

    yield start
    for pod in started:
        pod.stop()


pods = pytest.fixture(_pods)


def test_two_workers_both_serve_and_the_metrics_sum_across_them(app, pods):
    pod = pods(2, app.port)
    assert len(pod.children()) == 2, "a supervisor with two worker processes"
    n = 120
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda _: pod.get("/things/1"), range(n)))
    assert results == [(200, b"app")] * n
    m = pod.metrics()
    per_worker = [metric(m, "decorator_worker_requests_total", worker=str(i)) for i in range(2)]
    assert all(k > 0 for k in per_worker), f"both workers got connections: {per_worker}"
    assert sum(per_worker) == n
    assert metric(m, "decorator_exchanges_total") == n
    assert metric(m, "decorator_connections_total") == n
    assert metric_sum(m, DURATION_COUNT) == n
    assert metric(m, "decorator_workers") == 2 and metric(m, "decorator_workers_ready") == 2
    status = pod.status()
    assert status["workers"]["count"] == 2 and status["workers"]["chosen"] == "--workers 2"
    assert [w["requests"] for w in status["workers"]["list"]] == per_worker
    assert pod.admin_get("/readyz") == (200, b"ready\n")
    assert pod.stop() == 0


def test_a_killed_worker_is_restarted_and_traffic_continues(app, pods):
    pod = pods(2, app.port)
    for _ in range(20):
        assert pod.get()[0] == 200
    before = pod.metrics()
    victim = pod.workers()[1]
    os.kill(victim["pid"], signal.SIGKILL)
    # Connections the kernel had queued on the dying socket are reset (docs/workers.md); once it
    # is closed, the other worker takes every new connection while worker 1 waits out its backoff.
    pod.wait_log(r"worker 1 \(pid \d+\) exited \(killed by SIGKILL\).*restarting in 0\.5s")
    for _ in range(30):
        assert pod.get() == (200, b"app")
    w = wait_until(lambda: (lambda ws: ws[1]["ready"] and ws[1]["pid"] != victim["pid"] and ws)(pod.workers()),
                   what="worker 1 back")
    assert w[1]["restarts"] == 1 and w[1]["last_exit"] == "killed by SIGKILL"
    assert w[0]["restarts"] == 0
    with ThreadPoolExecutor(8) as ex:
        assert set(ex.map(lambda _: pod.get(), range(60))) == {(200, b"app")}
    after = pod.metrics()
    assert metric(after, "decorator_worker_restarts_total", worker="1") == 1
    # What the dead process had counted stays counted: counters never go back.
    for name in ("decorator_exchanges_total", DURATION_COUNT):
        assert metric_sum(after, name) >= metric_sum(before, name) + 90
    assert metric(after, "decorator_worker_requests_total", worker="1") >= \
        metric(before, "decorator_worker_requests_total", worker="1")
    assert metric(after, "decorator_worker_requests_total", worker="1") > 0
    assert pod.stop() == 0


def test_sigterm_with_requests_in_flight_on_every_worker_loses_none(app, pods):
    pod = pods(2, app.port, "--drain-timeout", "20s")
    n = 24
    with ThreadPoolExecutor(n) as ex:
        futures = [ex.submit(pod.get, "/slow?ms=4000", 30) for _ in range(n)]
        wait_until(lambda: all((w["in_flight"] or 0) > 0 for w in pod.workers())
                   and sum(w["in_flight"] for w in pod.workers()) == n, what="requests in flight on every worker")
        pod.proc.send_signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    assert results == [(200, b"app")] * n
    assert pod.proc.wait(30) == 0
    log = pod.text()
    assert log.count("stopped after") == 3, log  # two workers and the supervisor
    assert "not clean" not in log


def test_auto_from_the_environment_is_logged_and_on_status(app, pods):
    n, why = auto_workers()  # this box's answer (2 on the 2-core VM; 1 runs one plain process)
    pod = pods(None, app.port, env={"WORKERS": "auto"})
    status = pod.status()
    assert status["workers"]["count"] == n and status["workers"]["chosen"] == why
    assert why in pod.text()
    assert len(pod.children()) == (n if n > 1 else 0)
    assert pod.get() == (200, b"app")
    assert pod.stop() == 0


def test_a_port_in_use_stops_the_start_with_one_line(app, pods, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AssertionError, match="cannot listen") as e:
            pods(2, app.port, "--port", str(port))
    assert "exited with 1" in str(e.value)


def test_workers_1_is_one_process_without_a_supervisor(app, pods):
    pod = pods(1, app.port)
    assert pod.children() == []
    assert pod.get() == (200, b"app")
    assert pod.status()["workers"] == {"count": 1, "chosen": "--workers 1"}
    assert "one process, no supervisor" in pod.text()
    assert pod.stop() == 0


def _rules(path, body: str | None = None, text: str | None = None) -> None:
    """Replace the rules file in one rename from outside its directory (as an editor or the kubelet
    does): one event for the watch."""
    tmp = path.parent.parent / (path.name + ".tmp")
    tmp.write_text(text or f"rules:\n  - name: hello\n    match: {{path: /hello}}\n    respond: {{body: {body}}}\n")
    tmp.rename(path)


def _all_workers_on(pod, digest: str) -> bool:
    return all(w["ready"] and w["rules"] == digest for w in pod.workers())


def test_a_reload_reaches_every_worker_and_a_bad_edit_is_refused_once(app, pods, tmp_path):
    rules = tmp_path / "rules" / "hello.yaml"
    rules.parent.mkdir()
    _rules(rules, "v1")
    # The watch alone: with a poll as well, a poll tick inside the watch's debounce builds the same
    # edit twice and a broken one is reported twice, by a single process too (decorator/reload.py).
    pod = pods(2, app.port, "--rules", str(rules.parent), "--reload-poll", "0")
    first = pod.status()["rules"]["active"]["digest"]
    assert _all_workers_on(pod, first)
    _rules(rules, "v2")
    pod.wait_log(r"rules reloaded \(watch\)")
    second = pod.status()["rules"]["active"]["digest"]
    assert second != first
    wait_until(lambda: _all_workers_on(pod, second), what="every worker on the new rules")
    with ThreadPoolExecutor(8) as ex:
        assert set(ex.map(lambda _: pod.get("/hello"), range(60))) == {(200, b"v2")}
    assert all(w["requests"] > 0 for w in pod.workers())

    _rules(rules, text="rules:\n  - name: hello\n    match: {path: /hello}\n    respnd: {}\n")
    pod.wait_log(r"rules reload \(watch\) rejected")
    time.sleep(2.0)  # later events or none: the broken file is reported once, by the supervisor only
    log = pod.text()
    assert log.count("rejected, keeping") == 1, log
    assert "[worker" not in "".join(line for line in log.splitlines() if "respnd" in line)
    m = pod.metrics()
    assert metric(m, "decorator_rule_reload_failures_total") == 1
    assert metric(m, "decorator_rule_reloads_total") == 1
    assert _all_workers_on(pod, second)
    with ThreadPoolExecutor(8) as ex:
        assert set(ex.map(lambda _: pod.get("/hello"), range(20))) == {(200, b"v2")}
    assert pod.stop() == 0


def test_sighup_reloads_once_in_the_supervisor_and_the_workers_survive_it(app, pods, tmp_path):
    rules = tmp_path / "r" / "hello.yaml"
    rules.parent.mkdir()
    _rules(rules, "v1")
    pod = pods(2, app.port, "--rules", str(rules), "--no-watch")
    pids = [w["pid"] for w in pod.workers()]
    _rules(rules, "v3")
    for pid in pids:  # as a SIGHUP to the whole process group would: the workers ignore it
        os.kill(pid, signal.SIGHUP)
    pod.proc.send_signal(signal.SIGHUP)
    pod.wait_log(r"rules reloaded \(SIGHUP\)")
    digest = pod.status()["rules"]["active"]["digest"]
    wait_until(lambda: _all_workers_on(pod, digest), what="every worker on the SIGHUP rules")
    assert [w["pid"] for w in pod.workers()] == pids
    assert pod.get("/hello") == (200, b"v3")
    assert pod.text().count("rules reloaded (SIGHUP)") == 1
    assert pod.stop() == 0


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_notify_cooldown_is_per_pod_one_event_for_an_incident_seen_by_every_worker(app, pods, tmp_path,
                                                                                  receiver):
    rules = tmp_path / "alert.yaml"
    rules.write_text("rules:\n  - name: page\n    match: {path: /alert}\n"
                     f"    notify: {{url: 'http://127.0.0.1:{receiver.port}/hook', cooldown: 60s}}\n")
    pod = pods(2, app.port, "--rules", str(rules))
    n = 60
    with ThreadPoolExecutor(8) as ex:
        assert set(ex.map(lambda _: pod.get("/alert"), range(n))) == {(200, b"app")}
    assert all(w["requests"] > 0 for w in pod.workers()), "the incident reached both workers"
    wait_until(lambda: receiver.bodies("/hook"), what="the notification")
    m = wait_until(lambda: (lambda m: metric(m, "decorator_notify_sent_total", rule="page") == 1 and m)(pod.metrics()),
                   what="notify_sent counted")
    assert metric(m, "decorator_notify_suppressed_total", rule="page") == n - 1
    assert metric(m, "decorator_rule_hits_total", rule="page") == n
    assert pod.stop() == 0  # the supervisor's runtime flushes on the way out: nothing else was queued
    assert len(receiver.bodies("/hook")) == 1
    event = receiver.bodies("/hook")[0]
    assert event["rule"] == "page" and event["request"]["path"] == "/alert"


def test_the_dashboard_gets_one_pod_with_every_worker_s_exchanges(app, pods, tmp_path, receiver):
    rules = tmp_path / "record.yaml"
    rules.write_text("rules:\n  - name: timing\n    record: {timing: true, status: true, size: true}\n")
    pod = pods(2, app.port, "--rules", str(rules), "--dashboard", f"http://127.0.0.1:{receiver.port}",
               env={"POD_NAME": "web-7"})
    n = 80
    with ThreadPoolExecutor(8) as ex:
        assert set(ex.map(lambda i: pod.get(f"/orders/{i}" if i % 2 else "/slow?ms=30"), range(n))) == {(200, b"app")}
    assert all(w["requests"] > 0 for w in pod.workers())
    assert pod.stop() == 0  # the last deltas are pushed on the way out
    stats = receiver.bodies("/stats")
    assert stats and {s["pod"] for s in stats} == {"web-7"}
    assert {r["pod"] for r in receiver.bodies("/resources")} == {"web-7"}
    eps: dict = {}
    for s in stats:
        for e in s["endpoints"]:
            have = eps.setdefault((e["method"], e["endpoint"]), {"count": 0, "2xx": 0, "buckets": [0] * 14})
            have["count"] += e["count"]
            have["2xx"] += e["status"]["2xx"]
            have["buckets"] = [a + b for a, b in zip(have["buckets"], e["latency_buckets"])]
    assert eps[("GET", "/orders/{id}")]["count"] == n // 2
    assert eps[("GET", "/slow")]["count"] == n // 2
    assert sum(e["2xx"] for e in eps.values()) == n
    assert all(sum(e["buckets"]) == e["count"] for e in eps.values())
    # Every /slow exchange took at least 30 ms: all of them in the 50 ms bucket or above, from both workers.
    assert sum(eps[("GET", "/slow")]["buckets"][:5]) == 0


def test_workers_drain_and_exit_when_the_supervisor_is_killed(app, pods):
    pod = pods(2, app.port)
    pids = [w["pid"] for w in pod.workers()]
    pod.proc.send_signal(signal.SIGKILL)
    pod.proc.wait(10)

    def gone(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        return state == "Z"  # exited; reparented to an init that has not reaped it yet

    wait_until(lambda: all(gone(p) for p in pids), what="no orphaned worker")
    assert "the supervisor is gone: draining and exiting" in pod.text()
