"""notify against real webhook receivers on loopback port 0: ok, down, slow, 500-then-200, 429 with
Retry-After. The hooks are driven directly; the request path never awaits (on_complete is a
plain call that only queues)."""

from __future__ import annotations

import asyncio

import pytest

from decorator.rules import Runtime
from decorator.rules.packtest import simulate
from tests.rules.helpers import Receiver, closed_port, hooks_for, make_ex


@pytest.fixture
async def receivers():
    made = []

    async def make(*script):
        r = await Receiver(script).start()
        made.append(r)
        return r
    yield make
    for r in made:
        await r.close()


def rules(url: str, extra: str = "", name: str = "page-on-5xx") -> str:
    return f"""
rules:
  - name: {name}
    match: {{status: 5xx}}
    notify:
      url: "{url}"
      retries: 3
      timeout: 0.3s
{extra}
"""


def make_runtime(**kw) -> tuple[Runtime, list[float]]:
    rt = Runtime(pod="web-1", backoff=0.01, **kw)
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(d):
        delays.append(d)
        await real_sleep(min(d, 0.05))  # the delay asked for is what is checked; keep the test fast
    rt.sleep = sleep
    return rt, delays


async def wait_for(pred, timeout=10.0):
    async def loop():
        while not pred():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(loop(), timeout)


async def test_event_shape_and_delivery(write, receivers):
    rcv = await receivers((200, {}))
    rt, _ = make_runtime()
    await rt.start()
    h, _ = hooks_for(write("r.yaml", rules(rcv.url, "      message: '{method} {path} gave {status}'")),
                     runtime=rt)
    out = simulate(h, "GET", "/orders/7", [], _upstream(503))
    assert out.status == 503
    await wait_for(lambda: rt.counters["notify_sent"].get("page-on-5xx") == 1)
    [ev] = rcv.events
    assert ev["event"] == "rule.matched" and ev["rule"] == "page-on-5xx" and ev["pod"] == "web-1"
    assert ev["request"] == {"method": "GET", "path": "/orders/7", "request_id": out.exchange.request_id}
    assert ev["response"] == {"status": 503} and ev["count"] == 1
    assert isinstance(ev["time"], float) and isinstance(ev["duration_ms"], float)
    assert ev["message"] == "GET /orders/7 gave 503"
    await rt.close()


def _upstream(status):
    from decorator.rules.models import FakeUpstream
    return FakeUpstream(status=status)


async def test_down_receiver_retries_with_backoff_then_counts_failed(write):
    rt, delays = make_runtime()
    await rt.start()
    h, _ = hooks_for(write("r.yaml", rules(f"http://127.0.0.1:{closed_port()}/x")), runtime=rt)
    assert h.on_complete(make_ex("/", status=500)) is None  # a plain call: nothing to await
    await wait_for(lambda: rt.counters["notify_failed"].get("page-on-5xx") == 1)
    assert delays == [0.01, 0.02, 0.04]
    await rt.close()


async def test_500_then_200_is_retried_and_sent(write, receivers):
    rcv = await receivers((500, {}), (200, {}))
    rt, delays = make_runtime()
    await rt.start()
    h, _ = hooks_for(write("r.yaml", rules(rcv.url)), runtime=rt)
    h.on_complete(make_ex("/", status=502))
    await wait_for(lambda: rt.counters["notify_sent"].get("page-on-5xx") == 1)
    assert rcv.attempts == 2 and len(rcv.events) == 1 and delays == [0.01]
    assert rt.counters["notify_failed"] == {}
    await rt.close()


async def test_429_retry_after_is_honoured_and_capped(write, receivers):
    rcv = await receivers((429, {"Retry-After": "2"}), (429, {"Retry-After": "86400"}), (200, {}))
    rt, delays = make_runtime(retry_after_max=30.0)
    await rt.start()
    h, _ = hooks_for(write("r.yaml", rules(rcv.url)), runtime=rt)
    h.on_complete(make_ex("/", status=500))
    await wait_for(lambda: rt.counters["notify_sent"].get("page-on-5xx") == 1)
    assert delays == [2.0, 30.0] and rcv.attempts == 3
    await rt.close()


async def test_4xx_other_than_429_is_not_retried(write, receivers):
    rcv = await receivers((403, {}))
    rt, delays = make_runtime()
    await rt.start()
    h, _ = hooks_for(write("r.yaml", rules(rcv.url)), runtime=rt)
    h.on_complete(make_ex("/", status=500))
    await wait_for(lambda: rt.counters["notify_failed"].get("page-on-5xx") == 1)
    assert rcv.attempts == 1 and delays == []
    await rt.close()


