"""The shared delivery client (decorator.delivery): against real HTTP receivers on 127.0.0.1 port 0 for
the poster, and with a recording sender for queueing, batching, retries, backoff and drops."""

from __future__ import annotations

import asyncio

import pytest

from decorator.delivery import OK, REJECT, RETRY, Delivery, Poster, Result, retry_after
from tests.support import free_port
from tests.telemetry.helpers import Receiver, wait_until


class Script:
    """A sender that answers from a script of Results (then OK) and records every batch it got."""

    def __init__(self, *answers: Result) -> None:
        self.answers = list(answers)
        self.batches: list[list] = []

    async def __call__(self, batch: list) -> Result:
        self.batches.append(list(batch))
        return self.answers.pop(0) if self.answers else Result(OK)


def recording(d: Delivery) -> list[float]:
    delays: list[float] = []

    async def sleep(s: float) -> None:
        delays.append(round(s, 3))
        await asyncio.sleep(0)
    d.sleep = sleep
    return delays


async def test_batches_fill_up_or_leave_after_the_linger():
    send = Script()
    d = Delivery("t", send, batch=3, linger=0.05)
    await d.start()
    for i in range(7):
        d.submit(i)
    await wait_until(lambda: sum(map(len, send.batches)) == 7, what="all items sent")
    await d.close()
    assert send.batches == [[0, 1, 2], [3, 4, 5], [6]]
    assert (d.sent, d.failed, d.dropped) == (3, 0, 0)


async def test_full_queue_drops_the_new_item_or_the_oldest_and_counts():
    settled: list[tuple[list, str]] = []
    d = Delivery("t", Script(), queue_size=3, on_settled=lambda items, how: settled.append((items, how)))
    assert all(d.submit(i) for i in range(3)) and not d.submit(3) and not d.submit(4)
    assert list(d.queue) == [0, 1, 2] and d.dropped == 2 and settled == [([3], "dropped"), ([4], "dropped")]
    old = Delivery("t", Script(), queue_size=3, drop_oldest=True)
    for i in range(5):
        old.submit(i)
    assert list(old.queue) == [2, 3, 4] and old.dropped == 2


async def test_retries_back_off_exponentially_then_give_up():
    settled: list[str] = []
    send = Script(*[Result(RETRY, "down")] * 10)
    d = Delivery("t", send, retries=3, backoff=0.5, backoff_max=1.5, shared_backoff=False,
                 on_settled=lambda items, how: settled.append(how))
    delays = recording(d)
    await d.start()
    d.submit("x")
    await wait_until(lambda: settled, what="the item settled")
    await d.close()
    assert delays == [0.5, 1.0, 1.5] and len(send.batches) == 4 and settled == ["failed"]
    assert (d.failed, d.retried, d.dropped) == (4, 3, 1)


async def test_retry_after_wins_over_the_backoff_and_reject_is_final():
    send = Script(Result(RETRY, "busy", 7.0), Result(REJECT, "bad"))
    settled: list[str] = []
    d = Delivery("t", send, retries=5, shared_backoff=False, on_settled=lambda items, how: settled.append(how))
    delays = recording(d)
    await d.start()
    d.submit("x")
    await wait_until(lambda: settled, what="the item settled")
    await d.close()
    assert delays == [7.0] and settled == ["failed"] and len(send.batches) == 2


async def test_hold_keeps_the_batch_at_the_head_until_accepted_and_the_bound_covers_it():
    send = Script(Result(RETRY, "down"), Result(RETRY, "down"))
    d = Delivery("t", send, queue_size=2, hold=True, drop_oldest=True, retries=None, backoff=0.01, backoff_max=0.02)
    await d.start()
    d.submit("a")
    await wait_until(lambda: d.failed == 1, what="a first failure")
    assert list(d.queue) == ["a"]                       # still held while the receiver is away
    d.submit("b")
    d.submit("c")                                        # full: "a", the oldest, is dropped
    await wait_until(lambda: not d.queue, what="the queue drained")
    await d.close()
    assert d.dropped == 1 and ["b"] in send.batches and ["c"] in send.batches and d.failures == 0


