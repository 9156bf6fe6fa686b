"""The hook contract as a plug-in author meets it: whatever a hook does to the header lists, hop-by-hop
and framing fields never slip through to the app or the client, and one failing part of a chain
never stops the others.

The tests look only at what reaches the app and the client. They hold whether the tunnel re-checks
every edit or makes the header sequences immutable (an in-place edit then raises in the hook, which
is logged and counted, and the exchange goes on unedited).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess

import pytest

from decorator.proxy.hooks import Exchange, Hooks, chain
from tests.proxy.conftest import (
    closed_after,
    open_client,
    read_head,
    read_response,
    request_body,
    start_decorator,
)
from tests.support import free_port, wait_port

# Index 0 is a harmless field a hook can overwrite in place; the body makes framing matter.
POST = b"POST /in HTTP/1.1\r\nX-Slot: 1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"


def _assert_app_got_clean_post(seen) -> None:
    """What the app must see of POST: no hop-by-hop field a hook slipped in, one framing, the body."""
    for name, value in seen.headers:
        low = name.lower()
        assert low not in ("transfer-encoding", "keep-alive"), f"{name}: {value} reached the app"
        if low == "connection":
            assert "close" not in value.lower() and "x-secret" not in value.lower(), \
                f"{name}: {value} reached the app"
    lengths = [v for k, v in seen.headers if k.lower() == "content-length"]
    assert lengths == ["5"], lengths
    assert (seen.method, seen.target, seen.body) == ("POST", "/in", b"hello")


# ----------------------------------------------------------------------------- request side
REQUEST_EDITS = {
    "connection-in-place": lambda h: h.__setitem__(0, (b"Connection", b"close, x-secret")),
    "te-appended": lambda h: h.append((b"Transfer-Encoding", b"chunked")),
    "keep-alive-appended": lambda h: h.append((b"Keep-Alive", b"timeout=5")),
    "te-in-place": lambda h: h.__setitem__(0, (b"Transfer-Encoding", b"chunked")),
    "keep-alive-in-place": lambda h: h.__setitem__(0, (b"Keep-Alive", b"timeout=5")),
    "all-three": lambda h: (h.__setitem__(0, (b"Connection", b"close, x-secret")),
                            h.append((b"Transfer-Encoding", b"chunked")),
                            h.append((b"Keep-Alive", b"timeout=5"))),
}


@pytest.mark.parametrize("edit", list(REQUEST_EDITS), ids=list(REQUEST_EDITS))
async def test_in_place_request_header_edit_never_reaches_the_app(upstream, make_proxy, edit):
    class InPlace(Hooks):
        def on_request(self, ex: Exchange):
            REQUEST_EDITS[edit](ex.request_headers)

    px = await make_proxy(upstream.port, hooks=InPlace())
    r, w = await open_client(px.port)
    for _ in range(2):  # the second exchange proves the upstream connection kept its framing
        w.write(POST)
        resp = await asyncio.wait_for(read_response(r), 2)
        assert (resp.status, resp.body) == (200, b"POST /in 5\n")
    w.close()
    assert len(upstream.requests) == 2
    for seen in upstream.requests:
        _assert_app_got_clean_post(seen)


async def test_request_headers_replaced_by_a_new_list(upstream, make_proxy):
    class Replace(Hooks):
        def on_request(self, ex: Exchange):
            ex.request_headers = [*ex.request_headers, (b"X-Added", b"1"),
                                  (b"Connection", b"close"), (b"Transfer-Encoding", b"chunked")]

    px = await make_proxy(upstream.port, hooks=Replace())
    r, w = await open_client(px.port)
    w.write(POST)
    resp = await asyncio.wait_for(read_response(r), 2)
    w.close()
    assert resp.status == 200
    (seen,) = upstream.requests
    assert seen.header("x-added") == "1"
    _assert_app_got_clean_post(seen)


# ----------------------------------------------------------------------------- response side
APP_BODY = b"GET / 0\n"  # what the default upstream handler answers to GET /
RESPONSE_EDITS = {
    "te-appended": lambda h: h.append((b"Transfer-Encoding", b"chunked")),
    "connection-close-in-place": lambda h: h.__setitem__(0, (b"Connection", b"close")),
    "content-length-in-place": lambda h: h.__setitem__(0, (b"Content-Length", b"999")),
    "content-length-appended": lambda h: h.append((b"Content-Length", b"999")),
    "te-in-place": lambda h: h.__setitem__(0, (b"Transfer-Encoding", b"chunked")),
}


async def _read_well_framed(reader: asyncio.StreamReader) -> tuple[list[tuple[str, str]], bytes]:
    """One response whose framing must be unambiguous: one Content-Length that fits the body, or
    chunked alone (RFC 9112 §6.3)."""
    _, headers, raw = await asyncio.wait_for(read_head(reader), 2)
    te = [v for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == "content-length"]
    assert (te == [] and len(cl) == 1) or (te == ["chunked"] and cl == []), f"ambiguous framing: {raw!r}"
    if cl:
        assert cl == [str(len(APP_BODY))], f"Content-Length does not fit the body: {raw!r}"
    return headers, await asyncio.wait_for(request_body(reader, headers), 2)


@pytest.mark.parametrize("edit", list(RESPONSE_EDITS), ids=list(RESPONSE_EDITS))
async def test_in_place_response_header_edit_never_breaks_client_framing(upstream, make_proxy, edit):
    class InPlace(Hooks):
        def on_response_head(self, ex: Exchange):
            RESPONSE_EDITS[edit](ex.response_headers)

    px = await make_proxy(upstream.port, hooks=InPlace())
    r, w = await open_client(px.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    headers, body = await _read_well_framed(r)
    assert body == APP_BODY
    conn = ",".join(v for k, v in headers if k.lower() == "connection").lower()
    if "close" in conn:
        # A `Connection: close` the client sees must be true: the proxy then closes.
        assert await closed_after(r, 2), "the client was told close, the proxy kept the connection"
    else:
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        _, body = await _read_well_framed(r)
        assert body == APP_BODY
    w.close()


async def test_response_headers_replaced_by_a_new_list(upstream, make_proxy):
    class Replace(Hooks):
        def on_response_head(self, ex: Exchange):
            ex.response_headers = [*ex.response_headers, (b"X-Resp", b"1"),
                                   (b"Transfer-Encoding", b"chunked")]

    px = await make_proxy(upstream.port, hooks=Replace())
    r, w = await open_client(px.port)
    w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    headers, body = await _read_well_framed(r)
    w.close()
    assert ("X-Resp", "1") in headers and body == APP_BODY


# ----------------------------------------------------------------------------- through a plug-in action
# A plug-in as it ships: a module plus an entry point in the "decorator.actions" group (a dist-info
# directory on PYTHONPATH is what pip would install). Its request handler edits the header list in
# place; its response handler stamps the response by replacement, to prove the plug-in ran.
PLUGIN = '''
from decorator.actions.registry import Action, register
from decorator.rules.base import Strict


class SmuggleConfig(Strict):
    """Overwrite the first request header in place."""

    field: str
    value: str


@register
class Smuggle(Action):
    name = "smuggle"
    Config = SmuggleConfig
    summary = "Overwrite the first request header in place (a test plug-in)."

    def __init__(self, config, rule, prepared, runtime):
        super().__init__(config, rule, prepared, runtime)
        self.request = self._edit
        self.response = self._stamp

    def _edit(self, ex):
        ex.request_headers[0] = (self.config.field.encode(), self.config.value.encode())

    def _stamp(self, ex, reply):
        ex.response_headers = [*ex.response_headers, (b"X-Plugin-Ran", b"1")]
'''

RULES = """
rules:
  - name: smuggler
    smuggle: {field: Connection, value: "close, x-secret"}
