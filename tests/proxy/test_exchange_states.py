"""The exchange's state machine: the table of legal moves, and the states real exchanges end in."""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct

import pytest

from decorator.proxy import exchange as X
from decorator.proxy.hooks import Exchange, Hooks, Reply
from tests.proxy.conftest import open_client, read_response, roundtrip

# Written out by hand, apart from the table in exchange.py: a change to either shows here.
LEGAL = {
    (0, X.REQ_BODY, X.REQ_DONE),
    *((1, X.UP_NONE, s) for s in (X.UP_CONNECTING, X.UP_WAITING, X.UP_DONE)),
    *((1, X.UP_CONNECTING, s) for s in (X.UP_WAITING, X.UP_DONE)),
    *((1, X.UP_WAITING, s) for s in (X.UP_CONNECTING, X.UP_WAITING, X.UP_BODY, X.UP_DISCARD, X.UP_TUNNEL,
                                     X.UP_DONE)),
    (1, X.UP_BODY, X.UP_DISCARD), (1, X.UP_BODY, X.UP_DONE),
    (1, X.UP_DISCARD, X.UP_DONE), (1, X.UP_TUNNEL, X.UP_DONE),
    (1, X.UP_DONE, X.UP_CONNECTING),  # a response hook's Retry after the sidecar's own 502/504
    *((2, X.RESP_NONE, s) for s in (X.RESP_APP, X.RESP_REPLY, X.RESP_TUNNEL, X.RESP_ABORTED)),
    *((2, s, t) for s in (X.RESP_APP, X.RESP_REPLY, X.RESP_TUNNEL) for t in (X.RESP_DONE, X.RESP_ABORTED)),
}


def test_every_move_outside_the_table_raises_and_every_move_in_it_does_not():
    checked = 0
    for side, names in enumerate(X.STATE_NAMES):
        for a, b in itertools.product(range(len(names)), repeat=2):
            checked += 1
            if (side, a, b) in LEGAL:
                X.check_move(side, a, b)
            else:
                with pytest.raises(X.ExchangeStateError, match=f"{names[a]} -> {names[b]}"):
                    X.check_move(side, a, b)
    assert checked == 2 * 2 + 7 * 7 + 6 * 6


def test_terminal_states_have_no_way_out():
    for side, state in ((0, X.REQ_DONE), (2, X.RESP_DONE), (2, X.RESP_ABORTED)):
        assert X.MOVES[side][state] == 0
    # The app's side is done unless a response hook asks for the request again (Retry).
    assert X.MOVES[1][X.UP_DONE] == 1 << X.UP_CONNECTING


class Ends(Hooks):
    """Records the (request, upstream, response) states each exchange ended in."""

    def __init__(self, reply_on: str | None = None) -> None:
        self.ends: list[tuple[str, str, str]] = []
        self.reply_on = reply_on

    def on_request(self, ex: Exchange):
        return Reply(503, body=b"no") if ex.path == self.reply_on else None

    def on_complete(self, ex: Exchange) -> None:
        self.ends.append(ex.state_names())


async def test_exchanges_end_in_terminal_states(upstream, make_proxy):
    hooks = Ends(reply_on="/answered")
    px = await make_proxy(upstream.port, hooks=hooks)
    assert (await roundtrip(px.port, b"GET /app HTTP/1.1\r\nHost: a\r\n\r\n")).status == 200
    assert (await roundtrip(px.port, b"GET /answered HTTP/1.1\r\nHost: a\r\n\r\n")).status == 503
    r = await roundtrip(px.port, b"POST /app HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    assert r.status == 200
    await asyncio.sleep(0.05)
    assert hooks.ends == [("done", "done", "done")] * 3


async def test_a_client_gone_mid_response_ends_aborted(upstream, make_proxy):
    gate = asyncio.Event()

    async def slow_body(seen, writer, reader):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await gate.wait()
        return False

    upstream.handler = slow_body
    hooks = Ends()
    px = await make_proxy(upstream.port, hooks=hooks)
    r, w = await open_client(px.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.wait_for(r.readuntil(b"half"), 5)
    # A reset, not a FIN: a half-closed client may still be reading, and the proxy lets it.
    w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.close()
    for _ in range(100):
        if hooks.ends:
            break
        await asyncio.sleep(0.02)
    gate.set()
    assert hooks.ends == [("done", "done", "aborted")]
    assert px.stats["in_flight"] == 0


async def test_pipelined_reply_and_forward_keep_order(upstream, make_proxy):
    hooks = Ends(reply_on="/answered")
    px = await make_proxy(upstream.port, hooks=hooks)
    r, w = await open_client(px.port)
    w.write(b"GET /answered HTTP/1.1\r\nHost: a\r\n\r\nGET /app HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /answered HTTP/1.1\r\nHost: a\r\n\r\n")
    statuses = [(await asyncio.wait_for(read_response(r), 5)).status for _ in range(3)]
    w.close()
    assert statuses == [503, 200, 503]