async def test_shared_backoff_leaves_the_receiver_alone_while_a_retry_waits():
    d = Delivery("t", Script(Result(RETRY, "down")), backoff=30.0)
    assert d.ready()
    assert (await d.attempt(["x"])).outcome == RETRY
    assert not d.ready() and d.last_error == "down" and d.failures == 1


async def test_close_gives_each_item_one_try_and_counts_the_rest():
    send = Script(Result(RETRY, "down"))
    settled: list[str] = []
    d = Delivery("t", send, retries=5, on_settled=lambda items, how: settled.extend([how] * len(items)))
    await d.start()
    d.submit("a")
    d.submit("b")
    await d.close(timeout=1.0)                           # no retry at close: "a" fails once, "b" goes
    assert send.batches == [["a"], ["b"]] and settled == ["failed", "sent"]
    never = Delivery("t", send, on_settled=lambda items, how: settled.extend([how] * len(items)))
    never.submit("y")
    await never.close()                                  # never started: nothing tried, counted as dropped
    assert settled[2:] == ["dropped"] and never.dropped == 1 and len(send.batches) == 2


async def test_a_sender_that_raises_is_a_failed_attempt_not_a_dead_worker():
    calls = 0

    async def flaky(batch: list) -> Result:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")
        return Result(OK)
    d = Delivery("t", flaky, retries=2, backoff=0.0, shared_backoff=False)
    await d.start()
    d.submit(1)
    await wait_until(lambda: d.sent == 1, what="the retry after the exception")
    d.submit(2)
    await wait_until(lambda: d.sent == 2, what="the next item")
    await d.close()
    assert d.failed == 1 and calls == 3


def test_retry_after_parses_seconds_and_dates_and_caps():
    assert retry_after("3", 60) == 3.0 and retry_after("86400", 60) == 60.0 and retry_after("soon", 60) is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 60) == 0.0 and retry_after(None, 60) is None


@pytest.mark.parametrize("status, outcome", [(200, OK), (204, OK), (503, RETRY), (429, RETRY), (408, RETRY),
                                             (400, REJECT), (401, REJECT)])
async def test_poster_classifies_real_answers(status, outcome):
    r = await Receiver(status=status).start()
    p = Poster({"Content-Type": "application/json"})
    try:
        got = await p.post(r.url + "/x", b"{}", [("X-Key", "k")], timeout=2.0)
    finally:
        await p.close()
        await r.stop()
    assert got.outcome == outcome and r.posts[0].headers["x-key"] == "k"
    assert (f"HTTP {status}" in got.reason) == (outcome != OK)


async def test_poster_down_and_black_hole_are_retries_bounded_by_the_timeout():
    p = Poster()
    hold = asyncio.Event()
    hole = await Receiver(hold=hold).start()   # reads the post, never answers
    try:
        down = await p.post(f"http://127.0.0.1:{free_port()}/x", b"", timeout=2.0)
        stuck = await p.post(hole.url + "/x", b"{}", timeout=0.2)
    finally:
        hold.set()
        await p.close()
        await hole.stop()
    assert down.outcome == RETRY and "Connect" in down.reason
    assert stuck.outcome == RETRY and "no answer within 0.2s" in stuck.reason


async def test_warnings_are_throttled_per_label(caplog):
    send = Script(*[Result(REJECT, "HTTP 403")] * 4)
    d = Delivery("notify", send, shared_backoff=False, label=lambda batch: f"notify {batch[0]}")
    await d.start()
    with caplog.at_level("WARNING", logger="decorator.delivery"):
        for item in ("a", "a", "b", "a"):
            d.submit(item)
        await wait_until(lambda: len(send.batches) == 4, what="four rejections")
    await d.close()
    giving_up = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert giving_up == ["notify a: giving up on 1 item(s) after 1 attempt(s) (HTTP 403)",
                         "notify b: giving up on 1 item(s) after 1 attempt(s) (HTTP 403)"]
    assert d.dropped == 4