"""


async def test_plugin_action_editing_headers_in_place_cannot_smuggle(upstream, tmp_path):
    (tmp_path / "smuggle_action.py").write_text(PLUGIN)
    dist = tmp_path / "smuggle_action-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: smuggle-action\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[decorator.actions]\nsmuggle = smuggle_action\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    port = free_port()
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    p = start_decorator("--port", str(port), "--target", str(upstream.port), "--admin-port", "0",
                        "--rules", str(rules), "--no-watch", env={"PYTHONPATH": path})
    try:
        await asyncio.to_thread(wait_port, port, p)
        r, w = await open_client(port)
        for _ in range(2):
            w.write(POST)
            resp = await asyncio.wait_for(read_response(r), 2)
            assert resp.status == 200 and resp.body == b"POST /in 5\n"
            assert resp.header("x-plugin-ran") == "1", "the plug-in action did not run"
        w.close()
    finally:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    assert len(upstream.requests) == 2
    for seen in upstream.requests:
        _assert_app_got_clean_post(seen)


# ----------------------------------------------------------------------------- chain isolation
class FirstPart(Hooks):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_request(self, ex):
        self.calls.append("request")

    def on_response_head(self, ex):
        self.calls.append("response")

    def on_complete(self, ex):
        self.calls.append("complete")


class ExplodingPart(Hooks):
    def on_request(self, ex):
        raise RuntimeError("request phase bug")

    def on_response_head(self, ex):
        raise RuntimeError("response phase bug")

    def on_complete(self, ex):
        raise RuntimeError("completion bug")


class LastPart(Hooks):
    def __init__(self) -> None:
        self.done: list[Exchange] = []

    def on_request(self, ex):
        ex.request_headers = [*ex.request_headers, (b"X-Last", b"1")]

    def on_response_head(self, ex):
        ex.response_headers = [*ex.response_headers, (b"X-Last-Response", b"1")]

    def on_complete(self, ex):
        self.done.append(ex)


@pytest.fixture
def decorator_log(caplog):
    """Records from every "decorator" logger, even when the package's loggers do not propagate."""
    caplog.set_level(logging.ERROR)
    root = logging.getLogger("decorator")
    root.addHandler(caplog.handler)
    yield caplog
    root.removeHandler(caplog.handler)