async def test_slow_receiver_never_holds_the_request_path_and_drops_are_counted(write, receivers):
    slow = await receivers((None, {}))
    ok = await receivers((200, {}))
    rt, _ = make_runtime(queue_size=5, concurrency=2)
    await rt.start()
    h, _ = hooks_for(write("r.yaml", rules(slow.url, name="slow") + f"""
  - name: fine
    match: {{status: 5xx}}
    notify: {{url: "{ok.url}", retries: 0}}
""".replace("rules:\n", "")), runtime=rt)
    # First event to each receiver; let the sender pick them up (the slow one now holds a slot).
    h.on_complete(make_ex("/", status=500))
    await wait_for(lambda: slow.attempts == 1 and len(ok.events) == 1)
    # A burst while the slow receiver sits on its connection: every call returns at once and
    # only queues; with the queue bounded at 5, the rest are dropped and counted.
    for _ in range(10):
        assert h.on_complete(make_ex("/", status=500)) is None
    dropped = sum(rt.counters["notify_dropped"].values())
    assert dropped == 20 - 5
    await rt.close(timeout=0.5)
    total = 22
    accounted = sum(sum(rt.counters[c].values()) for c in ("notify_sent", "notify_failed", "notify_dropped"))
    assert accounted == total  # never silent: every event is sent, failed or dropped
    assert rt.counters["notify_sent"]["fine"] >= 1


async def test_cooldown_collapses_and_counts(write):
    now = [1000.0]
    rt = Runtime(clock=lambda: now[0])
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: p
            match: {status: 5xx}
            notify: {url: "http://127.0.0.1:9/", cooldown: 60s}
        """), runtime=rt)
    for _ in range(4):
        h.on_complete(make_ex("/", status=500))
    assert rt._queue.qsize() == 1 and rt.counters["notify_suppressed"] == {"p": 3}
    now[0] += 61
    h.on_complete(make_ex("/", status=500))
    events = [rt._queue.get_nowait()[1] for _ in range(2)]
    assert [e["count"] for e in events] == [1, 4] and events[1]["window_s"] == 60.0


async def test_threshold_and_dedupe_key(write):
    now = [0.0]
    rt = Runtime(clock=lambda: now[0])
    h, _ = hooks_for(write("r.yaml", """
        rules:
          - name: p
            match: {status: 5xx}
            notify: {url: "http://127.0.0.1:9/", threshold: 3 in 10s, key: "{path}"}
        """), runtime=rt)
    for path in ["/a", "/a", "/b", "/b"]:
        h.on_complete(make_ex(path, status=500))
        now[0] += 1
    assert rt._queue.qsize() == 0  # two per key: below the threshold
    now[0] += 20
    h.on_complete(make_ex("/a", status=500))  # the old /a matches fell out of the window
    assert rt._queue.qsize() == 0
    h.on_complete(make_ex("/b", status=500))
    h.on_complete(make_ex("/b", status=500))
    assert rt._queue.qsize() == 0  # /b: 2 old ones are out of the window too
    h.on_complete(make_ex("/b", status=500))
    assert rt._queue.qsize() == 1
    ev = rt._queue.get_nowait()[1]
    assert ev["count"] == 3 and ev["window_s"] == 10.0 and ev["request"]["path"] == "/b"
    assert rt.counters["notify_suppressed"] == {"p": 7}  # every match held back below the threshold


async def test_close_counts_what_was_never_sent(write):
    rt = Runtime()
    h, _ = hooks_for(write("r.yaml", rules("http://127.0.0.1:9/x")), runtime=rt)
    h.on_complete(make_ex("/", status=500))
    await rt.close()  # never started: nothing was sent, and that is counted
    assert rt.counters["notify_dropped"] == {"page-on-5xx": 1}


async def test_cooldown_survives_a_reload_of_the_same_rule(write):
    from decorator.rules import compile_rules, load_rules
    now = [0.0]
    rt = Runtime(clock=lambda: now[0])
    p = write("r.yaml", rules("http://127.0.0.1:9/x", "      cooldown: 60s"))
    h, _ = hooks_for(p, runtime=rt)
    h.on_complete(make_ex("/", status=500))
    h2 = compile_rules(load_rules([p]), rt)  # a reload: same rule, same notify config
    h2.on_complete(make_ex("/", status=500))
    assert rt._queue.qsize() == 1 and rt.counters["notify_suppressed"] == {"page-on-5xx": 1}
