"""The pusher against a real HTTP receiver on 127.0.0.1: payloads, auth, outages, slowness, rejections."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from decorator.telemetry import Aggregator, Metrics, Pusher, Resources
from decorator.wire.models import ResourcesPayload, StatsPayload
from tests.telemetry.helpers import Receiver, make_ex, wait_until
from tests.support import free_port

DATA = Path(__file__).parent / "data"
FAST = {"interval_resources": 0.05, "interval_stats": 0.1, "timeout": 1.0, "backoff_base": 0.02,
        "backoff_max": 0.1}


def received_counts(posts) -> dict:
    out: dict = {}
    for p in posts:
        for e in p.data["endpoints"]:
            out[e["endpoint"]] = out.get(e["endpoint"], 0) + e["count"]
    return out


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


async def test_resources_every_interval_and_stats_only_when_new(receiver):
    agg = Aggregator()
    pusher = Pusher(receiver.url + "/", "s3cret", "web-1", agg, Resources(DATA / "v2", pod="web-1"), **FAST)
    for ms in (3, 30, 300):
        agg.record(make_ex("/users/1", ms=ms, bytes_out=10))
    await pusher.start()
    try:
        await wait_until(lambda: receiver.on("/stats") and len(receiver.on("/resources")) >= 3, what="posts")
        for p in receiver.posts:
            assert p.method == "POST"
            assert p.headers["authorization"] == "Bearer s3cret"
            assert p.headers["content-encoding"] == "gzip"
            assert p.headers["content-type"] == "application/json"
        for p in receiver.on("/resources"):
            res = ResourcesPayload.model_validate(p.data)
            assert res.pod == "web-1" and res.container.cpu_limit_cores == 0.5
        (first,) = receiver.on("/stats")
        stats = StatsPayload.model_validate(first.data)
        assert stats.pod == "web-1"
        assert received_counts([first]) == {"/users/{id}": 3}
        assert sum(stats.endpoints[0].latency_buckets) == 3

        # Several stats intervals pass (counted in resources posts): nothing new, nothing sent.
        seen = len(receiver.on("/resources"))
        await wait_until(lambda: len(receiver.on("/resources")) >= seen + 8, what="more resources")
        assert len(receiver.on("/stats")) == 1

        agg.record(make_ex("/other", status=503, request_id="rid-1"))
        await wait_until(lambda: len(receiver.on("/stats")) == 2, what="second stats")
        second = receiver.on("/stats")[1].data
        assert received_counts([receiver.on("/stats")[1]]) == {"/other": 1}
        assert [s["request_id"] for s in second["samples"]] == ["rid-1"]
        assert pusher.failed == 0 and pusher.sent >= len(receiver.posts) - 1   # one may be in flight
    finally:
        await pusher.close()


async def test_no_token_no_authorization_header(receiver):
    pusher = Pusher(receiver.url, None, "p", None, Resources(DATA / "absent", pod="p"), **FAST)
    await pusher.start()
    try:
        await wait_until(lambda: receiver.on("/resources"), what="resources")
        assert "authorization" not in receiver.posts[0].headers
    finally:
        await pusher.close()


async def test_dashboard_down_then_up_buffer_is_bounded_and_data_resumes():
    port = free_port()      # nothing listens here yet: connections are refused
    agg = Aggregator()
    pusher = Pusher(f"http://127.0.0.1:{port}", "t", "p", agg, Resources(DATA / "v1", pod="p"),
                    **{**FAST, "interval_stats": 0.03}, max_buffer=3)
    recorded = 0

    async def traffic():
        nonlocal recorded
        while True:
            agg.record(make_ex(f"/t/{recorded}"))
            recorded += 1
            await asyncio.sleep(0.005)

    max_seen = 0

    def dropped_some():
        nonlocal max_seen
        max_seen = max(max_seen, len(pusher.buffer))
        return pusher.dropped >= 3 and pusher.failed >= 3

    await pusher.start()
    load = asyncio.create_task(traffic())
    receiver = Receiver()
    try:
        await wait_until(dropped_some, what="drops while the dashboard is down")
        assert max_seen <= 3 and len(pusher.buffer) <= 3
        assert all(not t.done() for t in pusher._tasks)           # no exception ended a loop

        m = Metrics(process=False)
        m.add_source(lambda: pusher.counters)
        fams = {f.name: f for f in text_string_to_metric_families(m.render()[0].decode())}
        assert fams["decorator_push_dropped"].samples[0].value >= 3
        assert fams["decorator_push_failed"].samples[0].value >= 3

        await receiver.start(port)
        await wait_until(lambda: receiver.on("/resources") and receiver.on("/stats"), what="data resuming")
        load.cancel()
        agg.record(make_ex("/marker"))
        await wait_until(lambda: "/marker" in received_counts(receiver.on("/stats")), what="marker")
        # Everything not dropped arrived, once: the counts add up to what was recorded minus drops.
        got = received_counts(receiver.on("/stats"))
        assert got["/marker"] == 1
        assert 0 < got["/t/{id}"] < recorded
        await wait_until(lambda: not pusher.buffer, what="the buffer drained")
        assert pusher.failures == 0
    finally:
        load.cancel()
        await pusher.close()
        await receiver.stop()


async def test_slow_dashboard_never_blocks_record():
    hold = asyncio.Event()
    receiver = await Receiver(hold=hold).start()
    agg = Aggregator()
    pusher = Pusher(receiver.url, None, "p", agg, None, **{**FAST, "timeout": 60.0})
    recorded = 0

    async def traffic():
        nonlocal recorded
        while True:
            agg.record(make_ex("/busy"))
            recorded += 1
            await asyncio.sleep(0)

    agg.record(make_ex("/first"))
    await pusher.start()
    load = asyncio.create_task(traffic())
    try:
        await wait_until(lambda: receiver.waiting == 1, what="a stats post held by the receiver")
        before = recorded
        await wait_until(lambda: recorded >= before + 500, what="records while the push is stuck")
        assert receiver.waiting == 1 and len(receiver.on("/stats")) == 1   # still stuck, nothing else sent
        assert agg.totals()["requests"] == recorded + 1
        load.cancel()
        hold.set()
        await wait_until(lambda: received_counts(receiver.on("/stats")).get("/busy") == recorded,
                         what="the backlog delivered after the dashboard answers")
        assert received_counts(receiver.on("/stats"))["/first"] == 1
    finally:
        load.cancel()
        hold.set()
        await pusher.close()
        await receiver.stop()


async def test_timeout_keeps_the_batch_for_the_next_try():
    hold = asyncio.Event()
    receiver = await Receiver(hold=hold).start()
    agg = Aggregator()
    pusher = Pusher(receiver.url, None, "p", agg, None, **{**FAST, "timeout": 0.2})
    agg.record(make_ex("/a"))
    await pusher.start()
    try:
        await wait_until(lambda: pusher.failed >= 1, what="a timed-out post")
        assert pusher.dropped == 0 and len(pusher.buffer) == 1
        assert "no answer" in pusher.last_error
        hold.set()
        await wait_until(lambda: not pusher.buffer and pusher.sent >= 1, what="the retry")
        assert all(p.data["endpoints"][0]["endpoint"] == "/a" for p in receiver.on("/stats"))
    finally:
        hold.set()
        await pusher.close()
        await receiver.stop()


@pytest.mark.parametrize("status, kept", [(503, True), (429, True), (422, False), (401, False)])
async def test_error_answers_retry_or_drop(receiver, status, kept):
    receiver.status = status
    agg = Aggregator()
    pusher = Pusher(receiver.url, None, "p", agg, None, **FAST)
    agg.record(make_ex("/a"))
    await pusher.start()
    try:
        await wait_until(lambda: pusher.failed >= 2 if kept else pusher.dropped == 1, what="answers")
        assert len(pusher.buffer) == (1 if kept else 0)
        assert pusher.sent == 0 and f"HTTP {status}" in pusher.last_error
        if not kept:
            # a rejected batch is not sent again
            agg.record(make_ex("/b"))
            await wait_until(lambda: len(receiver.on("/stats")) == 2, what="the next batch")
            assert received_counts(receiver.on("/stats")[1:]) == {"/b": 1}
        receiver.status = 200
        agg.record(make_ex("/c"))
        await wait_until(lambda: not pusher.buffer and pusher.sent >= (2 if kept else 1), what="recovery")
        last = [received_counts([p]) for p in receiver.on("/stats")[-2:]]
        assert last == ([{"/a": 1}, {"/c": 1}] if kept else [{"/b": 1}, {"/c": 1}])
    finally:
        await pusher.close()


async def test_close_flushes_pending_stats(receiver):
    agg = Aggregator()
    pusher = Pusher(receiver.url, None, "p", agg, None, interval_stats=3600.0, timeout=1.0)
    await pusher.start()
    agg.record(make_ex("/late"))
    await asyncio.sleep(0)          # the loop task runs its first step: it waits an interval first
    await pusher.close()
    assert received_counts(receiver.on("/stats")) == {"/late": 1}


async def test_close_with_dashboard_down_is_bounded_by_the_timeout():
    agg = Aggregator()
    pusher = Pusher(f"http://127.0.0.1:{free_port()}", None, "p", agg, None, interval_stats=3600.0,
                    timeout=0.5)
    await pusher.start()
    agg.record(make_ex("/x"))
    await pusher.close()
    assert pusher.failed == 1 and len(pusher.buffer) == 1


async def test_telemetry_bundle_end_to_end(receiver):
    from prometheus_client import CollectorRegistry

    from decorator.proxy.hooks import chain
    from decorator.telemetry import Telemetry

    tel = Telemetry(dashboard=receiver.url, token="tok", pod="web-9", registry=CollectorRegistry(), **FAST)
    tel.add_source(lambda: {"rule_hits": {"r1": 1}})
    hooks = chain(tel.hooks, None)
    await tel.start()
    try:
        for i in range(5):
            ex = make_ex(f"/items/{i}", status=200 if i else 502)
            hooks.on_request(ex)
            hooks.on_complete(ex)
        await wait_until(lambda: received_counts(receiver.on("/stats")).get("/items/{id}") == 5, what="stats")
        await wait_until(lambda: receiver.on("/resources"), what="resources")
        assert receiver.on("/resources")[0].data["pod"] == "web-9"
        assert receiver.on("/stats")[0].headers["authorization"] == "Bearer tok"
        await wait_until(lambda: tel.pusher.sent >= 2, what="answers processed")
        st = tel.status()
        assert st["aggregator"]["requests"] == 5 and st["aggregator"]["errors"] == 1
        assert st["push"]["push_sent"] >= 1 and st["metrics"]["in_flight"] == 0
        fams = {f.name: f for f in text_string_to_metric_families(tel.metrics.render()[0].decode())}
        assert fams["decorator_push_sent"].samples[0].value >= 1
        assert fams["decorator_rule_hits"].samples[0].labels == {"rule": "r1"}
    finally:
        await tel.close()
    assert Telemetry(pod="x", registry=CollectorRegistry()).pusher is None