def _names_exploding_part(caplog) -> bool:
    """Some "decorator" log record names the part that raised (not just "a hook" or the chain)."""
    return any(rec.name.startswith("decorator") and "ExplodingPart" in rec.getMessage()
               for rec in caplog.records)


async def test_a_raising_part_does_not_stop_the_rest_of_the_chain(upstream, make_proxy, decorator_log):
    first, last = FirstPart(), LastPart()
    px = await make_proxy(upstream.port, hooks=chain(first, ExplodingPart(), last))
    r, w = await open_client(px.port)
    w.write(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await asyncio.wait_for(read_response(r), 2)
    w.close()
    assert resp.status == 200 and resp.body == b"GET /c 0\n"
    await asyncio.sleep(0.05)  # on_complete runs once the last byte is written
    assert first.calls == ["request", "response", "complete"]
    assert upstream.requests[0].header("x-last") == "1", "the part after the raising one skipped on_request"
    assert resp.header("x-last-response") == "1", "the part after the raising one skipped on_response_head"
    assert [ex.path for ex in last.done] == ["/c"], "the part after the raising one skipped on_complete"
    assert _names_exploding_part(decorator_log), [r.getMessage() for r in decorator_log.records]


async def test_two_part_chain_first_part_raising_does_not_skip_the_second(upstream, make_proxy):
    # Two parts: on_complete takes chain()'s two-part fast path (call2), on_request the loop.
    last = LastPart()
    px = await make_proxy(upstream.port, hooks=chain(ExplodingPart(), last))
    r, w = await open_client(px.port)
    w.write(b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await asyncio.wait_for(read_response(r), 2)
    w.close()
    assert resp.status == 200
    await asyncio.sleep(0.05)
    assert upstream.requests[0].header("x-last") == "1"
    assert [ex.path for ex in last.done] == ["/d"]
